//! The quarantined workloads, kept in a map pinned in bpffs beside the layouts
//! (`DIR/quarantine-v1`), not in the agent: a restart, an OOM kill or an upgrade must not
//! lift a quarantine. Its format is its own and never changes (a new one gets a new
//! name), so an agent with another map layout still reads it.
//!
//! The kernel programs do not read it: the quarantine is in force through the endpoints'
//! flags, which the agent writes from this set at every apply.

use std::path::{Path, PathBuf};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError},
};

use crate::{datapath::error::DatapathError, policy::model::ObjectName};

/// The pin's name under the pin directory.
const PIN: &str = "quarantine-v1";
/// Room for "namespace/name": a namespace (63) and a name (253), a slash and a NUL.
const NAME_BYTES: usize = 320;
/// More workloads than a node runs.
const MAX_QUARANTINED: u32 = 16_384;
const BPF_F_NO_PREALLOC: u32 = 1;

/// A workload's "namespace/name", NUL-padded.
#[repr(C)]
#[derive(Clone, Copy)]
struct StoredName([u8; NAME_BYTES]);

// SAFETY: a plain byte array, no padding.
unsafe impl Pod for StoredName {}

impl StoredName {
    fn new(workload: &ObjectName) -> Option<StoredName> {
        let text = workload.to_string();
        if text.len() >= NAME_BYTES {
            return None;
        }
        let mut bytes = [0u8; NAME_BYTES];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(StoredName(bytes))
    }

    fn workload(&self) -> Option<ObjectName> {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(NAME_BYTES);
        let text = std::str::from_utf8(&self.0[..end]).ok()?;
        let (namespace, name) = text.split_once('/')?;
        Some(ObjectName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

/// The pinned set of quarantined workloads.
pub struct QuarantineStore {
    map: HashMap<MapData, StoredName, u64>,
    path: PathBuf,
}

impl QuarantineStore {
    /// Opens the set pinned under `root`, or creates and pins an empty one.
    pub fn open(root: &Path) -> Result<QuarantineStore, DatapathError> {
        let path = root.join(PIN);
        let failed = |source| DatapathError::QuarantineStore {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let created: HashMap<MapData, StoredName, u64> =
                HashMap::create(MAX_QUARANTINED, BPF_F_NO_PREALLOC).map_err(failed)?;
            created.pin(&path).map_err(|error| {
                failed(MapError::PinError {
                    name: Some(PIN.to_string()),
                    error,
                })
            })?;
        }
        let map = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .and_then(HashMap::try_from)
            .map_err(failed)?;
        Ok(QuarantineStore { map, path })
    }

    /// The workloads quarantined, with those whose stored name does not read back (none,
    /// unless the pin was written by something else) counted.
    pub fn workloads(&self) -> (Vec<ObjectName>, usize) {
        let mut workloads = Vec::new();
        let mut unreadable = 0;
        for key in self.map.keys() {
            match key.ok().and_then(|k| k.workload()) {
                Some(w) => workloads.push(w),
                None => unreadable += 1,
            }
        }
        (workloads, unreadable)
    }

    /// Keeps `workload` quarantined across restarts, since `since` (seconds since the
    /// epoch).
    pub fn insert(&mut self, workload: &ObjectName, since: u64) -> Result<(), DatapathError> {
        let key = StoredName::new(workload).ok_or_else(|| DatapathError::QuarantineName {
            workload: workload.to_string(),
            limit: NAME_BYTES - 1,
        })?;
        self.map
            .insert(key, since, 0)
            .map_err(|source| DatapathError::QuarantineStore {
                path: self.path.clone(),
                source,
            })
    }

    pub fn remove(&mut self, workload: &ObjectName) -> Result<(), DatapathError> {
        let Some(key) = StoredName::new(workload) else {
            return Ok(());
        };
        match self.map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::QuarantineStore {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_read_back_and_overlong_ones_are_refused() {
        let w = ObjectName {
            namespace: "ml-train".into(),
            name: "trainer-0".into(),
        };
        let stored = StoredName::new(&w).unwrap();
        assert_eq!(stored.workload(), Some(w));
        let long = ObjectName {
            namespace: "n".into(),
            name: "x".repeat(NAME_BYTES),
        };
        assert!(StoredName::new(&long).is_none());
    }
}
