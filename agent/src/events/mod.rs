//! Verdict events: drained from the kernel's ring buffer (reader), named after the policy
//! in force (this module; the closed fields' enums are in fields), and fanned out by the
//! agent to the metrics, a JSON-lines log on stdout or a rotating file (sink) and the
//! HTTP event stream (hub); `stagewall events` reads that stream (cli::events) and
//! filters it (filter).

pub mod fields;
pub mod filter;
pub mod hub;
pub mod reader;
pub mod sink;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use stagewall_common::{Event, FAMILY_V4, FAMILY_V6, GUARD_ENDPOINT_ID};

pub use self::fields::{Hook, IpProtocol, Reason, Verdict};
use crate::{
    compiler::{Compiled, TierRule},
    policy::model::Direction,
};

/// One verdict event as users see it: a JSON line, an HTTP stream item, a table row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictEvent {
    pub time: String,
    /// The node (host) whose agent saw it.
    pub node: String,
    pub verdict: Verdict,
    pub reason: Reason,
    /// Seen from the local workload.
    pub direction: Direction,
    pub protocol: IpProtocol,
    /// Absent for a denied connect or send (no source chosen yet) and unparseable packets.
    pub src: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u16>,
    /// The local workload's namespace, name (namespace/name) and `stage` label.
    pub namespace: String,
    pub workload: String,
    pub stage: Option<String>,
    /// The other side: a workload, the CIDR of a policy it fell in, or "world".
    pub peer: String,
    /// The policies that isolate the workload in this direction.
    pub policies: Vec<String>,
    pub hook: Hook,
    /// Earlier events of this flow the kernel's rate limit folded into this one.
    pub suppressed: u32,
    /// The Service (namespace/name) the call was made to: `dst` is the backend the
    /// kernel chose for it, the pod the policy judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The ClusterNetworkPolicy rule that decided (a denial of reason `admin-deny` or
    /// `baseline-deny`, or an allowed flow's record); absent when none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<DecidingRule>,
    /// The name the workload's DNS answers gave `dst` for, as the agent's DNS proxy
    /// learnt it (egress by name); absent when no answer it saw named the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
}

/// A ClusterNetworkPolicy rule as events name it: its tier, policy, name (`#N` from 1 for
/// a rule without one) and action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecidingRule {
    pub tier: String,
    pub policy: String,
    pub name: String,
    pub action: String,
}

impl DecidingRule {
    fn of(rule: &TierRule) -> DecidingRule {
        DecidingRule {
            tier: rule.tier.name().to_string(),
            policy: rule.policy.clone(),
            name: rule.name.clone(),
            action: rule.action.name().to_string(),
        }
    }
}

impl VerdictEvent {
    pub fn is_violation(&self) -> bool {
        self.verdict.is_violation()
    }

    /// (source, destination, port) labels of ml_network_violations_total: names, never
    /// raw outside addresses, so the label set stays bounded; `port` names the port
    /// (the metrics bound it to the ports the policy names).
    pub fn metric_labels(
        &self,
        port: impl FnOnce(IpProtocol, Option<u16>) -> String,
    ) -> [String; 3] {
        let (source, destination) = match self.direction {
            Direction::Ingress => (self.peer.clone(), self.workload.clone()),
            Direction::Egress => (self.workload.clone(), self.peer.clone()),
        };
        [source, destination, port(self.protocol, self.dst_port)]
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

/// Converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall-clock time.
fn wall_time(monotonic_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    SystemTime::now() - Duration::from_nanos(now_mono.saturating_sub(monotonic_ns))
}

/// How events and metrics name a process below a guard cgroup in no workload.
pub const UNPROGRAMMED: &str = "unprogrammed";

/// Names a kernel event with the policy in force.
pub fn describe(event: &Event, compiled: &Compiled, node: &str) -> VerdictEvent {
    let local = addr(event.family, event.local_addr);
    let remote = addr(event.family, event.remote_addr);
    let direction = fields::direction_from_kernel(event.direction);
    let endpoint = compiled.endpoint_by_id(event.endpoint_id);
    let (namespace, workload) = match endpoint {
        Some(e) => (e.workload.namespace.clone(), e.workload.to_string()),
        None if event.endpoint_id == GUARD_ENDPOINT_ID => (String::new(), UNPROGRAMMED.into()),
        None => (String::new(), format!("endpoint-{}", event.endpoint_id)),
    };
    let policies = endpoint
        .map(|e| match direction {
            Direction::Ingress => &e.ingress_isolated_by,
            Direction::Egress => &e.egress_isolated_by,
        })
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let protocol = IpProtocol::from_number(event.protocol);
    let ports = protocol.has_ports();
    let port = |p: u16| (ports && p != 0).then_some(p);
    let hook = Hook::from_kernel(event.hook);
    let local_known = !hook.before_source_chosen();
    let (src, src_port, dst, dst_port) = match direction {
        Direction::Ingress => (
            remote,
            port(event.remote_port),
            local,
            port(event.local_port),
        ),
        Direction::Egress => (
            local.filter(|_| local_known),
            port(event.local_port),
            remote,
            port(event.remote_port),
        ),
    };
    VerdictEvent {
        time: humantime::format_rfc3339_millis(wall_time(event.time_ns)).to_string(),
        node: node.to_string(),
        verdict: Verdict::from_kernel(event.verdict),
        reason: Reason::from_kernel(event.reason),
        direction,
        // No address family: the packet was not parsed.
        protocol: if event.family == 0 {
            IpProtocol::Unknown
        } else {
            protocol
        },
        src,
        src_port,
        dst,
        dst_port,
        namespace,
        workload,
        stage: endpoint.and_then(|e| e.stage.clone()),
        peer: remote.map_or_else(|| "unknown".into(), |r| compiled.identities.peer_name(r)),
        policies,
        hook,
        suppressed: event.suppressed,
        service: compiled.services.name(event.service).map(|s| s.to_string()),
        rule: compiled
            .tier_rule(event.generation, event.rule)
            .map(DecidingRule::of),
        dst_name: None,
    }
}

/// The node name events carry: the host name, unless given.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use stagewall_common::{
        DIR_EGRESS, FAMILY_V4, HOOK_CONNECT, PROTO_TCP, REASON_NO_RULE, VERDICT_WOULD_DROP,
    };

    use super::*;

    /// The JSON the event log, the HTTP stream and `stagewall events` carry: the same
    /// strings as when the fields were strings.
    #[test]
    fn an_event_says_its_fields_by_name() {
        let mut event = Event {
            endpoint_id: 7,
            verdict: VERDICT_WOULD_DROP,
            reason: REASON_NO_RULE,
            direction: DIR_EGRESS,
            hook: HOOK_CONNECT,
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            local_port: 40_000,
            remote_port: 443,
            ..Default::default()
        };
        event.remote_addr[..4].copy_from_slice(&[192, 0, 2, 1]);
        let e = describe(&event, &Compiled::default(), "node-1");
        let json: serde_json::Value = serde_json::to_value(&e).unwrap();
        for (field, value) in [
            ("verdict", "would-drop"),
            ("reason", "no-rule"),
            ("direction", "egress"),
            ("protocol", "tcp"),
            ("hook", "connect"),
            ("workload", "endpoint-7"),
        ] {
            assert_eq!(json[field], value, "{json}");
        }
        assert!(json["src"].is_null(), "a connect has no source yet: {json}");
        assert_eq!(json["dst_port"], 443);
        assert_eq!(serde_json::from_value::<VerdictEvent>(json).unwrap(), e);
        assert!(e.is_violation());
        let port = |protocol: IpProtocol, port: Option<u16>| format!("{protocol}/{port:?}");
        assert_eq!(e.metric_labels(port)[2], "tcp/Some(443)");

        event.family = 0;
        let e = describe(&event, &Compiled::default(), "node-1");
        assert_eq!(serde_json::to_value(&e).unwrap()["protocol"], "unknown");
        assert_eq!(e.metric_labels(port)[2], "unknown/Some(443)");
    }

    /// A denial of the Admin tier names the rule (its POLICY value's reference); a
    /// reference this compile does not know names none.
    #[test]
    fn a_tier_denial_names_its_rule() {
        use stagewall_common::REASON_ADMIN_DENY;

        use crate::policy::model::{Action, Tier};

        let mut compiled = Compiled::default();
        compiled.generation = 7;
        for (name, action) in [("allow-dns", Action::Accept), ("#2", Action::Deny)] {
            compiled.tier_rules.push(TierRule {
                policy: "tenant-isolation".into(),
                tier: Tier::Admin,
                direction: Direction::Egress,
                index: compiled.tier_rules.len(),
                name: name.into(),
                action,
            });
        }
        let event = Event {
            verdict: stagewall_common::VERDICT_DROPPED,
            reason: REASON_ADMIN_DENY,
            direction: DIR_EGRESS,
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            rule: 2,
            generation: 7,
            ..Default::default()
        };
        let e = describe(&event, &compiled, "node-1");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["reason"], "admin-deny", "{json}");
        assert_eq!(
            json["rule"],
            serde_json::json!({"tier": "Admin", "policy": "tenant-isolation", "name": "#2", "action": "Deny"}),
            "{json}"
        );
        assert_eq!(serde_json::from_value::<VerdictEvent>(json).unwrap(), e);
        let unknown = [
            Event { rule: 0, ..event },
            Event { rule: 3, ..event },
            // Decided under the policy before: its references are not this one's.
            Event {
                generation: 6,
                ..event
            },
        ];
        for e in unknown {
            let e = describe(&e, &compiled, "node-1");
            assert_eq!(e.rule, None);
            assert!(serde_json::to_value(&e).unwrap().get("rule").is_none());
        }
    }
}
