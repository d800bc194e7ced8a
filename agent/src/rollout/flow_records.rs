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

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use stagewall_common::{Event, audit_flag};

use crate::{compiler::Compiled, events::VerdictEvent, policy::model::Mode};

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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// The local workload, namespace/name.
    pub workload: String,
    /// "ingress" or "egress", seen from the workload.
    pub direction: String,
    /// "tcp", "udp", "sctp", "icmp", ...
    pub protocol: String,
    /// The destination port (the workload's own for ingress, the peer's for egress);
    /// absent for protocols without ports.
    pub port: Option<u16>,
    /// The other side's address.
    pub peer_address: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(flatten)]
    pub key: RecordKey,
    /// The workload's `stage` label.
    pub stage: Option<String>,
    /// The peer as events name it: a workload, a policy's CIDR, or "world".
    pub peer: String,
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watched {
    pub workload: String,
    pub direction: String,
    pub stage: Option<String>,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

/// The records file as written.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordsFile {
    pub version: u32,
    /// The mode the agent that wrote the file ran in (`--mode`).
    pub agent_mode: String,
    /// Records dropped to stay within the bound, since the file was started.
    pub evicted: u64,
    pub watched: Vec<Watched>,
    pub records: Vec<FlowRecord>,
}

impl RecordsFile {
    /// Was this workload's direction recorded?
    pub fn watched(&self, workload: &str, direction: &str) -> bool {
        self.watched
            .iter()
            .any(|w| w.workload == workload && w.direction == direction)
    }
}

/// The records, in memory, bounded, written to `path` now and then.
pub struct FlowRecords {
    path: PathBuf,
    max: usize,
    agent_mode: Mode,
    records: HashMap<RecordKey, FlowRecord>,
    /// (workload, direction) -> when recording it began, and its stage.
    watched: BTreeMap<(String, String), (u64, Option<String>)>,
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
    pub fn open(path: &Path, max: usize, agent_mode: Mode) -> anyhow::Result<FlowRecords> {
        let mut records = FlowRecords {
            path: path.to_path_buf(),
            max: max.max(1),
            agent_mode,
            records: HashMap::new(),
            watched: BTreeMap::new(),
            evicted: 0,
            dirty: false,
        };
        match read(path) {
            Ok(Some(file)) => {
                records.evicted = file.evicted;
                for r in file.records {
                    records.records.insert(r.key.clone(), r);
                }
                for w in file.watched {
                    records
                        .watched
                        .insert((w.workload, w.direction), (w.since, w.stage));
                }
                records.evict();
            }
            // Written at the first save even if nothing was recorded: the file says
            // so, rather than being missing.
            Ok(None) => records.dirty = true,
            Err(e) => {
                let aside = with_suffix(path, ".unreadable");
                log::error!(
                    "flow records {}: {e:#}; moved to {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                fs::rename(path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
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
    pub fn watch(&mut self, workload: &str, direction: &str, stage: Option<&str>) {
        let key = (workload.to_string(), direction.to_string());
        if let std::collections::btree_map::Entry::Vacant(e) = self.watched.entry(key) {
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
        let ingress = e.direction == "ingress";
        let Some(peer_address) = (if ingress { e.src } else { e.dst }) else {
            return;
        };
        let key = RecordKey {
            workload: e.workload.clone(),
            direction: e.direction.clone(),
            protocol: e.protocol.clone(),
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
                allowed: 0,
                would_drop: 0,
                dropped: 0,
                first_seen: now,
                last_seen: now,
            });
        let count = 1 + e.suppressed as u64;
        match e.verdict.as_str() {
            "allowed" => record.allowed += count,
            "would-drop" => record.would_drop += count,
            "dropped" => record.dropped += count,
            _ => {}
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
    pub fn save(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut records: Vec<FlowRecord> = self.records.values().cloned().collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        let file = RecordsFile {
            version: FORMAT_VERSION,
            agent_mode: self.agent_mode.name().to_string(),
            evicted: self.evicted,
            watched: self
                .watched
                .iter()
                .map(|((workload, direction), (since, stage))| Watched {
                    workload: workload.clone(),
                    direction: direction.clone(),
                    stage: stage.clone(),
                    since: *since,
                })
                .collect(),
            records,
        };
        let tmp = with_suffix(&self.path, ".tmp");
        let write = || -> anyhow::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&file)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            Ok(())
        };
        write().with_context(|| format!("writing flow records {}", self.path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn read(path: &Path) -> anyhow::Result<Option<RecordsFile>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file: RecordsFile = serde_json::from_slice(&bytes)
        .context("not a flow records file (invalid JSON or fields)")?;
    anyhow::ensure!(
        file.version == FORMAT_VERSION,
        "flow records format version {}; this agent reads version {FORMAT_VERSION}",
        file.version
    );
    Ok(Some(file))
}

/// Reads a records file for `advise`, `simulate` and `report`.
pub fn load(path: &Path) -> anyhow::Result<RecordsFile> {
    read(path)
        .with_context(|| format!("reading flow records {}", path.display()))?
        .with_context(|| format!("no flow records at {}", path.display()))
}

/// Which events the flow records take: those of audited directions, or all.
#[derive(Clone, Copy)]
pub struct RecordFilter {
    pub recording: Recording,
    /// The agent runs in audit mode: every direction is audited.
    pub agent_audits: bool,
}

impl RecordFilter {
    /// Does it take a direction (DIR_*) of an endpoint with these EP_* flags?
    pub fn covers(&self, flags: u32, direction: u8) -> bool {
        match self.recording {
            Recording::All => true,
            Recording::Off => false,
            Recording::Audited => self.agent_audits || flags & audit_flag(direction) != 0,
        }
    }

    /// Does it take this event? Only of workloads of the policy in force.
    pub fn takes(&self, event: &Event, compiled: &Compiled) -> bool {
        compiled
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == event.endpoint_id)
            .is_some_and(|e| self.covers(e.flags, event.direction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagewall_common::{DIR_EGRESS, DIR_INGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS};

    fn event(
        verdict: &str,
        direction: &str,
        peer: &str,
        port: u16,
        suppressed: u32,
    ) -> VerdictEvent {
        let peer_addr: IpAddr = peer.parse().unwrap();
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        let ingress = direction == "ingress";
        VerdictEvent {
            time: String::new(),
            node: "n".into(),
            verdict: verdict.into(),
            reason: "no-rule".into(),
            direction: direction.into(),
            protocol: "tcp".into(),
            src: Some(if ingress { peer_addr } else { local }),
            src_port: Some(40_000),
            dst: Some(if ingress { local } else { peer_addr }),
            dst_port: Some(port),
            namespace: "ml".into(),
            workload: "ml/trainer".into(),
            stage: Some("training".into()),
            peer: "world".into(),
            policies: Vec::new(),
            hook: "cgroup_skb".into(),
            suppressed,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("stagewall-records-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn events_aggregate_per_flow_and_survive_a_restart() {
        let d = dir("aggregate");
        let path = d.join("flows.json");
        let mut r = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
        r.watch("ml/trainer", "egress", Some("training"));
        r.observe_at(&event("allowed", "egress", "10.0.0.2", 443, 0), 100);
        r.observe_at(&event("would-drop", "egress", "10.0.0.2", 443, 4), 105);
        r.observe_at(&event("allowed", "ingress", "10.0.0.2", 8080, 0), 106);
        // The client's ephemeral port is not part of the key: a new connection to the
        // same service is the same record.
        let mut again = event("allowed", "egress", "10.0.0.2", 443, 0);
        again.src_port = Some(40_001);
        r.observe_at(&again, 110);
        assert_eq!(r.len(), 2, "egress 443 and ingress 8080");
        r.save().unwrap();

        let reopened = FlowRecords::open(&path, 100, Mode::Audit).unwrap();
        let egress = reopened
            .records
            .values()
            .find(|x| x.key.direction == "egress")
            .unwrap();
        assert_eq!(
            (egress.allowed, egress.would_drop, egress.dropped),
            (2, 5, 0)
        );
        assert_eq!((egress.first_seen, egress.last_seen), (100, 110));
        assert_eq!(egress.key.port, Some(443));
        assert!(egress.passed());
        let file = load(&path).unwrap();
        assert_eq!(file.records.len(), 2);
        assert_eq!(file.agent_mode, "audit");
        assert!(file.watched("ml/trainer", "egress"));
        assert!(!file.watched("ml/trainer", "ingress"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_least_recently_seen_records_make_room() {
        let d = dir("bounded");
        let mut r = FlowRecords::open(&d.join("flows.json"), 32, Mode::Audit).unwrap();
        for port in 0..100u16 {
            r.observe_at(
                &event("allowed", "egress", "10.0.0.2", port, 0),
                port as u64,
            );
        }
        assert!(r.len() <= 32, "{}", r.len());
        assert_eq!(r.evicted as usize + r.len(), 100);
        let oldest_kept = r.records.values().map(|x| x.last_seen).min().unwrap();
        assert!(
            oldest_kept >= 100 - 32,
            "kept the newest, oldest kept is {oldest_kept}"
        );
        assert!(r.records.values().any(|x| x.key.port == Some(99)));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_set_aside_not_overwritten() {
        let d = dir("unreadable");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("flows.json");
        fs::write(&path, b"{\"version\": 1, \"records\": [").unwrap();
        let mut r = FlowRecords::open(&path, 10, Mode::Enforce).unwrap();
        assert!(r.is_empty());
        assert_eq!(
            fs::read(d.join("flows.json.unreadable")).unwrap(),
            b"{\"version\": 1, \"records\": ["
        );
        r.observe_at(&event("dropped", "ingress", "10.0.0.3", 22, 0), 1);
        r.save().unwrap();
        assert_eq!(load(&path).unwrap().records.len(), 1);
        let e = load(&d.join("missing.json")).unwrap_err();
        assert!(format!("{e:#}").contains("no flow records at"), "{e:#}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn records_take_audited_directions_or_all_or_none() {
        let filter = |recording, agent_audits| RecordFilter {
            recording,
            agent_audits,
        };
        let audited = filter(Recording::Audited, false);
        assert!(audited.covers(EP_AUDIT_INGRESS, DIR_INGRESS));
        assert!(
            !audited.covers(EP_AUDIT_INGRESS, DIR_EGRESS),
            "per direction"
        );
        assert!(!audited.covers(0, DIR_INGRESS), "an enforced workload");
        assert!(
            filter(Recording::Audited, true).covers(0, DIR_EGRESS),
            "--mode audit"
        );
        assert!(filter(Recording::All, false).covers(0, DIR_EGRESS));
        assert!(!filter(Recording::Off, true).covers(EP_AUDIT_EGRESS, DIR_EGRESS));
    }
}
