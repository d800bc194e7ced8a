use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

include!("../ebpf/stagewall-ebpf/toolchain_channel.rs");

/// The nightly that builds the kernel programs: the `channel` of the eBPF crate's
/// rust-toolchain.toml, the one place that names it.
fn ebpf_toolchain(ebpf_crate: &std::path::Path) -> anyhow::Result<String> {
    let file = ebpf_crate.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    toolchain_channel(&text)
        .ok_or_else(|| anyhow!("{}: no `channel = \"...\"` line", file.display()))
}

/// The commit the agent is built from, for `stagewall status` and build info
/// (src/build_info.rs): `git rev-parse`, or "unknown" where there is no git (a tarball).
fn git_commit(manifest_dir: &std::path::Path) {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(manifest_dir)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STAGEWALL_GIT_COMMIT={commit}");
    // A new commit changes HEAD (or the branch it names): build again then.
    if let Ok(out) = std::process::Command::new("git")
        .args([
            "rev-parse",
            "--git-path",
            "HEAD",
            "--git-path",
            "refs/heads",
        ])
        .current_dir(manifest_dir)
        .output()
    {
        for path in String::from_utf8_lossy(&out.stdout).lines() {
            println!(
                "cargo:rerun-if-changed={}",
                manifest_dir.join(path).display()
            );
        }
    }
}

/// Given a kernel object already built (`cargo xtask image` builds it once, for the first
/// platform, and gives it to the others), the agent embeds that object, byte for byte,
/// instead of building its own: every platform's image ships the same kernel programs.
const PREBUILT_OBJECT: &str = "STAGEWALL_EBPF_OBJECT";

fn main() -> anyhow::Result<()> {
    git_commit(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    println!("cargo:rerun-if-env-changed={PREBUILT_OBJECT}");
    if let Some(object) = std::env::var_os(PREBUILT_OBJECT) {
        let object = std::path::PathBuf::from(object);
        println!("cargo:rerun-if-changed={}", object.display());
        let out_dir = std::env::var_os("OUT_DIR").context("OUT_DIR not set")?;
        let embedded = std::path::Path::new(&out_dir).join("stagewall-ebpf");
        std::fs::copy(&object, &embedded).with_context(|| {
            format!(
                "{PREBUILT_OBJECT}={}: copying it to {}",
                object.display(),
                embedded.display()
            )
        })?;
        return Ok(());
    }
    let ebpf_crate = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("ebpf/stagewall-ebpf");
    let root_dir = ebpf_crate
        .to_str()
        .context("eBPF crate path is not UTF-8")?;
    let toolchain = match std::env::var("STAGEWALL_EBPF_TOOLCHAIN") {
        Ok(toolchain) => toolchain,
        Err(_) => ebpf_toolchain(&ebpf_crate)?,
    };
    println!("cargo:rerun-if-env-changed=STAGEWALL_EBPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [Package {
            name: "stagewall-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
