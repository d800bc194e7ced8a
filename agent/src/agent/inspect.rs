//! What the running agent answers `stagewall status` and `stagewall get` with: its own
//! state (mode, the last apply, quarantines, the kernel's counters) and what the kernel
//! maps hold now (datapath::inspect), named by the policy in force. Answers are JSON,
//! one line, for the control socket.

use std::collections::BTreeMap;

use stagewall_common::{
    ACTION_ACCEPT, ACTION_DENY, ACTION_PASS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_BACKSTOP,
    EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, EP_FAIL_OPEN, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EP_NAME_RULES, EP_QUARANTINED, EP_SHADOW_EGRESS, EP_SHADOW_INGRESS,
    EP_SNI_CHECK, EP_TIERS_AUDIT_EGRESS, EP_TIERS_AUDIT_INGRESS, EndpointInfo, FLOWS_MAX,
    GUARD_ENDPOINT_ID, IDENTITY_ANY, IDENTITY_ANY_V4, IDENTITY_ANY_V6, IDENTITY_WORLD_V4,
    IDENTITY_WORLD_V6, MAP_LAYOUT_VERSION, is_name_identity, policy_value_action,
    policy_value_rule,
};

use super::{Agent, Answer};
use crate::{
    build_info::BuildInfo,
    compiler::{Compiled, IdentityKind, map_keys},
    control::{
        inventory::{
            EndpointView, FlowView, GetRequest, IdentityView, PolicyEntryView, PolicyView,
        },
        status::{EventCounts, MapPressure, PolicyStatus, Status, WorkloadCounts},
    },
    datapath::{
        inspect::{self, ActiveSlot, EndpointTarget},
        pins::Pins,
        stats::Counter,
    },
    dns::proxy::monotonic_ns,
    events::fields::IpProtocol,
    policy::model::{Direction, ObjectName},
};

/// The EP_* flags by name, as `get endpoints` prints them.
const FLAG_NAMES: [(u32, &str); 15] = [
    (EP_ISOLATED_INGRESS, "isolated-ingress"),
    (EP_ISOLATED_EGRESS, "isolated-egress"),
    (EP_DEFAULT_DENY_INGRESS, "default-deny-ingress"),
    (EP_DEFAULT_DENY_EGRESS, "default-deny-egress"),
    (EP_QUARANTINED, "quarantined"),
    (EP_FAIL_OPEN, "fail-open"),
    (EP_AUDIT_INGRESS, "audit-ingress"),
    (EP_AUDIT_EGRESS, "audit-egress"),
    (EP_BACKSTOP, "backstop"),
    (EP_TIERS_AUDIT_INGRESS, "tiers-audit-ingress"),
    (EP_TIERS_AUDIT_EGRESS, "tiers-audit-egress"),
    (EP_SHADOW_INGRESS, "shadow-ingress"),
    (EP_SHADOW_EGRESS, "shadow-egress"),
    (EP_NAME_RULES, "name-rules"),
    (EP_SNI_CHECK, "sni-check"),
];

fn json(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

impl Agent {
    fn pins(&self) -> Pins {
        Pins::new(&self.options.bpffs_dir)
    }

    /// `status`: the agent's mode, policy, workloads, map pressure, events, kernel
    /// features, pins and build.
    /// The flow table's pressure is counted off the agent's loop (`Answer::Later`):
    /// counting walks the whole table, a syscall per entry.
    pub(super) fn status(&self) -> Answer {
        let compiled = self.policy.borrow().clone();
        let audited_workloads = compiled
            .endpoints
            .iter()
            .filter(|e| e.flags & (EP_AUDIT_INGRESS | EP_AUDIT_EGRESS) != 0)
            .map(|e| e.workload.to_string())
            .collect();
        let maps: Vec<MapPressure> = compiled
            .map_usage()
            .into_iter()
            .map(|(map, entries, capacity)| MapPressure {
                map: map.to_string(),
                entries,
                capacity,
            })
            .collect();
        let stats = self.loader.stats();
        let status = Status {
            mode: self.options.mode,
            audited_workloads,
            policy: PolicyStatus {
                generation: self.loader.generation(),
                applied_at: self
                    .applied
                    .map(|a| humantime::format_rfc3339_seconds(a.at).to_string()),
            },
            workloads: WorkloadCounts {
                enforced: self.applied.map_or(0, |a| a.enforced),
                guarded: self.applied.map_or(0, |a| a.guarded),
                quarantined: self.quarantined.len(),
                quarantined_names: self.quarantined.iter().map(|w| w.to_string()).collect(),
            },
            maps,
            events: EventCounts {
                lost: stats.counter(Counter::EventsLost),
                suppressed: stats.counter(Counter::EventsSuppressed),
            },
            kernel: self.loader.features(),
            pin_layout_version: MAP_LAYOUT_VERSION,
            pins: self.options.bpffs_dir.display().to_string(),
            build: BuildInfo::current(),
        };
        let pins = self.pins();
        Answer::Later(Box::new(move || {
            let mut status = status;
            let flows = inspect::flow_count(&pins).map_err(|e| format!("{e:#}"))?;
            status.maps.push(MapPressure {
                map: "flows".to_string(),
                entries: flows,
                capacity: FLOWS_MAX,
            });
            json(&status)
        }))
    }

    /// `get`: what the kernel holds, decoded and named. The flows of a workload are read
    /// off the agent's loop (`Answer::Later`): reading them walks the whole flow table, a
    /// syscall per entry (a second or so at its capacity, during which the loop would
    /// apply no policy change).
    pub(super) fn get(&self, what: &GetRequest) -> Answer {
        let compiled = self.policy.borrow().clone();
        let pins = self.pins();
        let active = match inspect::active_slot(&pins) {
            Ok(active) => active,
            Err(e) => return Answer::Now(Err(format!("{e:#}"))),
        };
        match what {
            GetRequest::Endpoints => Answer::Now(json(&endpoints(&compiled, &active))),
            GetRequest::Identities => Answer::Now(json(&identities(&compiled, &active))),
            GetRequest::Policy(workload) => {
                Answer::Now(policy(&compiled, &active, workload).and_then(|p| json(&p)))
            }
            GetRequest::Flows(workload) => {
                let id = match endpoint_of(&compiled, &active, workload) {
                    Ok((id, _)) => id,
                    Err(e) => return Answer::Now(Err(e)),
                };
                let workload = workload.clone();
                Answer::Later(Box::new(move || {
                    flows_of(&pins, &compiled, &active, &workload, id)
                }))
            }
        }
    }
}

/// The flows of `workload` (endpoint `id`) in the flow table, named.
fn flows_of(
    pins: &Pins,
    compiled: &Compiled,
    active: &ActiveSlot,
    workload: &ObjectName,
    id: u32,
) -> Result<String, String> {
    let flows = inspect::flows(pins, Some(id)).map_err(|e| format!("{e:#}"))?;
    let now = monotonic_ns();
    let views: Vec<FlowView> = flows
        .into_iter()
        .map(|f| FlowView {
            workload: workload.to_string(),
            endpoint_id: f.endpoint_id,
            direction: f.origin,
            protocol: IpProtocol::from_number(f.protocol),
            local_port: f.local_port,
            remote: f.remote.to_string(),
            remote_port: f.remote_port,
            peer: compiled.identities.peer_name(f.remote),
            fragments: f.fragments,
            idle_seconds: now.saturating_sub(f.last_seen_ns) as f64 / 1e9,
            generation: f.generation,
            verdict_cached: f.generation == active.config.generation,
        })
        .collect();
    json(&views)
}

/// Whose an endpoint id is: a workload of the policy in force, a guard, or the node's
/// own cgroups below a guard.
fn endpoint_name(compiled: &Compiled, endpoint_id: u32) -> String {
    if endpoint_id == GUARD_ENDPOINT_ID {
        return "guard".to_string();
    }
    if endpoint_id == stagewall_common::UNGUARDED_ENDPOINT_ID {
        return "unguarded".to_string();
    }
    compiled
        .endpoints
        .iter()
        .find(|e| e.endpoint_id == endpoint_id)
        .map_or_else(|| "unknown".to_string(), |e| e.workload.to_string())
}

fn endpoints(compiled: &Compiled, active: &ActiveSlot) -> Vec<EndpointView> {
    let mut views: Vec<EndpointView> = active
        .endpoints
        .iter()
        .map(|(target, info)| EndpointView {
            workload: endpoint_name(compiled, info.endpoint_id),
            target: *target,
            endpoint_id: info.endpoint_id,
            ingress_policy: info.ingress_policy,
            egress_policy: info.egress_policy,
            flags: FLAG_NAMES
                .iter()
                .filter(|(flag, _)| info.flags & flag != 0)
                .map(|(_, name)| name.to_string())
                .collect(),
        })
        .collect();
    views.sort_by(|a, b| (&a.workload, a.endpoint_id).cmp(&(&b.workload, b.endpoint_id)));
    views
}

/// What an identity stands for, as `get` names peers.
fn identity_name(compiled: &Compiled, identity: u32) -> String {
    match identity {
        IDENTITY_ANY => return "any".to_string(),
        IDENTITY_ANY_V4 => return "any IPv4".to_string(),
        IDENTITY_ANY_V6 => return "any IPv6".to_string(),
        _ => {}
    }
    if is_name_identity(identity) {
        return compiled
            .names
            .pattern_of(identity)
            .map_or_else(|| "a domain name".to_string(), |p| format!("name {p}"));
    }
    match compiled.identities.kinds.get(&identity) {
        Some(IdentityKind::Workloads {
            namespace, labels, ..
        }) => {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("workloads in {namespace} {{{}}}", labels.join(","))
        }
        Some(IdentityKind::Node { .. }) => "node".to_string(),
        Some(IdentityKind::Cidr(prefix)) => prefix.to_string(),
        Some(IdentityKind::WorldV4) => "world (IPv4)".to_string(),
        Some(IdentityKind::WorldV6) => "world (IPv6)".to_string(),
        None if identity == IDENTITY_WORLD_V4 => "world (IPv4)".to_string(),
        None if identity == IDENTITY_WORLD_V6 => "world (IPv6)".to_string(),
        None => "unknown".to_string(),
    }
}

/// Every identity of the policy in force, with the prefixes the kernel's IP cache maps
/// to it (an identity the kernel holds that the policy does not know is listed too).
fn identities(compiled: &Compiled, active: &ActiveSlot) -> Vec<IdentityView> {
    let mut prefixes: BTreeMap<u32, Vec<String>> = compiled
        .identities
        .kinds
        .keys()
        .map(|id| (*id, Vec::new()))
        .collect();
    for (prefix, identity) in &active.ipcache {
        prefixes
            .entry(*identity)
            .or_default()
            .push(prefix.to_string());
    }
    prefixes
        .into_iter()
        .map(|(identity, prefixes)| IdentityView {
            identity,
            name: identity_name(compiled, identity),
            prefixes,
        })
        .collect()
}

/// The endpoint id of `workload` and its entry in the slot in force (its cgroup's,
/// before a backstop interface's).
fn endpoint_of<'a>(
    compiled: &Compiled,
    active: &'a ActiveSlot,
    workload: &ObjectName,
) -> Result<(u32, &'a EndpointInfo), String> {
    let ep = compiled
        .endpoint(workload)
        .ok_or_else(|| format!("{workload} is not a workload of the policy in force"))?;
    active
        .endpoints
        .iter()
        .filter(|(_, info)| info.endpoint_id == ep.endpoint_id)
        .min_by_key(|(target, _)| !matches!(target, EndpointTarget::Cgroup(_)))
        .map(|(_, info)| (ep.endpoint_id, info))
        .ok_or_else(|| format!("{workload} has no endpoint in the kernel (not on this node?)"))
}

fn policy(
    compiled: &Compiled,
    active: &ActiveSlot,
    workload: &ObjectName,
) -> Result<PolicyView, String> {
    let (endpoint_id, info) = endpoint_of(compiled, active, workload)?;
    let programs = [
        ("network-policy", Direction::Ingress, info.ingress_policy),
        ("network-policy", Direction::Egress, info.egress_policy),
        ("admin", Direction::Ingress, info.admin_ingress),
        ("admin", Direction::Egress, info.admin_egress),
        ("baseline", Direction::Ingress, info.baseline_ingress),
        ("baseline", Direction::Egress, info.baseline_egress),
        (
            "shadow-admin",
            Direction::Ingress,
            info.shadow_admin_ingress,
        ),
        ("shadow-admin", Direction::Egress, info.shadow_admin_egress),
        (
            "shadow-baseline",
            Direction::Ingress,
            info.shadow_baseline_ingress,
        ),
        (
            "shadow-baseline",
            Direction::Egress,
            info.shadow_baseline_egress,
        ),
    ];
    let mut entries = Vec::new();
    for (program, direction, policy_id) in programs {
        // 0: no program; a shadow id equal to the tier's is the same entries again.
        if policy_id == 0
            || (program.starts_with("shadow")
                && entries.iter().any(|e: &PolicyEntryView| {
                    e.policy_id == policy_id && e.direction == direction
                }))
        {
            continue;
        }
        for (entry, value) in &active.policy {
            // The endpoint names its programs as the slot in force sees them (with the
            // slot bit); decoded entries are without it.
            let in_slot = map_keys::slot_policy_id(entry.policy, active.config.active_slot);
            if in_slot != policy_id || entry.direction != direction {
                continue;
            }
            let rule = policy_value_rule(*value);
            entries.push(PolicyEntryView {
                direction,
                program: program.to_string(),
                policy_id,
                identity: entry.identity,
                peer: identity_name(compiled, entry.identity),
                protocol: entry.protocol.map(IpProtocol::from_number),
                ports: entry.ports.map(|p| p.range()),
                action: match policy_value_action(*value) {
                    ACTION_ACCEPT => "accept",
                    ACTION_DENY => "deny",
                    ACTION_PASS => "pass",
                    _ => "unknown",
                }
                .to_string(),
                rule: (rule > 0)
                    .then(|| compiled.tier_rules.get(rule as usize - 1))
                    .flatten()
                    .map(|r| format!("{} {}", r.policy, r.name)),
            });
        }
    }
    Ok(PolicyView {
        workload: workload.to_string(),
        endpoint_id,
        entries,
    })
}
