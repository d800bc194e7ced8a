//! What can go wrong with the flow records on disk, naming the file.

use std::{
    io,
    path::{Path, PathBuf},
};

/// A file that could not be read as flow records.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a flow records file (invalid JSON or fields)")]
    NotRecords(#[source] serde_json::Error),
    #[error("flow records format version {found}; this agent reads version {expected}")]
    Version { found: u32, expected: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum FlowRecordsError {
    #[error("reading flow records {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("no flow records at {}", path.display())]
    Missing { path: PathBuf },
    /// An unreadable file could not be renamed to `<path>.unreadable`.
    #[error("moving {} aside", path.display())]
    MoveAside {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing flow records {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// For `map_err`: the error of an io step on the file or directory at `path`.
impl FlowRecordsError {
    pub fn moving_aside(path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        |source| FlowRecordsError::MoveAside { path, source }
    }

    pub fn creating(dir: &Path) -> impl FnOnce(io::Error) -> Self {
        let dir = dir.to_path_buf();
        |source| FlowRecordsError::CreateDir { dir, source }
    }

    pub fn writing(path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        |source| FlowRecordsError::Write { path, source }
    }
}
