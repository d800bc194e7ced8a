//! What this binary is and where it runs: the version and git commit it was built from
//! (embedded at build time by build.rs; "unknown" where git was absent, as in a tarball
//! build) and the kernel release (read at run time). The one owner of these facts:
//! `stagewall status` prints them and metrics export them.

use serde::Serialize;

/// The crate version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit built from (12 hex digits), or "unknown".
pub const GIT_COMMIT: &str = env!("STAGEWALL_GIT_COMMIT");

/// The build, and the kernel it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
    /// `uname -r` of the running kernel, or "unknown".
    pub kernel: String,
}

impl BuildInfo {
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: VERSION.to_string(),
            commit: GIT_COMMIT.to_string(),
            kernel: kernel_release(),
        }
    }
}

/// The running kernel's release (`uname -r`), or "unknown" if uname fails.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; zeroed is a valid start.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_version_commit_and_kernel() {
        let info = BuildInfo::current();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(
            info.commit == "unknown"
                || (info.commit.len() >= 7 && info.commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{}",
            info.commit
        );
        // The kernel running this test has a release like 6.12.0-...
        assert!(
            info.kernel.starts_with(|c: char| c.is_ascii_digit()),
            "{}",
            info.kernel
        );
    }
}
