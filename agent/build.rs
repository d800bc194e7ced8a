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

fn main() -> anyhow::Result<()> {
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
