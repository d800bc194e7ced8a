//! `stagewall get`: what the kernel holds now, decoded and named, for troubleshooting
//! (as `cilium bpf policy get`). The agent reads its pinned maps (datapath::inspect) and
//! names what they hold by the policy in force (agent/inspect.rs); these are the answers,
//! which the client prints as text, JSON or YAML.
//!
//! Why through the control socket rather than reading bpffs in the client: the kernel
//! holds numbers only (cgroup ids, endpoint ids, identities, policy ids); the names that
//! make them useful (workloads, NetworkPolicies, ClusterNetworkPolicy rules, identity
//! selectors) live in the running agent. The numbers stay in every answer, so what is
//! printed can be matched against bpftool's view of the same maps.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    datapath::inspect::EndpointTarget,
    events::fields::IpProtocol,
    policy::model::{Direction, ObjectName},
};

/// What `get` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetRequest {
    Endpoints,
    Identities,
    Policy(ObjectName),
    Flows(ObjectName),
}

/// One ENDPOINTS entry of the slot in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// The workload (namespace/name), "guard" for a guard cgroup, "unguarded" for the
    /// node's own cgroups below a guard, or "unknown" for an id no workload has.
    pub workload: String,
    pub target: EndpointTarget,
    pub endpoint_id: u32,
    /// POLICY ids per direction (0: not isolated), as the kernel holds them: in slot 1
    /// with the slot bit (1 << 31) set.
    pub ingress_policy: u32,
    pub egress_policy: u32,
    /// The EP_* flags set, by name.
    pub flags: Vec<String>,
}

/// An identity of the policy in force and the IPCACHE prefixes that map to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub identity: u32,
    /// What it stands for: workloads of a namespace with labels, the node, a CIDR, world.
    pub name: String,
    pub prefixes: Vec<String>,
}

/// The POLICY entries a workload's endpoint entry names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub workload: String,
    pub endpoint_id: u32,
    pub entries: Vec<PolicyEntryView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntryView {
    pub direction: Direction,
    /// Which program of the endpoint holds it: network-policy, admin, baseline (and
    /// shadow-admin, shadow-baseline for audited ClusterNetworkPolicies).
    pub program: String,
    pub policy_id: u32,
    /// The peer's identity (0: any peer) and what it stands for.
    pub identity: u32,
    pub peer: String,
    /// None: any protocol.
    pub protocol: Option<IpProtocol>,
    /// The first and last port of the entry's port block; None: any port.
    pub ports: Option<(u16, u16)>,
    /// accept, deny or pass.
    pub action: String,
    /// The ClusterNetworkPolicy rule (policy and rule name) a tier entry is for.
    pub rule: Option<String>,
}

/// An entry of the flow table (the per-flow verdict cache).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowView {
    pub workload: String,
    pub endpoint_id: u32,
    /// The direction the flow was opened in.
    pub direction: Option<Direction>,
    pub protocol: IpProtocol,
    pub local_port: u16,
    pub remote: String,
    pub remote_port: u16,
    /// The remote address's workload, CIDR or "world".
    pub peer: String,
    /// The fragments of one datagram rather than a flow.
    pub fragments: bool,
    /// Seconds since its last packet.
    pub idle_seconds: f64,
    /// The policy generation that allowed it, and whether that one is still in force
    /// (then later packets pass on this entry without a policy lookup).
    pub generation: u32,
    pub verdict_cached: bool,
}

fn target(t: &EndpointTarget) -> String {
    match t {
        EndpointTarget::Cgroup(id) => format!("cgroup {id}"),
        EndpointTarget::Interface(ifindex) => format!("ifindex {ifindex}"),
        EndpointTarget::Unknown(id) => format!("unknown {id}"),
    }
}

/// The text of `get endpoints`; wide adds the flags.
pub fn endpoints_text(endpoints: &[EndpointView], wide: bool) -> String {
    let mut out = format!(
        "{:<32} {:<20} {:>8} {:>10} {:>10}{}\n",
        "WORKLOAD",
        "TARGET",
        "ENDPOINT",
        "INGRESS",
        "EGRESS",
        if wide { "  FLAGS" } else { "" }
    );
    for e in endpoints {
        let flags = if wide {
            format!("  {}", e.flags.join(","))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<32} {:<20} {:>8} {:>10} {:>10}{flags}",
            e.workload,
            target(&e.target),
            e.endpoint_id,
            e.ingress_policy,
            e.egress_policy
        );
    }
    out
}

/// The text of `get identities`; wide lists every prefix, not only the count.
pub fn identities_text(identities: &[IdentityView], wide: bool) -> String {
    let mut out = format!("{:>10}  {:<48} PREFIXES\n", "IDENTITY", "STANDS FOR");
    for i in identities {
        let prefixes = if wide || i.prefixes.len() <= 3 {
            i.prefixes.join(", ")
        } else {
            format!(
                "{}, ... ({} in all)",
                i.prefixes[..3].join(", "),
                i.prefixes.len()
            )
        };
        let _ = writeln!(out, "{:>10}  {:<48} {prefixes}", i.identity, i.name);
    }
    out
}

fn ports(p: Option<(u16, u16)>) -> String {
    match p {
        None => "any".into(),
        Some((a, b)) if a == b => a.to_string(),
        Some((a, b)) => format!("{a}-{b}"),
    }
}

/// The text of `get policy`; wide adds the policy ids and identity numbers.
pub fn policy_text(view: &PolicyView, wide: bool) -> String {
    let mut out = format!(
        "{} (endpoint {}): {} entries\n{:<8} {:<16} {:<40} {:<6} {:<12} {:<7} RULE\n",
        view.workload,
        view.endpoint_id,
        view.entries.len(),
        "DIR",
        "PROGRAM",
        "PEER",
        "PROTO",
        "PORTS",
        "ACTION"
    );
    for e in &view.entries {
        let peer = if wide {
            format!("{} [{}]", e.peer, e.identity)
        } else {
            e.peer.clone()
        };
        let program = if wide {
            format!("{}#{}", e.program, e.policy_id)
        } else {
            e.program.clone()
        };
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:<40} {:<6} {:<12} {:<7} {}",
            e.direction.name(),
            program,
            peer,
            e.protocol.map_or("any".into(), |p| p.name().into_owned()),
            ports(e.ports),
            e.action,
            e.rule.as_deref().unwrap_or("-")
        );
    }
    out
}

/// The text of `get flows`; wide adds the generation and idle time.
pub fn flows_text(flows: &[FlowView], wide: bool) -> String {
    let mut out = format!(
        "{:<32} {:<8} {:<6} {:>6} {:<40} {:>6} {:<32} CACHED{}\n",
        "WORKLOAD",
        "DIR",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "PORT",
        "PEER",
        if wide { "  GENERATION  IDLE" } else { "" }
    );
    for f in flows {
        let extra = if wide {
            format!("  {:>10}  {:.1}s", f.generation, f.idle_seconds)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<32} {:<8} {:<6} {:>6} {:<40} {:>6} {:<32} {}{extra}",
            f.workload,
            f.direction.map_or("-", |d| d.name()),
            f.protocol.name(),
            f.local_port,
            f.remote,
            f.remote_port,
            f.peer,
            if f.verdict_cached { "yes" } else { "no" }
        );
    }
    out
}
