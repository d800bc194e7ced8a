//! `stagewall simulate --policies DIR`: replays flow records against a candidate policy
//! set and says, per stage, which flows it would newly deny or newly allow, and the rule
//! responsible. Decided by the tiers the compiler is tested against (policy::tiers: the
//! Admin tier, the NetworkPolicies, the Baseline tier), so no kernel is needed; a CI job
//! can gate a policy change on it.
//!
//! What counts is whether the traffic goes through:
//! - newly denied: the flow went through (allowed, or would-drop in audit mode) and the
//!   candidate drops it (denies it where it enforces);
//! - newly allowed: the policy in force denied the flow (dropped or would-drop) and the
//!   candidate allows it;
//! - would drop: the candidate denies the flow but audits that direction, so it still
//!   goes through and is reported.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    events::IpProtocol,
    policy::{
        model::{Direction, Mode, NetworkPolicy, PolicySet},
        semantics::Side,
        tiers::{self, DecidedBy, Decision},
    },
    rollout::flow_records::{FlowRecord, RecordsFile},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    NewlyDenied,
    NewlyAllowed,
    WouldDrop,
    Unchanged,
}

/// One record's fate under the candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub change: Change,
    pub workload: String,
    pub direction: Direction,
    pub peer: String,
    pub peer_address: std::net::IpAddr,
    pub protocol: IpProtocol,
    pub port: Option<u16>,
    /// Events recorded as allowed, would-drop and dropped.
    pub recorded: [u64; 3],
    /// The rule that allows it, or the policies none of whose rules do.
    pub because: String,
}

#[derive(Debug, Default, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub newly_denied: usize,
    pub newly_allowed: usize,
    pub would_drop: usize,
    pub unchanged: usize,
    /// Every record but the unchanged ones.
    pub changes: Vec<Outcome>,
}

#[derive(Debug, Default, Serialize)]
pub struct Simulation {
    pub stages: Vec<StageResult>,
    /// Records of workloads the candidate does not have.
    pub skipped: Vec<String>,
}

impl Simulation {
    pub fn newly_denied(&self) -> usize {
        self.stages.iter().map(|s| s.newly_denied).sum()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.stages {
            let _ = writeln!(
                out,
                "stage {}: {} newly denied, {} newly allowed, {} would drop (audit), {} unchanged",
                s.stage, s.newly_denied, s.newly_allowed, s.would_drop, s.unchanged
            );
            for o in &s.changes {
                let arrow = match o.direction {
                    Direction::Ingress => "<-",
                    Direction::Egress => "->",
                };
                let port = o.port.map_or_else(String::new, |p| format!("/{p}"));
                let [allowed, would_drop, dropped] = o.recorded;
                let _ = writeln!(
                    out,
                    "  {:<13} {} {} {arrow} {} ({}) {}{port}: {} (recorded: {allowed} allowed, {would_drop} would-drop, {dropped} dropped)",
                    match o.change {
                        Change::NewlyDenied => "NEWLY DENIED",
                        Change::NewlyAllowed => "newly allowed",
                        Change::WouldDrop => "would drop",
                        Change::Unchanged => "unchanged",
                    },
                    o.direction,
                    o.workload,
                    o.peer,
                    o.peer_address,
                    o.protocol,
                    o.because
                );
            }
        }
        for w in &self.skipped {
            let _ = writeln!(
                out,
                "skipped: {w} is not a workload of the candidate policies"
            );
        }
        let _ = writeln!(out, "{} flow(s) newly denied", self.newly_denied());
        out
    }
}

/// Replays `records` against `candidate`, with the agent in `agent_mode`.
pub fn simulate(records: &RecordsFile, candidate: &PolicySet, agent_mode: Mode) -> Simulation {
    let mut stages: BTreeMap<String, StageResult> = BTreeMap::new();
    let mut skipped = std::collections::BTreeSet::new();
    let mut enforced = candidate.clone();
    enforced
        .cluster_policies
        .retain(|p| p.mode != Some(Mode::Audit));
    for r in &records.records {
        let Some(w) = candidate.workload(&r.key.workload) else {
            skipped.insert(r.key.workload.clone());
            continue;
        };
        let direction = r.key.direction;
        // The name the workload's DNS gave the address for (recorded through the agent's
        // DNS proxy): what the candidate's name rules judge it by.
        let names: Vec<String> = r.name.iter().cloned().collect();
        let decide = |set| {
            tiers::decide_named(
                set,
                w,
                direction,
                r.key.peer_address,
                r.key.protocol.number().unwrap_or(0),
                r.key.port.unwrap_or(0),
                &names,
            )
        };
        // The verdict comes from the enforced policies; ClusterNetworkPolicies in audit
        // mode only report what they would deny (the tiers read again with them).
        let mut decision = decide(&enforced);
        let denied = !decision.allowed();
        let audited = agent_mode == Mode::Audit
            || match decision.by {
                DecidedBy::Cluster(_) => candidate.tiers_audited(w),
                _ => candidate.audited(w, direction),
            };
        let mut shadow_denies = false;
        if !denied && candidate.cluster_audited(w, direction) {
            let shadow = decide(candidate);
            if !shadow.allowed() {
                decision = shadow;
                shadow_denies = true;
            }
        }
        // Not a sum: each count may be up to u64::MAX.
        let was_denied = r.would_drop > 0 || r.dropped > 0;
        let change = if (denied && audited) || shadow_denies {
            Change::WouldDrop
        } else if denied {
            if r.passed() {
                Change::NewlyDenied
            } else {
                Change::Unchanged
            }
        } else if was_denied {
            Change::NewlyAllowed
        } else {
            Change::Unchanged
        };
        let stage = r
            .stage
            .clone()
            .or_else(|| w.labels.get("stage").cloned())
            .unwrap_or_else(|| r.key.workload.clone());
        let result = stages.entry(stage.clone()).or_insert_with(|| StageResult {
            stage,
            ..Default::default()
        });
        match change {
            Change::NewlyDenied => result.newly_denied += 1,
            Change::NewlyAllowed => result.newly_allowed += 1,
            Change::WouldDrop => result.would_drop += 1,
            Change::Unchanged => result.unchanged += 1,
        }
        if change != Change::Unchanged {
            result.changes.push(outcome(r, change, &decision));
        }
    }
    for s in stages.values_mut() {
        s.changes.sort_by_key(|o| o.change);
    }
    Simulation {
        stages: stages.into_values().collect(),
        skipped: skipped.into_iter().collect(),
    }
}

fn outcome(r: &FlowRecord, change: Change, decision: &Decision) -> Outcome {
    let direction = r.key.direction;
    let section = direction.name();
    let names = |ps: &[&NetworkPolicy]| {
        ps.iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let because = match &decision.by {
        DecidedBy::SelfTraffic => "traffic to itself".to_string(),
        DecidedBy::Default => format!("no policy of any tier decides its {section}"),
        DecidedBy::Cluster(rule) => format!(
            "{} by ClusterNetworkPolicy {} ({} tier, priority {}) {section} rule {} ({}:{})",
            match rule.action() {
                crate::policy::model::Action::Deny => "denied",
                _ => "allowed",
            },
            rule.policy.name,
            rule.policy.tier,
            rule.policy.priority,
            rule.name(),
            rule.policy.origin.file.display(),
            rule.rule().line
        ),
        DecidedBy::NetworkPolicy(side) => match side {
            Side::NotIsolated => format!("no policy selects the workload for {section}"),
            Side::SelfTraffic => "traffic to itself".to_string(),
            Side::FromNode => "from the workload's node, which ingress always lets in".to_string(),
            Side::Allowed { policy, rule, .. } => format!(
                "allowed by {} {section} rule {} ({}:{})",
                policy.name,
                rule + 1,
                policy.origin.file.display(),
                policy.rules(direction)[*rule].line
            ),
            Side::Denied { isolated_by } => format!(
                "isolated by {}, and no {section} rule of theirs allows it",
                names(isolated_by)
            ),
        },
    };
    Outcome {
        change,
        workload: r.key.workload.clone(),
        direction,
        peer: r.peer.clone(),
        peer_address: r.key.peer_address,
        protocol: r.key.protocol,
        port: r.key.port,
        recorded: [r.allowed, r.would_drop, r.dropped],
        because,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::flow_records::RecordKey;

    /// The counts are whatever the records file says, up to u64::MAX each: a flow denied
    /// that often is still a denied flow, not an overflow.
    #[test]
    fn counts_at_the_largest_the_file_allows_are_read_without_overflow() {
        let record = FlowRecord {
            key: RecordKey {
                workload: "ml/a".into(),
                direction: Direction::Egress,
                protocol: IpProtocol::Tcp,
                port: Some(443),
                peer_address: [192, 0, 2, 7].into(),
            },
            stage: None,
            peer: "world".into(),
            name: None,
            allowed: 0,
            would_drop: u64::MAX,
            dropped: u64::MAX,
            first_seen: 0,
            last_seen: 0,
        };
        let records = RecordsFile {
            version: 1,
            agent_mode: Mode::Audit,
            evicted: 0,
            covered: Vec::new(),
            records: vec![record],
        };
        let mut candidate = PolicySet::default();
        crate::policy::parse::parse_into(
            std::path::Path::new("candidate.yaml"),
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: ml}\nspec: {cgroup: /a, addresses: [10.0.0.1]}\n",
            &mut candidate,
        )
        .unwrap();
        let simulated = simulate(&records, &candidate, Mode::Enforce);
        let changes: Vec<Change> = simulated
            .stages
            .iter()
            .flat_map(|s| &s.changes)
            .map(|c| c.change)
            .collect();
        assert_eq!(changes, [Change::NewlyAllowed], "{}", simulated.text());
    }

    /// The candidate's tiers decide: an Admin Deny closes what went through, a Pass hands
    /// the flow to the NetworkPolicies, and the outcome names the rule.
    #[test]
    fn a_candidate_cluster_network_policy_is_simulated_by_its_tiers() {
        let record = |port: u16| FlowRecord {
            key: RecordKey {
                workload: "ml/a".into(),
                direction: Direction::Egress,
                protocol: IpProtocol::Tcp,
                port: Some(port),
                peer_address: [169, 254, 169, 254].into(),
            },
            stage: None,
            peer: "world".into(),
            name: None,
            allowed: 3,
            would_drop: 0,
            dropped: 0,
            first_seen: 0,
            last_seen: 0,
        };
        let records = RecordsFile {
            version: 1,
            agent_mode: Mode::Enforce,
            evicted: 0,
            covered: Vec::new(),
            records: vec![record(80), record(8080)],
        };
        let mut candidate = PolicySet::default();
        crate::policy::parse::parse_into(
            std::path::Path::new("candidate.yaml"),
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: ml}\nspec: {cgroup: /a, addresses: [10.0.0.1]}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: metadata}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  egress:\n  - {name: proxy, action: Pass, to: [{networks: [169.254.169.254/32]}], protocols: [{tcp: {destinationPort: {number: 8080}}}]}\n  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}\n",
            &mut candidate,
        )
        .unwrap();
        let simulated = simulate(&records, &candidate, Mode::Enforce);
        let changes: Vec<(Change, Option<u16>, &str)> = simulated
            .stages
            .iter()
            .flat_map(|s| &s.changes)
            .map(|c| (c.change, c.port, c.because.as_str()))
            .collect();
        assert_eq!(
            changes,
            [(
                Change::NewlyDenied,
                Some(80),
                "denied by ClusterNetworkPolicy metadata (Admin tier, priority 5) egress rule \"no-metadata\" (candidate.yaml:15)"
            )],
            "{}",
            simulated.text()
        );

        // The same policy in audit mode changes no verdict: the flow would drop.
        let mut audited = candidate.clone();
        audited.cluster_policies[0].mode = Some(Mode::Audit);
        let simulated = simulate(&records, &audited, Mode::Enforce);
        let changes: Vec<(Change, Option<u16>)> = simulated
            .stages
            .iter()
            .flat_map(|s| &s.changes)
            .map(|c| (c.change, c.port))
            .collect();
        assert_eq!(
            changes,
            [(Change::WouldDrop, Some(80))],
            "{}",
            simulated.text()
        );
    }
}
