// The one reader of the nightly's name: the `channel` of this crate's rust-toolchain.toml.
// Both agent/build.rs (which builds the kernel programs) and xtask (which installs and
// lints with that nightly) `include!` this file, so the name and its reader each live once.

/// The `channel = "..."` value of a rust-toolchain.toml's text.
pub fn toolchain_channel(toml: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let value = line.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_string())
    })
}
