//! `cargo xtask deb`: the Debian package for bare-metal hosts. The binary writes its own
//! shell completions and man pages (from its clap definition) into
//! target/<profile>/generated/, then cargo-deb packs what agent/Cargo.toml's
//! `[package.metadata.deb]` lists: the binary, the systemd unit, /etc/stagewall/config.yaml
//! (a conffile), completions, man pages and the example policies.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Where the package is written.
pub const OUT_DIR: &str = "target/debian";

/// The shell completions `generate` writes, and where a system installs them (the .deb's
/// assets in agent/Cargo.toml name the same places; a test holds them to this).
pub const COMPLETIONS: [(&str, &str, &str); 3] = [
    (
        "bash",
        "stagewall.bash",
        "/usr/share/bash-completion/completions/stagewall",
    ),
    (
        "zsh",
        "_stagewall",
        "/usr/share/zsh/vendor-completions/_stagewall",
    ),
    (
        "fish",
        "stagewall.fish",
        "/usr/share/fish/vendor_completions.d/stagewall.fish",
    ),
];
/// Where the man pages go (`generate` writes them into `man/` of its directory, gzipped).
pub const MAN_DIR: &str = "/usr/share/man/man1";

/// The binary `bin` writes its own shell completions and man pages (from its clap
/// definition) into `generated` (emptied first): the completions of [`COMPLETIONS`], and
/// `man/*.1.gz`.
pub fn generate(bin: &Path, generated: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(generated);
    std::fs::create_dir_all(generated.join("man"))?;
    for (shell, file, _) in COMPLETIONS {
        let out = Command::new(bin)
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
    cmd("gzip", &gzip)
}

/// Builds the agent with cargo `profile` (release for a real package; dev in the tests,
/// which reuse their build) and packs it; returns the .deb's path.
pub fn build(profile: &str) -> anyhow::Result<PathBuf> {
    // The workspace's binaries, as `cargo xtask test` and `bench` build them: the same
    // features, so a test's package reuses their build.
    cmd("cargo", &["build", "--bins", "--profile", profile])?;
    let dir = PathBuf::from("target").join(if profile == "dev" { "debug" } else { profile });
    generate(&dir.join("stagewall"), &dir.join("generated"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The .deb (agent/Cargo.toml's assets) and the image install completions and man
    /// pages in the same places.
    #[test]
    fn the_package_installs_the_generated_files_where_the_image_does() {
        let manifest =
            std::fs::read_to_string(crate::workspace_root().join("agent/Cargo.toml")).unwrap();
        for (_, file, installed) in COMPLETIONS {
            let asset = format!(
                "[\"target/release/generated/{file}\", \"{}\", \"644\"]",
                installed.trim_start_matches('/')
            );
            // A destination ending in '/' keeps the file's name.
            let (dir, name) = installed.rsplit_once('/').unwrap();
            let asset_in_dir = format!(
                "[\"target/release/generated/{file}\", \"{}/\", \"644\"]",
                dir.trim_start_matches('/')
            );
            assert!(
                manifest.contains(&asset) || (name == file && manifest.contains(&asset_in_dir)),
                "agent/Cargo.toml installs {file} elsewhere than {installed}"
            );
        }
        let man = format!(
            "[\"target/release/generated/man/*\", \"{}/\", \"644\"]",
            MAN_DIR.trim_start_matches('/')
        );
        assert!(manifest.contains(&man), "{man}");
        // The Dockerfile's image (buildx) puts them there too.
        let dockerfile =
            std::fs::read_to_string(crate::workspace_root().join("Dockerfile")).unwrap();
        for (_, file, installed) in COMPLETIONS {
            let copy = format!("COPY --from=kernel /generated/{file} {installed}");
            assert!(dockerfile.contains(&copy), "Dockerfile lacks: {copy}");
        }
        let copy = format!("COPY --from=kernel /generated/man/ {MAN_DIR}/");
        assert!(dockerfile.contains(&copy), "Dockerfile lacks: {copy}");
    }
}
