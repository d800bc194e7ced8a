//! The policy directory as a source: a fingerprint of its files' contents, and a watcher
//! that wakes the agent when something in it changes (inotify), so an edit takes effect in
//! milliseconds. A periodic check backs the watcher up (events can be missed, and a
//! workload's cgroup or interface can appear without any file changing).

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::Path,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::policy::parse::policy_files;

/// A hash of the policy files' names and contents: equal fingerprints, equal policies.
/// A directory that cannot be read hashes its error, so a change is still noticed.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    match policy_files(dir) {
        Ok(files) => {
            for f in files {
                f.hash(&mut h);
                std::fs::read(&f).ok().hash(&mut h);
            }
        }
        Err(e) => e.to_string().hash(&mut h),
    }
    h.finish()
}

/// Watches `dir` recursively; every change sends a wake-up (coalesced: the channel holds
/// one). Keep the watcher alive as long as wake-ups are wanted.
pub fn watch(dir: &Path) -> anyhow::Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // Full means a wake-up is already pending; that one will see this change too.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}
