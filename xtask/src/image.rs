//! `cargo xtask image`: the agent's image for amd64 and arm64 as one multi-arch OCI
//! archive (an image index over one manifest per platform), written with no image builder
//! and no registry, as the test node's images are (tests/cluster/node/cmd/ociimage).
//!
//! User space is cross-compiled for each platform, static (musl, linked by rust-lld with
//! Rust's own musl start files, so no cross C toolchain but clang for ring's C and
//! assembly); the kernel programs are target-independent eBPF, built once, by the first
//! platform's build (agent/build.rs), and given to the others (STAGEWALL_EBPF_OBJECT), so
//! every binary embeds the same object, byte for byte: checked here, with each binary a
//! static ELF of its platform. The shell completions and man pages, written by the
//! amd64 binary itself, go into every platform's image where the .deb installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where the archive goes unless told.
pub const DEFAULT_OUT: &str = "target/image/stagewall.oci.tar";
/// The image's name, as deploy/kubernetes/daemonset.yaml runs it (the chart's default:
/// its appVersion, which a test holds to the crate version).
const NAME: &str = concat!("docker.io/library/stagewall:", env!("CARGO_PKG_VERSION"));
/// Where the binary lives in the image (the Dockerfile's ENTRYPOINT).
const ENTRYPOINT: &str = "/usr/local/bin/stagewall";
/// clang and llvm-ar for C code in dependencies (ring), from `cargo xtask setup`.
const CLANG: &str = "clang-22";
const LLVM_AR: &str = "llvm-ar-22";
const LLVM_STRIP: &str = "/usr/lib/llvm-22/bin/llvm-strip";

/// One platform of the image.
pub struct Platform {
    /// The OCI architecture name.
    pub arch: &'static str,
    /// The Rust target user space is built for.
    pub target: &'static str,
    /// The ELF machine (e_machine) its binary must have.
    elf_machine: u16,
    /// How this (amd64) host runs its binary: itself, or qemu-user (setup installs it).
    runner: &'static [&'static str],
}

pub const PLATFORMS: [Platform; 2] = [
    Platform {
        arch: "amd64",
        target: "x86_64-unknown-linux-musl",
        elf_machine: 62, // EM_X86_64
        runner: &[],
    },
    Platform {
        arch: "arm64",
        target: "aarch64-unknown-linux-musl",
        elf_machine: 183, // EM_AARCH64
        runner: &["qemu-aarch64"],
    },
];

/// A release build of the agent for `platform`, embedding `object` if given (else the
/// one its build script builds); the binary and the eBPF object it embeds (the build
/// script's OUT_DIR, as cargo reports it).
fn build_agent(platform: &Platform, object: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let env_target = platform.target.replace('-', "_");
    println!(
        "+ {}cargo build --release --locked -p stagewall --target {}",
        object.map_or(String::new(), |o| format!(
            "STAGEWALL_EBPF_OBJECT={} ",
            o.display()
        )),
        platform.target
    );
    let mut cargo = Command::new("cargo");
    match object {
        Some(object) => cargo.env("STAGEWALL_EBPF_OBJECT", object),
        None => cargo.env_remove("STAGEWALL_EBPF_OBJECT"),
    };
    let out = cargo
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "stagewall",
            "--bin",
            "stagewall",
            "--target",
            platform.target,
            "--message-format=json-render-diagnostics",
        ])
        .env(
            format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()),
            "rust-lld",
        )
        .env(format!("CC_{env_target}"), CLANG)
        .env(format!("AR_{env_target}"), LLVM_AR)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "building the agent for {} failed ({}); is the target installed (cargo xtask setup)?",
            platform.target,
            out.status
        );
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    let out_dir = messages
        .lines()
        .filter(|l| l.contains("\"reason\":\"build-script-executed\""))
        .filter(|l| l.contains("/agent#") || l.contains("#stagewall@"))
        .find_map(|l| json_string(l, "out_dir"))
        .context("cargo reported no build script run for the agent")?;
    let binary = crate::workspace_root()
        .join("target")
        .join(platform.target)
        .join("release/stagewall");
    Ok((binary, PathBuf::from(out_dir).join("stagewall-ebpf")))
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths need no escapes
/// here but backslashes, which a Linux path of this workspace does not have).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = start + line[start..].find('"')?;
    Some(line[start..end].to_string())
}

/// What an ELF file says of itself: its machine, and whether it names an interpreter
/// (a dynamic loader) or is static.
#[derive(Debug, PartialEq)]
pub struct ElfFacts {
    pub machine: u16,
    pub interpreter: bool,
}

/// Reads the ELF header and program headers of a 64-bit little-endian file.
pub fn elf_facts(bytes: &[u8]) -> anyhow::Result<ElfFacts> {
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(
            bytes.get(at..at + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |at: usize| -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(
            bytes.get(at..at + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    const PT_INTERP: u32 = 3;
    let mut interpreter = false;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = bytes.get(at..at + 4).context("truncated program header")?;
        interpreter |= u32::from_le_bytes(kind.try_into()?) == PT_INTERP;
    }
    Ok(ElfFacts {
        machine,
        interpreter,
    })
}

/// Builds both platforms' binaries, checks them, and writes the archive to `out`.
pub fn build(out: &Path) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let stage = root.join("target/image");
    std::fs::create_dir_all(&stage).with_context(|| format!("{}", stage.display()))?;
    // The first platform's build builds the kernel object; kept here, it is the one every
    // platform embeds.
    let shipped_object = stage.join("stagewall-ebpf.o");
    let mut files = Vec::new();
    let mut host_binary = None;
    for (index, platform) in PLATFORMS.iter().enumerate() {
        let given = (index > 0).then_some(shipped_object.as_path());
        let (binary, object) = build_agent(platform, given)?;
        // Copied only when it changed: the other builds rerun their build script (and
        // rebuild the agent) when the file's time moves.
        let built = std::fs::read(&object).with_context(|| format!("{}", object.display()))?;
        if index == 0 && std::fs::read(&shipped_object).ok().as_ref() != Some(&built) {
            std::fs::write(&shipped_object, &built)
                .with_context(|| format!("{}", shipped_object.display()))?;
        }
        let stripped = stage.join(format!("stagewall-{}", platform.arch));
        crate::cmd(
            LLVM_STRIP,
            &[
                "--strip-all",
                "-o",
                &stripped.display().to_string(),
                &binary.display().to_string(),
            ],
        )?;
        let bytes = std::fs::read(&stripped).with_context(|| format!("{}", stripped.display()))?;
        let facts = elf_facts(&bytes).with_context(|| format!("{}", stripped.display()))?;
        if facts.machine != platform.elf_machine || facts.interpreter {
            bail!(
                "{}: ELF machine {} with{} an interpreter; expected machine {} ({}), static",
                stripped.display(),
                facts.machine,
                if facts.interpreter { "" } else { "out" },
                platform.elf_machine,
                platform.arch
            );
        }
        // It runs: its command line parses (under qemu-user for arm64).
        let (program, runner_args) = match platform.runner {
            [program, rest @ ..] => (program.to_string(), rest.to_vec()),
            [] => (stripped.display().to_string(), vec![]),
        };
        let mut run = Command::new(&program);
        run.args(runner_args);
        if !platform.runner.is_empty() {
            run.arg(&stripped);
        }
        let version = run
            .arg("--version")
            .output()
            .with_context(|| format!("running {program} (qemu-user: cargo xtask setup)"))?;
        let said = String::from_utf8_lossy(&version.stdout);
        if !version.status.success() || !said.starts_with("stagewall ") {
            bail!(
                "{} --version did not answer ({}): {said}{}",
                stripped.display(),
                version.status,
                String::from_utf8_lossy(&version.stderr)
            );
        }
        // The binary holds the shipped object itself (include_bytes), byte for byte.
        let object_bytes = std::fs::read(&shipped_object)
            .with_context(|| format!("{}", shipped_object.display()))?;
        if !bytes
            .windows(object_bytes.len())
            .any(|w| w == object_bytes.as_slice())
        {
            bail!(
                "{} does not embed {} byte for byte: every platform must ship the same \
                 kernel object",
                stripped.display(),
                shipped_object.display()
            );
        }
        println!(
            "{}: {} bytes, static, ELF machine {}, runs ({}); embeds {} ({} bytes)",
            platform.arch,
            bytes.len(),
            facts.machine,
            said.trim(),
            shipped_object.display(),
            object_bytes.len()
        );
        // The completions and man pages come from a binary this host runs itself.
        if platform.runner.is_empty() {
            host_binary = Some(stripped.clone());
        }
        files.push(format!(
            "{}:{}={ENTRYPOINT}",
            platform.arch,
            stripped.display()
        ));
    }
    println!(
        "every platform embeds the same kernel object ({})",
        shipped_object.display()
    );
    // Completions and man pages, from the binary this host runs, in every platform's
    // layer (files without an `arch:` prefix).
    let generated = stage.join("generated");
    crate::deb::generate(
        host_binary
            .as_deref()
            .context("no platform's binary runs on this host")?,
        &generated,
    )?;
    for (_, file, installed) in crate::deb::COMPLETIONS {
        files.push(format!("{}={installed}", generated.join(file).display()));
    }
    for page in std::fs::read_dir(generated.join("man"))? {
        let page = page?.path();
        let name = page.file_name().context("a page has a name")?;
        files.push(format!(
            "{}={}/{}",
            page.display(),
            crate::deb::MAN_DIR,
            name.to_string_lossy()
        ));
    }

    let ociimage = crate::cluster::bin_dir().join("ociimage");
    let mut args = vec![
        "-o".to_string(),
        out.display().to_string(),
        "-name".to_string(),
        NAME.to_string(),
        "-entrypoint".to_string(),
        ENTRYPOINT.to_string(),
    ];
    for platform in &PLATFORMS {
        args.push("-arch".to_string());
        args.push(platform.arch.to_string());
    }
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    crate::cmd(&ociimage.display().to_string(), &args)?;
    println!(
        "wrote {} ({NAME} for {}); load it with `ctr images import` or any OCI tool",
        out.display(),
        PLATFORMS.map(|p| p.arch).join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_facts_name_the_machine_and_the_interpreter() {
        // This test's own binary: x86_64 or aarch64, dynamically linked (gnu targets).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let facts = elf_facts(&me).unwrap();
        let expected = if cfg!(target_arch = "x86_64") {
            62
        } else {
            183
        };
        assert_eq!(facts.machine, expected);
        assert!(facts.interpreter);
        assert!(elf_facts(b"#!/bin/sh\n").is_err());
        assert!(elf_facts(&me[..40]).is_err());
    }

    #[test]
    fn cargo_json_strings_are_read() {
        let line = r#"{"reason":"build-script-executed","package_id":"path+file:///w/agent#stagewall@0.1.0","out_dir":"/w/target/x/release/build/stagewall-1/out"}"#;
        assert_eq!(
            json_string(line, "out_dir").as_deref(),
            Some("/w/target/x/release/build/stagewall-1/out")
        );
        assert_eq!(json_string(line, "missing"), None);
    }
}
