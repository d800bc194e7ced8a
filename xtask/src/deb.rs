//! `cargo xtask deb`: the Debian package for bare-metal hosts. The binary writes its own
//! shell completions and man pages (from its clap definition) into
//! target/<profile>/generated/, then cargo-deb packs what agent/Cargo.toml's
//! `[package.metadata.deb]` lists: the binary, the systemd unit, /etc/stagewall/config.yaml
//! (a conffile), completions, man pages and the example policies.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Where the package is written.
pub const OUT_DIR: &str = "target/debian";

/// Builds the agent with cargo `profile` (release for a real package; dev in the tests,
/// which reuse their build) and packs it; returns the .deb's path.
pub fn build(profile: &str) -> anyhow::Result<PathBuf> {
    // The workspace's binaries, as `cargo xtask test` and `bench` build them: the same
    // features, so a test's package reuses their build.
    cmd("cargo", &["build", "--bins", "--profile", profile])?;
    let dir = PathBuf::from("target").join(if profile == "dev" { "debug" } else { profile });
    let bin = dir.join("stagewall");
    let generated = dir.join("generated");
    let _ = std::fs::remove_dir_all(&generated);
    std::fs::create_dir_all(generated.join("man"))?;
    for (shell, file) in [
        ("bash", "stagewall.bash"),
        ("zsh", "_stagewall"),
        ("fish", "stagewall.fish"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{} completions {shell} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(generated.join(file), out.stdout)?;
    }
    let man = generated.join("man");
    let man_dir = man.to_str().context("target path is UTF-8")?;
    cmd(
        bin.to_str().context("target path is UTF-8")?,
        &["man", "--dir", man_dir],
    )?;
    // Debian installs man pages compressed (-n: no name or time stamp, reproducible).
    let pages: Vec<String> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let mut gzip = vec!["-9nf"];
    gzip.extend(pages.iter().map(String::as_str));
    cmd("gzip", &gzip)?;
    std::fs::create_dir_all(OUT_DIR)?;
    let mut args = vec![
        "deb",
        "-p",
        "stagewall",
        "--no-build",
        "--profile",
        profile,
        "-o",
        OUT_DIR,
    ];
    if profile == "dev" {
        // A test's package: compressed quickly, as it is unpacked at once.
        args.push("--fast");
    }
    let out = crate::as_from_a_shell(Command::new("cargo"))
        .args(&args)
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // cargo-deb prints the package's path as its last line.
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb printed no .deb path")?;
    println!("{}", path.display());
    Ok(path)
}
