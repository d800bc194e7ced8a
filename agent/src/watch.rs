//! The policy directory as a source: a fingerprint of its files' contents, and a watcher
//! that wakes the agent when something in it changes (inotify), so an edit takes effect in
//! milliseconds. A periodic check backs the watcher up (events can be missed, and a
//! workload's cgroup or interface can appear without any file changing).

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::Path,
    time::Duration,
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind},
};
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

/// What a watcher event says about the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file was closed after writing, renamed into place or removed: what is there now
    /// is what the writer meant. Read at once.
    Complete,
    /// A file was created or written and is still open: more may follow. Read when the
    /// writer closes it, or after `SETTLE` at the latest.
    Partial,
}

/// How long a partial change waits for the writer to finish.
pub const SETTLE: Duration = Duration::from_millis(5);

impl Change {
    fn of(kind: &EventKind) -> Option<Change> {
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Complete),
            EventKind::Access(_) => None,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                Some(Change::Partial)
            }
            _ => Some(Change::Complete),
        }
    }
}

/// Watches `dir` recursively; every change sends a wake-up. Keep the watcher alive as long
/// as wake-ups are wanted.
pub fn watch(dir: &Path) -> anyhow::Result<(RecommendedWatcher, mpsc::Receiver<Change>)> {
    // Room for a write's burst of events, so the closing one is seen; when full, the
    // wake-ups already queued will read this change too.
    let (tx, rx) = mpsc::channel(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Some(change) = event.ok().and_then(|e| Change::of(&e.kind)) {
            let _ = tx.try_send(change);
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

/// After a wake-up: waits until the files are complete (or `SETTLE` has passed), then
/// takes the wake-ups queued meanwhile, which one read of the directory answers.
pub async fn settle(first: Change, changes: &mut mpsc::Receiver<Change>) {
    if first == Change::Partial {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while let Ok(Some(Change::Partial)) =
            tokio::time::timeout_at(deadline, changes.recv()).await
        {}
    }
    while changes.try_recv().is_ok() {}
}
