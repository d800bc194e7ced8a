//! Flow records: the traffic each workload was seen to have, aggregated per (workload,
//! direction, peer address, protocol, destination port) with counts and first and last
//! seen, kept on disk and bounded in size. They are what `stagewall advise` learns least
//! privilege from, what `stagewall simulate` replays against a candidate policy and what
//! `stagewall report` summarises.
//!
//! They are built from verdict events, not packets: a denied (or would-be denied) packet
//! is an event (the kernel's per-flow rate limit folds bursts into one event and says how
//! many it stands for), an allowed flow is an event when it starts under a policy and
//! about once a second while a workload that no policy isolates keeps using it. Replies
//! are never records of their own.
//!
//! The file also says which workloads' directions the recording covered (`covered`, kept
//! as "watched" in the file): a covered direction without a record had no traffic, one
//! not covered may have had any.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use stagewall_common::{Event, audit_flag};

use crate::{
    compiler::{Compiled, map_keys::direction_number},
    events::{IpProtocol, Verdict, VerdictEvent, fields::direction_from_kernel},
    policy::{
        error::Chain,
        model::{Direction, Mode},
    },
    rollout::error::{FlowRecordsError, ReadError},
};

/// Where the agent keeps its flow records unless told otherwise (`run --flow-records`),
/// and where advise, simulate and report look for them.
pub const DEFAULT_PATH: &str = "/var/lib/stagewall/flow-records.json";

/// Version of the file format; a file of another version is set aside, not misread.
const FORMAT_VERSION: u32 = 1;

/// Which workloads' flows the agent records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Recording {
    /// Only directions in audit mode (the agent's, a namespace's or a policy's).
    Audited,
    /// Every workload, enforced ones too.
    All,
    /// None.
    Off,
}

/// What identifies a record: one workload's traffic in one direction with one peer
/// address on one destination port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    /// The local workload, namespace/name.
    pub workload: String,
    /// Seen from the workload.
    pub direction: Direction,
    pub protocol: IpProtocol,
    /// The destination port (the workload's own for ingress, the peer's for egress);
    /// absent for protocols without ports.
    pub port: Option<u16>,
    /// The other side's address.
    pub peer_address: IpAddr,
}

impl RecordKey {
    /// What records sort by in the file: the direction by name, as when it was a string.
    fn sort_key(&self) -> (&str, &str, IpProtocol, Option<u16>, IpAddr) {
        (
            &self.workload,
            self.direction.name(),
            self.protocol,
            self.port,
            self.peer_address,
        )
    }
}

impl Ord for RecordKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for RecordKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(flatten)]
    pub key: RecordKey,
    /// The workload's `stage` label.
    pub stage: Option<String>,
    /// The peer as events name it: a workload, a policy's CIDR, or "world".
    pub peer: String,
    /// The name the workload's DNS answers last gave the peer's address for (egress,
    /// through the agent's DNS proxy): what advise allows by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Events with each verdict (with what the kernel's rate limit folded into them).
    pub allowed: u64,
    pub would_drop: u64,
    pub dropped: u64,
    /// Seconds since the Unix epoch.
    pub first_seen: u64,
    pub last_seen: u64,
}

impl FlowRecord {
    /// The traffic went through: allowed, or denied in audit mode only.
    pub fn passed(&self) -> bool {
        self.allowed > 0 || self.would_drop > 0
    }
}

/// A workload's direction whose flows were recorded: with no record, it had no traffic
/// (as opposed to traffic nobody recorded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoveredDirection {
    pub workload: String,
    pub direction: Direction,
    pub stage: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

/// The records file as written.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsFile {
    pub version: u32,
    /// The mode the agent that wrote the file ran in (`--mode`).
    pub agent_mode: Mode,
    /// Records dropped to stay within the bound, since the file was started.
    pub evicted: u64,
    /// The directions the recording covered ("watched" in the file, as it always was).
    #[serde(rename = "watched")]
    pub covered: Vec<CoveredDirection>,
    pub records: Vec<FlowRecord>,
}

impl RecordsFile {
    /// Was this workload's direction recorded?
    pub fn covered(&self, workload: &str, direction: Direction) -> bool {
        self.covered
            .iter()
            .any(|c| c.workload == workload && c.direction == direction)
    }
}

/// The records, in memory, bounded, written to `path` now and then.
pub struct FlowRecords {
    path: PathBuf,
    max: usize,
    agent_mode: Mode,
    records: HashMap<RecordKey, FlowRecord>,
    /// (workload, direction) -> when recording it began, and its stage.
    covered: BTreeMap<(String, Direction), (u64, Option<String>)>,
    evicted: u64,
    dirty: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FlowRecords {
    /// Opens the records at `path`: those a previous agent wrote are kept and added to.
    /// A file that cannot be read as records is renamed to `<path>.unreadable` (kept for
    /// the operator, never overwritten) and recording starts afresh.
    pub fn open(
        path: &Path,
        max: usize,
        agent_mode: Mode,
    ) -> Result<FlowRecords, FlowRecordsError> {
        let mut records = FlowRecords {
            path: path.to_path_buf(),
            max: max.max(1),
            agent_mode,
            records: HashMap::new(),
            covered: BTreeMap::new(),
            evicted: 0,
            dirty: false,
        };
        match read(path) {
            Ok(Some(file)) => {
                records.evicted = file.evicted;
                for r in file.records {
                    records.records.insert(r.key.clone(), r);
                }
                for c in file.covered {
                    records
                        .covered
                        .insert((c.workload, c.direction), (c.since, c.stage));
                }
                records.evict();
            }
            // Written at the first save even if nothing was recorded: the file says
            // so, rather than being missing.
            Ok(None) => records.dirty = true,
            Err(e) => {
                let aside = with_suffix(path, ".unreadable");
                log::error!(
                    "flow records {}: {}; moved to {} and starting afresh",
                    path.display(),
                    Chain(&e),
                    aside.display()
                );
                fs::rename(path, &aside).map_err(FlowRecordsError::moving_aside(path))?;
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // 0700: the records name peers' addresses.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(FlowRecordsError::creating(dir))?;
        }
        Ok(records)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records dropped to stay within the bound, since the file was started.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Notes that a workload's direction is recorded from now on (if it was not already).
    pub fn cover(&mut self, workload: &str, direction: Direction, stage: Option<&str>) {
        let key = (workload.to_string(), direction);
        if let std::collections::btree_map::Entry::Vacant(e) = self.covered.entry(key) {
            e.insert((now_secs(), stage.map(str::to_string)));
            self.dirty = true;
        }
    }

    /// Adds an event to its record. Events without a peer address (unparseable packets)
    /// say nothing about a flow and are skipped.
    pub fn observe(&mut self, e: &VerdictEvent) {
        self.observe_at(e, now_secs());
    }

    fn observe_at(&mut self, e: &VerdictEvent, now: u64) {
        let peer = match e.direction {
            Direction::Ingress => e.src,
            Direction::Egress => e.dst,
        };
        let Some(peer_address) = peer else {
            return;
        };
        let key = RecordKey {
            workload: e.workload.clone(),
            direction: e.direction,
            protocol: e.protocol,
            port: e.dst_port,
            peer_address,
        };
        if !self.records.contains_key(&key) && self.records.len() >= self.max {
            self.evict();
        }
        let record = self
            .records
            .entry(key.clone())
            .or_insert_with(|| FlowRecord {
                key,
                stage: e.stage.clone(),
                peer: e.peer.clone(),
                name: None,
                allowed: 0,
                would_drop: 0,
                dropped: 0,
                first_seen: now,
                last_seen: now,
            });
        if e.dst_name.is_some() && e.direction == Direction::Egress {
            record.name.clone_from(&e.dst_name);
        }
        let count = 1 + u64::from(e.suppressed);
        // Saturating: a count read from the file may be anything up to u64::MAX.
        let total = match e.verdict {
            Verdict::Allowed => Some(&mut record.allowed),
            Verdict::WouldDrop => Some(&mut record.would_drop),
            Verdict::Dropped => Some(&mut record.dropped),
            Verdict::Unknown => None,
        };
        if let Some(total) = total {
            *total = total.saturating_add(count);
        }
        record.peer.clone_from(&e.peer);
        record.last_seen = record.last_seen.max(now);
        self.dirty = true;
    }

    /// Drops the least recently seen sixteenth (at least one record) to make room: one
    /// sort per many inserts instead of an ordered index kept on every event.
    fn evict(&mut self) {
        if self.records.len() < self.max {
            return;
        }
        let excess = self.records.len() + 1 - self.max;
        let n = excess.max(self.max / 16).max(1);
        let mut by_age: Vec<(u64, RecordKey)> = self
            .records
            .values()
            .map(|r| (r.last_seen, r.key.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age.into_iter().take(n) {
            self.records.remove(&key);
            self.evicted += 1;
        }
        self.dirty = true;
    }

    /// Writes the records if they changed: to a temporary file, synced, then renamed over
    /// the old one, so a crash leaves either the old records or the new, never half.
    pub fn save(&mut self) -> Result<(), FlowRecordsError> {
        if !self.dirty {
            return Ok(());
        }
        let mut records: Vec<FlowRecord> = self.records.values().cloned().collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        let mut covered: Vec<CoveredDirection> = self
            .covered
            .iter()
            .map(|((workload, direction), (since, stage))| CoveredDirection {
                workload: workload.clone(),
                direction: *direction,
                stage: stage.clone(),
                since: *since,
            })
            .collect();
        // By workload, then direction by name, as the file always listed them.
        covered.sort_by(|a, b| {
            (&a.workload, a.direction.name()).cmp(&(&b.workload, b.direction.name()))
        });
        let file = RecordsFile {
            version: FORMAT_VERSION,
            agent_mode: self.agent_mode,
            evicted: self.evicted,
            covered,
            records,
        };
        let tmp = with_suffix(&self.path, ".tmp");
        let write = || -> std::io::Result<()> {
            // Made afresh, 0600 whatever the umask (the records name peers' addresses):
            // a leftover temporary file, or a symlink planted in its place, is removed
            // rather than written through, and O_EXCL never follows a link.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(&file)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(FlowRecordsError::writing(&self.path))?;
        self.dirty = false;
        Ok(())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn read(path: &Path) -> Result<Option<RecordsFile>, ReadError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    parse(&bytes).map(Some)
}

/// A records file's contents, as the agent (adding to them), advise, simulate and report
/// read them: JSON of this format version, or an error. Pure, so it is fuzzed on its own
/// (agent/fuzz, `flow_records`): whatever it accepts is written back as equal records.
pub fn parse(bytes: &[u8]) -> Result<RecordsFile, ReadError> {
    let file: RecordsFile = serde_json::from_slice(bytes).map_err(ReadError::NotRecords)?;
    if file.version != FORMAT_VERSION {
        return Err(ReadError::Version {
            found: file.version,
            expected: FORMAT_VERSION,
        });
    }
    Ok(file)
}

/// Reads a records file for `advise`, `simulate` and `report`.
pub fn load(path: &Path) -> Result<RecordsFile, FlowRecordsError> {
    let path = path.to_path_buf();
    match read(&path) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(FlowRecordsError::Missing { path }),
        Err(source) => Err(FlowRecordsError::Read { path, source }),
    }
}

/// Which events the flow records take: those of audited directions, or all.
#[derive(Clone, Copy)]
pub struct RecordFilter {
    pub recording: Recording,
    /// The agent runs in audit mode: every direction is audited.
    pub agent_audits: bool,
}

impl RecordFilter {
    /// Does the recording cover this direction of an endpoint with these EP_* flags?
    pub fn covers(&self, flags: u32, direction: Direction) -> bool {
        match self.recording {
            Recording::All => true,
            Recording::Off => false,
            Recording::Audited => {
                self.agent_audits || flags & audit_flag(direction_number(direction)) != 0
            }
        }
    }

    /// Does it take this event? Only of workloads of the policy in force.
    pub fn takes(&self, event: &Event, compiled: &Compiled) -> bool {
        compiled
            .endpoint_by_id(event.endpoint_id)
            .is_some_and(|e| self.covers(e.flags, direction_from_kernel(event.direction)))
    }
}

#[cfg(test)]
mod tests;
