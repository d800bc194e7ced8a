use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The nightly that builds the kernel programs (bpfel-unknown-none, -Z build-std=core).
/// Kept in step with .ci/run and README.md; see shared/TOOLCHAIN.md for why this one.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("ebpf/stagewall-ebpf");
    let root_dir = metadata.to_str().context("eBPF crate path is not UTF-8")?;
    let toolchain = std::env::var("STAGEWALL_EBPF_TOOLCHAIN").unwrap_or(EBPF_TOOLCHAIN.into());
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
