//! `stagewall report`: per pipeline stage, from the flow records and the policies, what a
//! team needs to move the stage from audit to enforce: its mode, the flows seen, what
//! would have been dropped (by peer and port), what was dropped, and the policies in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::Serialize;

use crate::{
    policy::model::{Direction, Mode, PolicySet, Workload},
    rollout::flow_records::RecordsFile,
};

#[derive(Debug, Default, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub workloads: Vec<String>,
    /// "enforce", "audit" or "mixed" (workloads or directions differ), per direction.
    pub ingress_mode: String,
    pub egress_mode: String,
    /// Distinct flows recorded (workload, direction, peer, protocol, port), and the
    /// events behind them.
    pub flows_seen: usize,
    pub events: u64,
    /// Would-drop and dropped events by (direction, peer, protocol/port).
    pub would_drops: Vec<Denials>,
    pub drops: Vec<Denials>,
    /// The policies in force for the stage's workloads: the NetworkPolicies that isolate
    /// them, and the ClusterNetworkPolicies whose subject holds them.
    pub ingress_isolated_by: Vec<String>,
    pub egress_isolated_by: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Denials {
    pub direction: Direction,
    pub peer: String,
    /// protocol/port, or the protocol alone.
    pub port: String,
    pub events: u64,
}

/// The report for every stage that has a local workload in `set` or a record.
pub fn report(records: &RecordsFile, set: &PolicySet, agent_mode: Mode) -> Vec<StageReport> {
    let stage_of = |w: &Workload| {
        w.labels
            .get("stage")
            .cloned()
            .unwrap_or_else(|| w.name.to_string())
    };
    let mut stages: BTreeMap<String, StageReport> = BTreeMap::new();
    let mut modes: BTreeMap<String, [BTreeSet<Mode>; 2]> = BTreeMap::new();
    let mut policies: BTreeMap<String, [BTreeSet<String>; 2]> = BTreeMap::new();
    // The local workloads, and every workload the records name (a report built from the
    // API server sees every pod of the cluster, local to no one).
    let recorded: BTreeSet<&str> = records
        .records
        .iter()
        .map(|r| r.key.workload.as_str())
        .collect();
    for w in set
        .workloads
        .iter()
        .filter(|w| w.attachment.is_some() || recorded.contains(w.name.to_string().as_str()))
    {
        let stage = stage_of(w);
        let entry = stages.entry(stage.clone()).or_default();
        entry.workloads.push(w.name.to_string());
        for (i, direction) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let audited = agent_mode == Mode::Audit || set.audited(w, direction);
            modes.entry(stage.clone()).or_default()[i].insert(if audited {
                Mode::Audit
            } else {
                Mode::Enforce
            });
            let in_force = policies.entry(stage.clone()).or_default();
            in_force[i].extend(
                set.isolating(w, direction)
                    .iter()
                    .map(|p| p.name.to_string()),
            );
            in_force[i].extend(
                set.cluster_policies_of(w, direction)
                    .iter()
                    .map(|p| format!("ClusterNetworkPolicy {} ({} tier)", p.name, p.tier)),
            );
        }
    }
    // Stage -> (direction, peer, protocol/port) -> events.
    let mut would_drops: BTreeMap<String, BTreeMap<(Direction, String, String), u64>> =
        BTreeMap::new();
    let mut drops = would_drops.clone();
    for r in &records.records {
        let stage = set
            .workload(&r.key.workload)
            .map(stage_of)
            .or_else(|| r.stage.clone())
            .unwrap_or_else(|| r.key.workload.clone());
        let entry = stages.entry(stage.clone()).or_default();
        if !entry.workloads.contains(&r.key.workload) {
            entry.workloads.push(r.key.workload.clone());
        }
        entry.flows_seen += 1;
        // Saturating: the counts are whatever the records file says, up to u64::MAX each.
        entry.events = entry
            .events
            .saturating_add(r.allowed)
            .saturating_add(r.would_drop)
            .saturating_add(r.dropped);
        let port = match r.key.port {
            Some(p) => format!("{}/{p}", r.key.protocol),
            None => r.key.protocol.to_string(),
        };
        // A destination the workload looked up by name is reported by that name (what a
        // name rule would allow), with the peer it fell in.
        let peer = match &r.name {
            Some(name) => format!("{name} ({})", r.peer),
            None => r.peer.clone(),
        };
        let key = (r.key.direction, peer, port);
        for (count, table) in [(r.would_drop, &mut would_drops), (r.dropped, &mut drops)] {
            if count > 0 {
                let total = table
                    .entry(stage.clone())
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                *total = total.saturating_add(count);
            }
        }
    }
    let denials = |table: Option<BTreeMap<(Direction, String, String), u64>>| {
        let mut denials: Vec<Denials> = table
            .unwrap_or_default()
            .into_iter()
            .map(|((direction, peer, port), events)| Denials {
                direction,
                peer,
                port,
                events,
            })
            .collect();
        // Egress before ingress, by name, as the report always listed them.
        denials.sort_by_key(|d| d.direction.name());
        denials
    };
    let mode_name = |set: Option<&BTreeSet<Mode>>| match set.map(|s| s.iter().collect::<Vec<_>>()) {
        Some(v) if v.len() == 1 => v[0].name().to_string(),
        Some(v) if v.len() > 1 => "mixed".to_string(),
        // Only in the records: not a workload of these policies.
        _ => "unknown".to_string(),
    };
    stages
        .into_iter()
        .map(|(stage, mut r)| {
            r.workloads.sort();
            let m = modes.get(&stage);
            r.ingress_mode = mode_name(m.map(|m| &m[0]));
            r.egress_mode = mode_name(m.map(|m| &m[1]));
            let p = policies.remove(&stage).unwrap_or_default();
            let [ingress, egress] = p;
            r.ingress_isolated_by = ingress.into_iter().collect();
            r.egress_isolated_by = egress.into_iter().collect();
            r.would_drops = denials(would_drops.remove(&stage));
            r.drops = denials(drops.remove(&stage));
            r.stage = stage;
            r
        })
        .collect()
}

pub fn text(stages: &[StageReport]) -> String {
    let mut out = String::new();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none (not isolated)".to_string()
        } else {
            v.join(", ")
        }
    };
    for s in stages {
        let _ = writeln!(out, "stage {} ({})", s.stage, s.workloads.join(", "));
        let _ = writeln!(
            out,
            "  mode: ingress {}, egress {}",
            s.ingress_mode, s.egress_mode
        );
        let _ = writeln!(out, "  flows seen: {} ({} events)", s.flows_seen, s.events);
        for (title, denials) in [("would drop", &s.would_drops), ("dropped", &s.drops)] {
            if denials.is_empty() {
                let _ = writeln!(out, "  {title}: none");
                continue;
            }
            let _ = writeln!(out, "  {title}:");
            for d in denials {
                let arrow = match d.direction {
                    Direction::Ingress => "from",
                    Direction::Egress => "to",
                };
                let _ = writeln!(
                    out,
                    "    {:<7} {arrow} {} {}: {} events",
                    d.direction, d.peer, d.port, d.events
                );
            }
        }
        let _ = writeln!(out, "  ingress policies: {}", list(&s.ingress_isolated_by));
        let _ = writeln!(out, "  egress policies: {}", list(&s.egress_isolated_by));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        events::IpProtocol,
        rollout::flow_records::{FlowRecord, RecordKey},
    };

    fn record(port: u16, allowed: u64, would_drop: u64, dropped: u64) -> FlowRecord {
        FlowRecord {
            key: RecordKey {
                workload: "ml/a".into(),
                direction: Direction::Egress,
                protocol: IpProtocol::Tcp,
                port: Some(port),
                peer_address: IpAddr::from([192, 0, 2, 7]),
            },
            stage: Some("training".into()),
            peer: "world".into(),
            name: None,
            allowed,
            would_drop,
            dropped,
            first_seen: 0,
            last_seen: 0,
        }
    }

    /// The counts are whatever the file says (JSON numbers up to u64::MAX): adding them up
    /// saturates rather than overflowing (a panic, or a small number after wrapping).
    #[test]
    fn counts_near_the_largest_the_file_allows_saturate() {
        let max = u64::MAX;
        let records = RecordsFile {
            version: 1,
            agent_mode: Mode::Audit,
            evicted: 0,
            covered: Vec::new(),
            // The same denial twice: one peer, one port, by two records' worth.
            records: vec![record(443, max, max, max), record(443, 1, max, max)],
        };
        let stages = report(&records, &PolicySet::default(), Mode::Audit);
        assert_eq!(stages.len(), 1);
        let s = &stages[0];
        assert_eq!(s.events, max);
        assert_eq!(s.would_drops.len(), 1);
        assert_eq!(s.would_drops[0].events, max);
        assert_eq!(s.drops[0].events, max);
        assert!(text(&stages).contains(&format!("({max} events)")));
    }

    /// Would-drops to a destination looked up by name are reported by that name: two
    /// addresses of one name are one line.
    #[test]
    fn would_drops_to_a_looked_up_name_are_reported_by_the_name() {
        let mut a = record(443, 0, 2, 0);
        a.name = Some("pypi.org".into());
        let mut b = record(443, 0, 3, 0);
        b.key.peer_address = IpAddr::from([192, 0, 2, 8]);
        b.name = Some("pypi.org".into());
        let records = RecordsFile {
            version: 1,
            agent_mode: Mode::Audit,
            evicted: 0,
            covered: Vec::new(),
            records: vec![a, b],
        };
        let stages = report(&records, &PolicySet::default(), Mode::Audit);
        let would = &stages[0].would_drops;
        assert_eq!(would.len(), 1, "{would:?}");
        assert_eq!(would[0].peer, "pypi.org (world)");
        assert_eq!(would[0].events, 5);
    }
}
