//! `cargo xtask <workflow>`: what a fresh Linux machine needs to build and test stagewall,
//! and the demo. The normal build is plain cargo (agent/build.rs builds the kernel
//! programs); this crate only sequences workflows.

mod cluster;
mod deb;
mod demo;
mod helm;
mod image;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (skips what is present): the pinned
    /// nightly with rust-src, bpf-linker, cargo-deb, iproute2, iputils-ping, prometheus,
    /// systemd (systemd-analyze).
    Setup,
    /// Setup, then formatting, lints (user space and kernel crate), build, the Kubernetes
    /// test binaries (cluster-build, when missing), every test, a short fuzz run and the
    /// quick benchmark. The privileged tests need root; with CI=true they fail rather than
    /// skip.
    Test,
    /// Build the real Kubernetes binaries the tests use (kube-apiserver,
    /// kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubectl, etcd) from
    /// source at the versions tests/cluster/go.mod pins, into target/cluster/bin/; a no-op
    /// when they are there and current. Needs Go.
    ClusterBuild,
    /// Write the plain manifests of deploy/kubernetes from the Helm chart in
    /// deploy/helm/stagewall (`helm template` with its default values), so that they never
    /// drift from it. Needs helm (cluster-build).
    RenderManifests {
        /// Write nothing; fail when a committed manifest differs from the rendering.
        #[arg(long)]
        check: bool,
    },
    /// Build the agent's image for amd64 and arm64 (static user space cross-compiled,
    /// the same kernel programs) as one multi-arch OCI archive, with no image builder and
    /// no registry. Setup, then the musl targets, clang and qemu-user; ociimage
    /// (cluster-build).
    Image {
        /// The archive to write.
        #[arg(long, default_value = image::DEFAULT_OUT)]
        out: std::path::PathBuf,
    },
    /// Fuzz the policy parser and compiler, the flow records reader, the control request
    /// parser and the DNS message reader for a while each (cargo fuzz, nightly).
    Fuzz {
        /// How long each target runs, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u32,
    },
    /// Setup, then run the agent on the example policies against a demo pipeline of
    /// namespaces and cgroups, showing allowed and denied traffic and the events (root).
    Demo,
    /// The Debian package for bare-metal hosts (binary, systemd unit, config file,
    /// completions, man pages) into target/debian/, built with cargo-deb (setup installs
    /// it).
    Deb {
        /// Cargo profile of the packaged binary (the tests use dev).
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Setup, then the benchmarks (release build; root): data path against the baseline,
    /// iptables and nftables, control plane, events; then the DNS proxy (lookup latency
    /// and rate through the agent against direct, memory per learnt address); then
    /// node-local scale (rules, workloads, identities, flows, events). Prints Markdown
    /// tables.
    Bench {
        /// One short run per configuration (what CI runs so the harness cannot rot).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            test()
        }
        Task::ClusterBuild => cluster::build().map(drop),
        Task::RenderManifests { check } => {
            cluster::build()?;
            helm::render_manifests(check)
        }
        Task::Image { out } => {
            setup::run()?;
            setup::image()?;
            cluster::build()?;
            image::build(&out)
        }
        Task::Demo => {
            setup::run()?;
            demo::run()
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz(seconds)
        }
        Task::Deb { profile } => deb::build(&profile).map(drop),
        Task::Bench { quick } => {
            setup::run()?;
            bench(quick)
        }
    }
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("+ {program} {}", args.join(" "));
    let status = as_from_a_shell(Command::new(program))
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// `command` without the variables `cargo run` set for xtask itself (CARGO_MANIFEST_DIR,
/// CARGO_PKG_*, LD_LIBRARY_PATH, ...): ring's build script reruns when CARGO_MANIFEST_DIR
/// changes, and the TLS stack and the agent with it, so a cargo run from xtask would
/// rebuild what a cargo run from a shell built, and back.
pub fn as_from_a_shell(mut command: Command) -> Command {
    // Only what `cargo run` sets: the caller's own settings (CARGO_BUILD_JOBS,
    // CARGO_TERM_COLOR, CARGO_NET_OFFLINE, CARGO_PROFILE_*, ...) stay.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if set_by_cargo_run(&name) {
            command.env_remove(&*name);
        }
    }
    command
}

/// The variables `cargo run` sets for the program it runs.
pub fn set_by_cargo_run(name: &str) -> bool {
    matches!(
        name,
        "CARGO"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "LD_LIBRARY_PATH"
    ) || name.starts_with("CARGO_PKG_")
}

/// The fuzz targets (agent/fuzz/fuzz_targets/), each with the longest input worth trying:
/// policy files, a records file, one control request (the socket reads at most 1024 bytes),
/// one DNS message (at most 65535 bytes over TCP).
const FUZZ_TARGETS: [(&str, u32); 4] = [
    ("policy_documents", 4096),
    ("flow_records", 4096),
    ("control_request", 1024),
    ("dns_wire", 65535),
];

/// `cargo fuzz` on every target for `seconds` each, from the agent crate.
fn fuzz(seconds: u32) -> anyhow::Result<()> {
    let toolchain = format!("+{}", setup::ebpf_toolchain()?);
    let limit = format!("-max_total_time={seconds}");
    std::env::set_current_dir("agent")?;
    let result = FUZZ_TARGETS.iter().try_for_each(|(target, max_len)| {
        // libFuzzer adds what it finds to the first corpus directory: a scratch one
        // (ignored by git), so the committed seeds stay as they are.
        let corpus = format!("fuzz/corpus/{target}");
        std::fs::create_dir_all(&corpus)?;
        cmd(
            "cargo",
            &[
                &toolchain,
                "fuzz",
                "run",
                target,
                &corpus,
                &format!("fuzz/seeds/{target}"),
                "--",
                &limit,
                &format!("-max_len={max_len}"),
            ],
        )
    });
    std::env::set_current_dir("..")?;
    result
}

fn bench(quick: bool) -> anyhow::Result<()> {
    cmd("cargo", &["build", "--release", "--bins"])?;
    let mut args = vec![];
    if quick {
        args.push("--quick");
    }
    cmd("target/release/stagewall-bench", &args)?;
    // Node-local scale: 100,000 rules, many workloads, CIDR identities, the flow table,
    // the event pipeline.
    cmd("target/release/stagewall-scale", &args)?;
    // The cost per packet as the kernel counts it, and the interleaved throughput.
    cmd("target/release/stagewall-cost", &args)?;
    // Egress by name: the DNS proxy's latency, throughput and memory.
    cmd("target/release/stagewall-dns-bench", &args)?;
    // The Kubernetes control plane at scale: pod churn on the real API server (its
    // binaries from `cargo xtask cluster-build`), pod change to kernel, the agent's CPU
    // and memory, the watch load.
    cmd("target/release/stagewall-kube-bench", &args)
}

fn test() -> anyhow::Result<()> {
    cmd("cargo", &["fmt", "--all", "--", "--check"])?;
    cmd(
        "cargo",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    // The kernel crate is linted on its own, for its own target, so that no user-space
    // feature leaks into it.
    let toolchain = format!("+{}", setup::ebpf_toolchain()?);
    cmd(
        "cargo",
        &[
            &toolchain,
            "clippy",
            "--manifest-path",
            "ebpf/stagewall-ebpf/Cargo.toml",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The alerting rules parse and fire as their unit tests say.
    cmd(
        "promtool",
        &["check", "rules", "deploy/prometheus/stagewall-rules.yaml"],
    )?;
    cmd(
        "promtool",
        &[
            "test",
            "rules",
            "deploy/prometheus/stagewall-rules.test.yaml",
        ],
    )?;
    // The integration tests run the agent and probe binaries, and the real Kubernetes
    // binaries (target/cluster/bin/, built from source once): build them first.
    cmd("cargo", &["build", "--bins"])?;
    cluster::build()?;
    cluster::vet()?;
    cmd("cargo", &["test"])?;
    // A short fuzz run of each target (the seeds are the example policies, records files
    // and requests; libFuzzer fails the run on any panic).
    fuzz(30)?;
    // The benchmark harness, in its quick mode, so it cannot rot (its numbers are printed,
    // never asserted).
    bench(true)
}
