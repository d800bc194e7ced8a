//! The policy directory as a source: what of it was last read, a fingerprint of its
//! files' contents, and a watcher
//! that wakes the agent when something in it changes (inotify), so an edit takes effect in
//! milliseconds. A periodic check backs the watcher up (events can be missed, and a
//! workload's cgroup or interface can appear without any file changing).

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::Instant,
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind},
};
use tokio::sync::mpsc;

use super::WakeUp;

use crate::policy::{
    error::PolicyErrors,
    model::PolicySet,
    parse::{ParseCache, list_files, load_dir, read_policy_file},
};

/// A policy directory, and what of it was last read.
pub struct Files {
    dir: PathBuf,
    /// Fingerprint of the files last read, whether they were applied or rejected.
    fingerprint: Option<u64>,
    /// The documents last read, parsed: a change parses only what it touched.
    cache: ParseCache,
    /// `--node-ingress`: this host's addresses are the node's (ingress always allows
    /// them), looked at with every check of the files; the ones last given.
    node_ingress: bool,
    node_addresses: Vec<std::net::IpAddr>,
}

impl Files {
    pub fn new(dir: PathBuf, node_ingress: bool) -> Files {
        Files {
            dir,
            fingerprint: None,
            cache: ParseCache::default(),
            node_ingress,
            node_addresses: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policies if the files changed since they were last read.
    pub fn changed(&mut self) -> Option<Result<PolicySet, PolicyErrors>> {
        // Taken before reading: a change while reading is seen at the next call.
        let fingerprint = fingerprint(&self.dir);
        let node_addresses = if self.node_ingress {
            crate::datapath::host::local_addresses()
        } else {
            Vec::new()
        };
        if self.fingerprint == Some(fingerprint) && self.node_addresses == node_addresses {
            return None;
        }
        self.node_addresses = node_addresses;
        self.fingerprint = Some(fingerprint);
        let started = Instant::now();
        let parsed_before = self.cache.parsed;
        let mut result = load_dir(&self.dir, &mut self.cache);
        if let Ok(set) = &mut result {
            set.node_addresses = self.node_addresses.clone();
        }
        log::debug!(
            "{} read in {:?} ({} changed documents parsed)",
            self.dir.display(),
            started.elapsed(),
            self.cache.parsed - parsed_before
        );
        Some(result)
    }
}

/// A hash of the policy files' names and contents: equal fingerprints, equal policies.
/// The files are listed and read as a load lists and reads them (a symlink loop, a fifo or
/// a device is an error, hashed like a file that cannot be read), so this returns as
/// surely as a load does and a change is still noticed.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let (files, errors) = list_files(dir);
    for e in errors {
        e.to_string().hash(&mut h);
    }
    for f in files {
        f.hash(&mut h);
        match read_policy_file(&f) {
            Ok(text) => text.hash(&mut h),
            Err(e) => e.message.hash(&mut h),
        }
    }
    h.finish()
}

/// What a notify event says about the files, if anything.
fn wake_up_of(kind: &EventKind) -> Option<WakeUp> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(WakeUp::Complete),
        EventKind::Access(_) => None,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            Some(WakeUp::Partial)
        }
        _ => Some(WakeUp::Complete),
    }
}

/// Watches `dir` recursively; every change sends a wake-up. Keep the watcher alive as long
/// as wake-ups are wanted.
pub fn wake_on_change(
    dir: &Path,
) -> Result<(RecommendedWatcher, mpsc::Receiver<WakeUp>), notify::Error> {
    // Room for a write's burst of events, so the closing one is seen; when full, the
    // wake-ups already queued will read this change too.
    let (tx, rx) = mpsc::channel(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Some(change) = event.ok().and_then(|e| wake_up_of(&e.kind)) {
            let _ = tx.try_send(change);
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, time::Duration};

    use super::*;

    /// Runs `fingerprint` on a thread and waits at most 10 s, so a hang fails the test.
    fn fingerprint_within_10s(dir: &Path) -> u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(fingerprint(&dir));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("fingerprint did not finish within 10 s")
    }

    #[test]
    fn fingerprint_returns_on_loops_devices_and_fifos_and_sees_changes() {
        let dir = std::env::temp_dir().join(format!("stagewall-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("good.yaml"), "kind: Namespace\n").unwrap();
        symlink(".", dir.join("a")).unwrap();
        symlink(".", dir.join("b")).unwrap();
        symlink("..", dir.join("sub/up")).unwrap();
        symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.join("fifo.yaml").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let before = fingerprint_within_10s(&dir);
        assert_eq!(fingerprint_within_10s(&dir), before, "nothing changed");
        std::fs::write(dir.join("good.yaml"), "kind: Namespace\n# edited\n").unwrap();
        assert_ne!(
            fingerprint_within_10s(&dir),
            before,
            "an edit of the good file is still seen"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
