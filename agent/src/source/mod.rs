//! Where the desired state comes from: a directory of policy files, or the Kubernetes API
//! server. The agent asks when something may have changed (a wake-up, or its periodic
//! check) and applies what it gets.

pub mod files;
pub mod kubernetes;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;

use crate::policy::{error::PolicyErrors, model::PolicySet};

use self::files::Files;

pub enum Source {
    Files(Files),
    // Boxed: the view (watcher state, the last desired state) is much larger than a
    // directory.
    Kubernetes(Box<kubernetes::View>),
}

impl Source {
    /// The policy directory, for a source of files.
    pub fn policy_dir(&self) -> Option<&Path> {
        match self {
            Source::Files(f) => Some(f.dir()),
            Source::Kubernetes(_) => None,
        }
    }

    /// Policy files in `dir`; with `node_ingress`, this host's addresses count as the
    /// node's (see `Files`).
    pub fn files(dir: PathBuf, node_ingress: bool) -> Source {
        Source::Files(Files::new(dir, node_ingress))
    }

    /// How many objects the last desired state given left out for an error of theirs (the
    /// rest is enforced); none from files, which are taken whole or not at all.
    pub fn left_out(&self) -> usize {
        match self {
            Source::Files(_) => 0,
            Source::Kubernetes(view) => view
                .left_out
                .iter()
                .map(|e| &e.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }

    /// What became of the desired state last given: applied, or why not (the Kubernetes
    /// objects' status says so).
    pub fn applied(&mut self, outcome: Result<(), String>) {
        if let Source::Kubernetes(view) = self {
            view.applied(outcome);
        }
    }

    /// The desired state if it changed since it was last given (the first call always
    /// gives it): the set, or the errors for which the policy in force stays.
    pub fn changed(&mut self) -> Option<Result<PolicySet, PolicyErrors>> {
        match self {
            Source::Files(f) => f.changed(),
            Source::Kubernetes(view) => view.changed(),
        }
    }
}

/// A wake-up from a watcher (the policy directory's, or the API server's): something may
/// have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeUp {
    /// A file was closed after writing, renamed into place or removed: what is there now
    /// is what the writer meant. Read at once.
    Complete,
    /// A file was created or written and is still open: more may follow. Read when the
    /// writer closes it, or after `SETTLE` at the latest.
    Partial,
}

/// How long a partial change waits for the writer to finish.
pub const SETTLE: Duration = Duration::from_millis(5);

/// After a wake-up: waits until the files are complete (or `SETTLE` has passed), then
/// takes the wake-ups queued meanwhile, which one read of the directory answers.
pub async fn settle(first: WakeUp, changes: &mut mpsc::Receiver<WakeUp>) {
    if first == WakeUp::Partial {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while let Ok(Some(WakeUp::Partial)) =
            tokio::time::timeout_at(deadline, changes.recv()).await
        {}
    }
    while changes.try_recv().is_ok() {}
}
