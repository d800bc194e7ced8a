//! Every type that crosses the kernel/user boundary, and the names and sizes of the maps
//! (the map table, `MAPS`, lists them all).
//!
//! Rules for these types (see the aya template): `#[repr(C)]`, no implicit padding (explicit
//! `_pad` fields, always zero), integers instead of `bool` or enums, and a size assertion next
//! to every map key so both sides agree by construction.
#![no_std]

use core::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Map names and capacities (the map table, `MAPS`, is below the types).

/// The layout of the maps the agent pins (their kinds, capacities, and the types they
/// hold). Pins live in a directory named after it, so a build with another layout never
/// reads maps it would misread: it migrates instead. Bump it with any change to a map
/// definition or to a type a map holds (a test in the agent lists the layout it stands
/// for and fails until both are updated).
pub const MAP_LAYOUT_VERSION: u32 = 6;

pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_IPCACHE: &str = "IPCACHE";
pub const MAP_POLICY: &str = "POLICY";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_SELF_ADDRS: &str = "SELF_ADDRS";
pub const MAP_EVENT_LIMITS: &str = "EVENT_LIMITS";
pub const MAP_ENDPOINT_STATS: &str = "ENDPOINT_STATS";
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_SERVICE_NAT: &str = "SERVICE_NAT";
pub const MAP_FLOW_BUDGETS: &str = "FLOW_BUDGETS";
pub const MAP_DNS_PROXY: &str = "DNS_PROXY";
pub const MAP_DNS_RESOLVERS: &str = "DNS_RESOLVERS";
pub const MAP_DNS_CLIENTS: &str = "DNS_CLIENTS";
pub const MAP_DNS_LEARNT: &str = "DNS_LEARNT";

/// Endpoints of both policy slots together: 4096 local workloads per node.
pub const ENDPOINTS_MAX: u32 = 8_192;
/// Own addresses of endpoints, both slots.
pub const SELF_ADDRS_MAX: u32 = 65_536;
/// Prefixes (workload addresses and CIDRs) of both policy slots together.
pub const IPCACHE_MAX: u32 = 262_144;
/// Policy entries of both policy slots together.
pub const POLICY_MAX: u32 = 524_288;
/// Service backends (one entry per frontend and backend) of both policy slots together.
pub const SERVICES_MAX: u32 = 262_144;
/// The most backends one Service frontend (address, protocol, port) has in the kernel.
pub const SERVICE_BACKENDS_MAX: u32 = 4_096;
/// Sockets' translated Service addresses, for the replies; least recently used first out.
pub const SERVICE_NAT_MAX: u32 = 131_072;
/// Tracked flows; least recently used ones are evicted first.
pub const FLOWS_MAX: u32 = 262_144;
/// Resolvers whose DNS traffic goes through the agent's DNS proxy (address, protocol, port).
pub const DNS_RESOLVERS_MAX: u32 = 64;
/// Sockets of workloads that sent DNS to the proxy, so the proxy knows whose query it
/// holds; least recently used first out.
pub const DNS_CLIENTS_MAX: u32 = 65_536;
/// Addresses learnt from DNS answers, per workload, for every node's workloads together.
/// The agent bounds them lower (per workload and per node, `--dns-learnt-max`) and evicts
/// itself; this is the kernel's hard limit.
pub const DNS_LEARNT_MAX: u32 = 262_144;
/// Ring buffer for verdict events, in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 22;

/// Deepest cgroup level the kernel programs walk up to find a workload's cgroup, for
/// processes that sit in a child cgroup of the workload (a systemd slice, say).
pub const MAX_CGROUP_DEPTH: i32 = 16;

// ---------------------------------------------------------------------------------------------
// Global configuration: one entry of an array map.

pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;

/// `CONFIG[0]`. The agent fills both policy slots' maps for the inactive slot, then flips
/// `active_slot` with one write: a packet reads the slot once and sees one whole policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 0 or 1: which slot of ENDPOINTS and IPCACHE (and which policy ids) is in force.
    pub active_slot: u32,
    /// MODE_ENFORCE, or MODE_AUDIT for every workload (the agent's `--mode audit`); single
    /// workloads are audited by their EP_AUDIT_* flags.
    pub mode: u32,
    /// Counts applied policies; events carry it so user space can name the policy in force.
    pub generation: u32,
    /// 1: also report allowed flows (VERDICT_ALLOWED events, at most one per flow and
    /// rate-limit window), for flow logs.
    pub log_allowed: u32,
}
const _: () = assert!(size_of::<Config>() == 16);

// ---------------------------------------------------------------------------------------------
// Endpoints: which local workload a packet belongs to.

/// The workload is a cgroup: `id` is the cgroup id (its inode number in cgroup2).
pub const ENDPOINT_KIND_CGROUP: u32 = 1;
/// The workload is a network interface (host side of a veth): `id` is its ifindex.
pub const ENDPOINT_KIND_IFINDEX: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub slot: u32,
    pub kind: u32,
    pub id: u64,
}
const _: () = assert!(size_of::<EndpointKey>() == 16);

/// Some policy selects the endpoint for ingress: what no rule allows is denied.
pub const EP_ISOLATED_INGRESS: u32 = 1 << 0;
/// Some policy selects the endpoint for egress.
pub const EP_ISOLATED_EGRESS: u32 = 1 << 1;
/// Isolated for ingress by policies without a single ingress rule: everything is denied.
pub const EP_DEFAULT_DENY_INGRESS: u32 = 1 << 2;
/// Isolated for egress by policies without a single egress rule.
pub const EP_DEFAULT_DENY_EGRESS: u32 = 1 << 3;

/// Quarantined (assume breach): every packet in and out is dropped, whatever the policy
/// and the mode, its traffic to itself (over loopback) too.
pub const EP_QUARANTINED: u32 = 1 << 4;
/// The workload's fail mode is open: a packet the programs cannot decide (headers that
/// cannot be parsed) passes, counted and reported, instead of being dropped.
pub const EP_FAIL_OPEN: u32 = 1 << 5;
/// The workload's ingress is in audit mode for its NetworkPolicies (a namespace or policy
/// annotation): what they deny is reported as would-drop and passes, whatever
/// `Config::mode` says. ClusterNetworkPolicy denials are not: a namespace owner's policy
/// never weakens a guardrail (EP_TIERS_AUDIT_*).
pub const EP_AUDIT_INGRESS: u32 = 1 << 6;
/// The workload's egress is in audit mode for its NetworkPolicies.
pub const EP_AUDIT_EGRESS: u32 = 1 << 7;
/// The workload's ingress is in audit mode for the ClusterNetworkPolicy tiers too (its
/// namespace's annotation, which only those who may change the Namespace set).
pub const EP_TIERS_AUDIT_INGRESS: u32 = 1 << 9;
pub const EP_TIERS_AUDIT_EGRESS: u32 = 1 << 10;
/// ClusterNetworkPolicies in audit mode (their own annotation) hold the workload for
/// ingress: its `shadow` tier programs, which include them, are read after an allowed
/// verdict, and what they would deny is reported as would-drop. The enforced programs
/// (`admin_*`, `baseline_*`) leave them out, so an audited policy changes no verdict.
pub const EP_SHADOW_INGRESS: u32 = 1 << 11;
pub const EP_SHADOW_EGRESS: u32 = 1 << 12;
/// The workload's egress has rules that name domains (a Pipeline flow's `fqdn`, a
/// ClusterNetworkPolicy's `domainNames`): its DNS to the resolvers in DNS_RESOLVERS goes
/// through the agent's proxy (while it is alive), and a new flow no address rule allows
/// reads DNS_LEARNT for the name identities the destination was learnt for.
pub const EP_NAME_RULES: u32 = 1 << 13;
/// The workload's TCP flows to port 443 that only a name identity allowed must name, in
/// their first payload (a TLS ClientHello's server name), a host whose identity the
/// destination was learnt for (the agent's `--dns-sni-check`, on EP_NAME_RULES
/// endpoints): a CDN address shared by an allowed name and another does not let the
/// other through. See ebpf/stagewall-ebpf/src/sni.rs.
pub const EP_SNI_CHECK: u32 = 1 << 14;
/// The TLS port the SNI check (EP_SNI_CHECK) applies to.
pub const SNI_CHECK_PORT: u16 = 443;

/// The interface entry of a workload enforced by cgroup: TC on the host side of its veth
/// is a backstop for what raw sockets (AF_PACKET, AF_XDP) send and receive past the cgroup
/// hooks. It decides every packet as the cgroup hooks would, but counts and reports only
/// what it denies (the cgroup hooks count the rest), and in audit mode reports nothing
/// (what sockets send is reported there).
pub const EP_BACKSTOP: u32 = 1 << 8;

/// The EP_ISOLATED_* flag of a direction (DIR_*).
pub const fn isolation_flag(direction: u8) -> u32 {
    if direction == DIR_INGRESS {
        EP_ISOLATED_INGRESS
    } else {
        EP_ISOLATED_EGRESS
    }
}

/// The EP_AUDIT_* flag of a direction (DIR_*).
pub const fn audit_flag(direction: u8) -> u32 {
    if direction == DIR_INGRESS {
        EP_AUDIT_INGRESS
    } else {
        EP_AUDIT_EGRESS
    }
}

/// The EP_TIERS_AUDIT_* flag of a direction (DIR_*).
pub const fn tiers_audit_flag(direction: u8) -> u32 {
    if direction == DIR_INGRESS {
        EP_TIERS_AUDIT_INGRESS
    } else {
        EP_TIERS_AUDIT_EGRESS
    }
}

/// The EP_SHADOW_* flag of a direction (DIR_*).
pub const fn shadow_flag(direction: u8) -> u32 {
    if direction == DIR_INGRESS {
        EP_SHADOW_INGRESS
    } else {
        EP_SHADOW_EGRESS
    }
}

/// The endpoint id of guard cgroups (`--guard-cgroup`): cgroups below a guard that are in
/// no workload are denied as this endpoint. Workloads' ids start at 1.
pub const GUARD_ENDPOINT_ID: u32 = 0;

/// Endpoint ids are below this; per-endpoint statistics are indexed by them. A workload
/// keeps its id across policy changes and a new one takes an id neither the old nor the
/// new policy uses, so two slots' worth of ids is always enough.
pub const ENDPOINT_ID_LIMIT: u32 = ENDPOINTS_MAX;

/// The endpoint id of cgroups below a guard that it must not deny: the node's own
/// (host-network pods, the agent) and those of pods enforced by TC on their interface.
/// The kernel programs treat such a cgroup as no endpoint (nothing decided, tracked or
/// counted); its entry is also isolated in neither direction, and beyond the workloads'
/// ids (no statistics).
pub const UNGUARDED_ENDPOINT_ID: u32 = ENDPOINT_ID_LIMIT;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Stable number of the workload; names it in events and keys its flows.
    pub endpoint_id: u32,
    /// Policy id for traffic into the workload (0 when not isolated).
    pub ingress_policy: u32,
    /// Policy id for traffic out of the workload (0 when not isolated).
    pub egress_policy: u32,
    /// EP_* flags.
    pub flags: u32,
    /// Tier program ids (POLICY ids whose entries carry an action, see `policy_value`) of
    /// the ClusterNetworkPolicies whose subject holds the workload, per tier and
    /// direction; 0 when no such policy has a rule for the direction.
    pub admin_ingress: u32,
    pub admin_egress: u32,
    pub baseline_ingress: u32,
    pub baseline_egress: u32,
    /// The tier programs with the audited ClusterNetworkPolicies in them too, read only
    /// where EP_SHADOW_* says so (0: no such policy has a rule for the direction).
    pub shadow_admin_ingress: u32,
    pub shadow_admin_egress: u32,
    pub shadow_baseline_ingress: u32,
    pub shadow_baseline_egress: u32,
}
const _: () = assert!(size_of::<EndpointInfo>() == 48);

/// An address of the endpoint itself: connect() and sendmsg() to it never leave the
/// workload, and pass whatever the policy (the packet hooks see such traffic with equal
/// source and destination instead).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SelfAddrKey {
    pub slot: u32,
    pub endpoint_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SelfAddrKey>() == 28);

// ---------------------------------------------------------------------------------------------
// IP cache: remote address -> identity (LPM trie).

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Data of the IPCACHE LPM key. Matched bit by bit from the first byte: slot (8 bits),
/// family (8 bits), then the address (IPv4 in the first 4 bytes). So a prefix of length
/// `p` has LPM prefix length `16 + p`, and IPv4 and IPv6 never match each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    pub slot: u8,
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<IpcacheKey>() == 20);
/// Bits of IpcacheKey before the address.
pub const IPCACHE_PREFIX_BITS: u32 = 16;

/// Identity 0 stands for "any peer" in policy keys; it is never assigned to an address.
pub const IDENTITY_ANY: u32 = 0;
/// "Any IPv4 peer" and "any IPv6 peer" in tier programs' keys (never assigned to an
/// address): a ClusterNetworkPolicy rule for `0.0.0.0/0` matches every IPv4 identity and
/// no IPv6 one, so the any-peer fallback of a tier is looked up by the packet's family.
pub const IDENTITY_ANY_V4: u32 = 3;
pub const IDENTITY_ANY_V6: u32 = 4;

/// The any-peer identity of tier programs for a family (FAMILY_*).
pub const fn identity_any(family: u8) -> u32 {
    if family == FAMILY_V4 {
        IDENTITY_ANY_V4
    } else {
        IDENTITY_ANY_V6
    }
}
/// IPv4 addresses outside every known prefix.
pub const IDENTITY_WORLD_V4: u32 = 1;
/// IPv6 addresses outside every known prefix.
pub const IDENTITY_WORLD_V6: u32 = 2;
/// First identity the compiler hands out to workloads and CIDRs.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;

/// Identities of domain-name patterns (`pypi.org`, `*.pythonhosted.org`): the top bit set,
/// the rest a hash of the pattern's canonical text (lower case, no trailing dot), so the
/// same pattern has the same identity in every compile and across restarts (learnt
/// entries outlive both). The compiler refuses two patterns with one identity. They are
/// never in IPCACHE: a destination has one only through DNS_LEARNT, per workload.
pub const IDENTITY_NAME_FIRST: u32 = 1 << 31;

pub const fn is_name_identity(identity: u32) -> bool {
    identity >= IDENTITY_NAME_FIRST
}
/// Identities of this node's own addresses, one per set of ipBlocks they lie in (so that
/// ipBlock rules still name them), from here up to IDENTITY_FIRST_ALLOCATED. Ingress
/// always allows them: in Kubernetes a pod isolated for ingress still accepts connections
/// from its node (kubelet's probes).
pub const IDENTITY_NODE_FIRST: u32 = 16;

/// Whether `identity` is one of this node's addresses.
pub const fn is_node_identity(identity: u32) -> bool {
    identity >= IDENTITY_NODE_FIRST && identity < IDENTITY_FIRST_ALLOCATED
}

// ---------------------------------------------------------------------------------------------
// Policy: (policy id, identity, direction, protocol, port) -> action and rule (LPM trie).
// A policy id is a NetworkPolicy entry set (every value POLICY_ALLOW) or a tier program
// (ClusterNetworkPolicy rules, one value each; EndpointInfo names them per tier).

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Data of the POLICY LPM key, big-endian numbers so that bit order is numeric order.
/// Every entry matches `policy_be`, `identity_be` and `direction` exactly (72 bits); a rule
/// for every protocol stops there, a rule for one protocol adds 8 bits, and a port range
/// adds the leading bits its aligned blocks share (an `endPort` range becomes at most 30
/// prefixes, never one entry per port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy_be: u32,
    pub identity_be: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port_be: u16,
}
const _: () = assert!(size_of::<PolicyKey>() == 12);
pub const POLICY_PREFIX_FIXED_BITS: u32 = 72;
pub const POLICY_PREFIX_PROTO_BITS: u32 = 80;
pub const POLICY_PREFIX_FULL_BITS: u32 = 96;

/// What a POLICY entry does, in the top 8 bits of its value (`policy_value`).
/// NetworkPolicy entries always Accept; tier programs' entries (ClusterNetworkPolicy
/// rules) may also Deny, or Pass to the next tier.
pub const ACTION_ACCEPT: u32 = 1;
pub const ACTION_DENY: u32 = 2;
pub const ACTION_PASS: u32 = 3;
const POLICY_ACTION_SHIFT: u32 = 24;
/// The most rule references a value holds: the low 24 bits.
pub const POLICY_RULE_MAX: u32 = (1 << POLICY_ACTION_SHIFT) - 1;

/// A POLICY value: the action, and the rule that decided (an index into the agent's table
/// of ClusterNetworkPolicy rules, from 1; 0 for a NetworkPolicy entry), so that an event
/// can name the policy and the rule.
pub const fn policy_value(action: u32, rule: u32) -> u32 {
    action << POLICY_ACTION_SHIFT | rule & POLICY_RULE_MAX
}

/// The ACTION_* of a POLICY value.
pub const fn policy_value_action(value: u32) -> u32 {
    value >> POLICY_ACTION_SHIFT
}

/// The rule reference of a POLICY value (0: a NetworkPolicy entry).
pub const fn policy_value_rule(value: u32) -> u32 {
    value & POLICY_RULE_MAX
}

/// Value of every NetworkPolicy entry: Kubernetes rules only allow, so presence is the
/// verdict.
pub const POLICY_ALLOW: u32 = policy_value(ACTION_ACCEPT, 0);

/// Policy ids carry the slot in their top bit, so the two slots never share an entry.
pub const POLICY_SLOT_BIT: u32 = 1 << 31;

// ---------------------------------------------------------------------------------------------
// Services: a Service's virtual address and port -> its backends, translated at the socket
// (connect, sendmsg) so that every later hook and kube-proxy see the pod the call reaches.

/// A Service frontend's `backend`-th backend in slot `slot`. Entry 0 always exists for a
/// frontend with backends and tells how many there are; the others are looked up only
/// after a backend was drawn.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub slot: u8,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u8,
    /// The Service's port, host order.
    pub port: u16,
    pub backend: u16,
    /// The virtual address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ServiceKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceBackend {
    /// The backend pod's address, of the frontend's family.
    pub addr: [u8; 16],
    /// The backend's port, host order.
    pub port: u16,
    /// How many backends the frontend has (every entry of it says the same).
    pub backends: u16,
    /// The Service's number in the policy generation in force (events name it): 1 and up.
    pub service: u32,
}
const _: () = assert!(size_of::<ServiceBackend>() == 24);

/// A socket that a Service's address was translated for, and the backend it went to:
/// replies from the backend (recvmsg) and the socket's peer (getpeername) are translated
/// back, so the application sees the address it called.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceNatKey {
    /// bpf_get_socket_cookie.
    pub cookie: u64,
    pub family: u8,
    pub _pad: u8,
    /// The backend's port, host order.
    pub port: u16,
    pub _pad2: u32,
    /// The backend's address.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ServiceNatKey>() == 32);

/// What the socket called: the Service's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceNat {
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub _pad: u16,
    pub service: u32,
}
const _: () = assert!(size_of::<ServiceNat>() == 24);

// ---------------------------------------------------------------------------------------------
// Flows: what an endpoint allowed in one direction, so that replies pass the other way.

/// A flow an endpoint allowed, seen from that endpoint. `origin` is the direction the
/// first packet went (DIR_*); a packet in the other direction with the ports swapped is a
/// reply. ICMP echo uses the echo identifier as both ports.
///
/// `kind` FLOW_KIND_FRAGMENTS marks the fragments of one allowed datagram instead (no
/// ports; `fragment_id` is its IP identification): its later fragments carry no ports
/// and pass by this entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub endpoint_id: u32,
    pub family: u8,
    pub protocol: u8,
    pub origin: u8,
    pub kind: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub fragment_id: u32,
    pub remote_addr: [u8; 16],
}

/// FlowKey::kind of a flow.
pub const FLOW_KIND_FLOW: u8 = 0;
/// FlowKey::kind of an allowed datagram's fragments.
pub const FLOW_KIND_FRAGMENTS: u8 = 1;
/// Each workload's share of the flow table: at most this many new entries (flows, and
/// datagrams in fragments) per FLOW_BUDGET_WINDOW_NS, so that one workload — or spoofed
/// sources sent to it — cannot push everyone else's flows out of the shared LRU table.
/// Flows over it pass as their policy says, untracked (their replies are decided as new
/// traffic), and are counted (CNT_FLOW_INSERT_FAILED).
pub const FLOW_INSERTS_PER_WINDOW: u32 = 8_192;
pub const FLOW_BUDGET_WINDOW_NS: u64 = 1_000_000_000;

/// A workload's use of its flow-table share in the current window (FLOW_BUDGETS, by
/// endpoint id). Shared by all CPUs and updated without atomics: approximate, as a rate
/// limit may be.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBudget {
    pub window_start_ns: u64,
    pub inserts: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowBudget>() == 16);

/// The fragments of a datagram arrive within this (the kernel's own reassembly timeout).
pub const FRAGMENTS_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
const _: () = assert!(size_of::<FlowKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// bpf_ktime_get_ns of the last packet that refreshed the entry.
    pub last_seen_ns: u64,
    /// CONFIG.generation of the policy that allowed the flow: while it is in force, later
    /// packets of the flow are allowed from this entry (the per-flow verdict cache); after
    /// a policy change they are decided again.
    pub generation: u32,
    /// FLOW_F_*: what the SNI check (EP_SNI_CHECK) knows of the flow; 0 for any other.
    /// (Once padding, always zero: entries pinned before it read as no flags.)
    pub flags: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 16);

/// The flow was allowed only by a name identity, and its first payload has not been seen:
/// it must be a TLS ClientHello naming a host the destination was learnt for.
pub const FLOW_F_SNI_PENDING: u32 = 1 << 0;
/// A new flow the SNI check may apply to (EP_SNI_CHECK, TCP to port 443): whether a name
/// or the address allowed it is decided at its first packet, which makes it pending or
/// clears this.
pub const FLOW_F_SNI_NEW: u32 = 1 << 2;
/// The flow's ClientHello named no host the destination was learnt for (or was none):
/// every later packet of the flow is dropped, whatever the policy generation.
pub const FLOW_F_SNI_DENIED: u32 = 1 << 1;

/// A flow without traffic for this long no longer lets replies in.
pub const FLOW_TIMEOUT_TCP_NS: u64 = 3_600 * 1_000_000_000;
pub const FLOW_TIMEOUT_OTHER_NS: u64 = 120 * 1_000_000_000;
/// Refresh `last_seen_ns` at most this often per flow, to keep writes off most packets.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// Events: one per denied packet (and per allowed flow when flow logging is on), through
// the EVENTS ring buffer, rate-limited per flow.

pub const VERDICT_ALLOWED: u8 = 0;
pub const VERDICT_DROPPED: u8 = 1;
pub const VERDICT_WOULD_DROP: u8 = 2;

/// Allowed by a rule (flow logging).
pub const REASON_ALLOWED: u8 = 0;
/// The workload is isolated by policies with no rule at all for this direction.
pub const REASON_DEFAULT_DENY: u8 = 1;
/// The workload's policies have rules for this direction, but none allows the packet.
pub const REASON_NO_RULE: u8 = 2;
/// Internal error: the packet could not be parsed (truncated header); it is dropped.
pub const REASON_MALFORMED: u8 = 3;
/// The flow table is full: the packet was allowed but its flow is not tracked, so its
/// replies may be denied.
pub const REASON_MAP_FULL: u8 = 4;
/// The workload is quarantined.
pub const REASON_QUARANTINE: u8 = 5;
/// A frame that is not IP (nor ARP) at an isolated workload's interface: VLAN-in-VLAN,
/// raw L2. Network policy cannot say anything about it, so an isolated workload may not
/// send or receive it.
pub const REASON_NOT_IP: u8 = 6;
/// An isolated workload creating a packet (AF_PACKET) or XDP (AF_XDP) socket: frames sent
/// or received through one never meet a cgroup hook, so such a workload may not have one.
pub const REASON_PACKET_SOCKET: u8 = 7;
/// A ClusterNetworkPolicy rule of the Admin tier denies it (the event names the rule).
pub const REASON_ADMIN_DENY: u8 = 8;
/// A ClusterNetworkPolicy rule of the Baseline tier denies it (no NetworkPolicy isolates
/// the workload this way; the event names the rule).
pub const REASON_BASELINE_DENY: u8 = 9;
/// A TCP flow to port 443 allowed only by a name (EP_SNI_CHECK) whose first payload was
/// not a TLS ClientHello naming a host the destination was learnt for; the flow's later
/// packets are dropped too.
pub const REASON_SNI_MISMATCH: u8 = 10;

/// Which program saw the packet.
pub const HOOK_CGROUP_SKB: u8 = 1;
pub const HOOK_CONNECT: u8 = 2;
pub const HOOK_SENDMSG: u8 = 3;
pub const HOOK_TC: u8 = 4;
/// lsm/socket_create: a socket being created (packet and XDP sockets only).
pub const HOOK_SOCKET_CREATE: u8 = 5;

/// Events per flow and window; more are suppressed and counted, and the next event of
/// the flow says how many it stands for.
pub const EVENTS_PER_FLOW_WINDOW: u32 = 32;
pub const EVENT_WINDOW_NS: u64 = 1_000_000_000;
/// Flows whose event rate is tracked (least recently used ones are forgotten).
pub const EVENT_LIMITS_MAX: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub time_ns: u64,
    pub generation: u32,
    pub endpoint_id: u32,
    pub remote_identity: u32,
    /// Earlier events of this flow that the rate limit suppressed since its last event.
    pub suppressed: u32,
    pub verdict: u8,
    pub reason: u8,
    pub direction: u8,
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u8; 2],
    /// The Service the call was made to (its number in the generation), 0 for none: the
    /// remote address is the backend that was chosen for it.
    pub service: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// The ClusterNetworkPolicy rule that decided (the rule reference of its POLICY value,
    /// `policy_value_rule`), 0 when none did (NetworkPolicy, or no policy at all).
    pub rule: u32,
    pub _pad_end: u32,
}
const _: () = assert!(size_of::<Event>() == 80);

/// Rate-limit state of one flow's events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLimit {
    pub window_start_ns: u64,
    pub events: u32,
    pub suppressed: u32,
}
const _: () = assert!(size_of::<EventLimit>() == 16);

// ---------------------------------------------------------------------------------------------
// Per-endpoint statistics: a per-CPU array indexed by endpoint_stats_index().

pub const STAT_ALLOWED: u32 = 0;
pub const STAT_DROPPED: u32 = 1;
pub const STAT_WOULD_DROP: u32 = 2;
pub const STATS_PER_ENDPOINT: u32 = 6;
pub const ENDPOINT_STATS_LEN: u32 = ENDPOINT_ID_LIMIT * STATS_PER_ENDPOINT;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<EndpointStats>() == 16);

/// The COUNTERS index of a packet's verdict (STAT_*) in a direction: the global
/// counters are laid out as (verdict, direction) pairs.
pub const fn verdict_counter(stat: u32, direction: u8) -> u32 {
    stat * 2 + direction as u32
}
const _: () = assert!(verdict_counter(STAT_ALLOWED, DIR_INGRESS) == CNT_ALLOWED_INGRESS);
const _: () = assert!(verdict_counter(STAT_ALLOWED, DIR_EGRESS) == CNT_ALLOWED_EGRESS);
const _: () = assert!(verdict_counter(STAT_DROPPED, DIR_INGRESS) == CNT_DROPPED_INGRESS);
const _: () = assert!(verdict_counter(STAT_DROPPED, DIR_EGRESS) == CNT_DROPPED_EGRESS);
const _: () = assert!(verdict_counter(STAT_WOULD_DROP, DIR_INGRESS) == CNT_WOULD_DROP_INGRESS);
const _: () = assert!(verdict_counter(STAT_WOULD_DROP, DIR_EGRESS) == CNT_WOULD_DROP_EGRESS);

/// Index of (endpoint, direction, STAT_*) in ENDPOINT_STATS.
pub const fn endpoint_stats_index(endpoint_id: u32, direction: u8, stat: u32) -> u32 {
    endpoint_id * STATS_PER_ENDPOINT + direction as u32 * 3 + stat
}

// ---------------------------------------------------------------------------------------------
// Counters: a per-CPU array of u64, indexed by these.

pub const CNT_ALLOWED_INGRESS: u32 = 0;
pub const CNT_ALLOWED_EGRESS: u32 = 1;
pub const CNT_DROPPED_INGRESS: u32 = 2;
pub const CNT_DROPPED_EGRESS: u32 = 3;
pub const CNT_WOULD_DROP_INGRESS: u32 = 4;
pub const CNT_WOULD_DROP_EGRESS: u32 = 5;
/// Events that did not fit in the ring buffer.
pub const CNT_EVENTS_LOST: u32 = 6;
/// Packets that could not be parsed.
pub const CNT_MALFORMED: u32 = 7;
/// Replies of tracked flows that passed without a rule.
pub const CNT_REPLIES: u32 = 8;
/// New flows that could not be tracked (map update failed).
pub const CNT_FLOW_INSERT_FAILED: u32 = 9;
/// Events the per-flow rate limit suppressed.
pub const CNT_EVENTS_SUPPRESSED: u32 = 10;
/// Events queued in the ring buffer.
pub const CNT_EVENTS_QUEUED: u32 = 11;
/// Packet (AF_PACKET) and XDP sockets created on the node, by anyone: the agent creates one
/// at start and reads this go up to know that the kernel runs its socket_create program
/// (BPF LSM is enabled).
pub const CNT_PACKET_SOCKETS: u32 = 12;
/// Programs that found no CONFIG entry (which the kernel never fails to find in an array
/// of one: counted so that it could not happen unseen).
pub const CNT_CONFIG_MISSING: u32 = 13;
pub const COUNTERS_LEN: u32 = 14;

// ---------------------------------------------------------------------------------------------
// DNS: the agent's proxy, and the addresses learnt from the answers it held.

/// `DNS_PROXY[0]`: where the agent's DNS proxy listens and whether it is alive. The agent
/// moves `alive_until_ns` (CLOCK_MONOTONIC, as bpf_ktime_get_ns) forward every second;
/// past it (the agent is down or stuck) the socket hooks stop redirecting DNS, so a dead
/// proxy never takes DNS down. The packet hooks pass a named workload's packets to the
/// proxy's ports and their answers (the call was judged against the resolver it named).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsProxyState {
    pub alive_until_ns: u64,
    /// The proxy's ports, one per resolver: `port_first` up to `port_first + port_count`
    /// (excluded), host order.
    pub port_first: u16,
    pub port_count: u16,
    pub _pad: u32,
    /// Its addresses (IPv4 in the first 4 bytes); all zero for a family it has none of.
    pub addr_v4: [u8; 16],
    pub addr_v6: [u8; 16],
}
const _: () = assert!(size_of::<DnsProxyState>() == 48);

/// A socket address: a resolver the workloads call (DNS_RESOLVERS' key), the proxy it is
/// redirected to (the value), or a workload's socket that called the proxy (DNS_CLIENTS'
/// key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsSocket {
    pub family: u8,
    /// PROTO_TCP or PROTO_UDP.
    pub protocol: u8,
    /// Host order.
    pub port: u16,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DnsSocket>() == 20);

/// DNS_LEARNT's key: an address a workload's DNS answers gave for a name a rule allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsLearntKey {
    pub endpoint_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DnsLearntKey>() == 24);

/// How many name identities one learnt address carries (names that share an address, the
/// most recently answered first).
pub const DNS_LEARNT_IDENTITIES: usize = 4;

/// DNS_LEARNT's value. A new flow is allowed by it until `expires_ns` (the answer's TTL
/// plus the grace, CLOCK_MONOTONIC); a flow allowed before is never cut by expiry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsLearntValue {
    pub expires_ns: u64,
    /// Name identities (IDENTITY_NAME_FIRST and up); 0 ends the list.
    pub identities: [u32; DNS_LEARNT_IDENTITIES],
}
const _: () = assert!(size_of::<DnsLearntValue>() == 24);

// ---------------------------------------------------------------------------------------------
// The map table: every map of the kernel programs (ebpf/stagewall-ebpf/src/maps.rs defines
// them from the names, capacities and types above), all pinned by the agent.

/// A map as this build defines it: name, key size, value size, capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn layout(name: &'static str, key: usize, value: usize, max_entries: u32) -> MapLayout {
    MapLayout {
        name,
        key_size: key as u32,
        value_size: value as u32,
        max_entries,
    }
}

/// An LPM trie's key: the prefix length, then the data.
const fn lpm(data: usize) -> usize {
    size_of::<u32>() + data
}

/// Every map, as this build defines it: what MAP_LAYOUT_VERSION stands for. The ring
/// buffer has neither key nor value; its capacity is in bytes.
pub const MAPS: [MapLayout; 17] = [
    layout(MAP_CONFIG, size_of::<u32>(), size_of::<Config>(), 1),
    layout(
        MAP_ENDPOINTS,
        size_of::<EndpointKey>(),
        size_of::<EndpointInfo>(),
        ENDPOINTS_MAX,
    ),
    layout(
        MAP_SELF_ADDRS,
        size_of::<SelfAddrKey>(),
        size_of::<u32>(),
        SELF_ADDRS_MAX,
    ),
    layout(
        MAP_IPCACHE,
        lpm(size_of::<IpcacheKey>()),
        size_of::<u32>(),
        IPCACHE_MAX,
    ),
    layout(
        MAP_POLICY,
        lpm(size_of::<PolicyKey>()),
        size_of::<u32>(),
        POLICY_MAX,
    ),
    layout(
        MAP_SERVICES,
        size_of::<ServiceKey>(),
        size_of::<ServiceBackend>(),
        SERVICES_MAX,
    ),
    layout(
        MAP_SERVICE_NAT,
        size_of::<ServiceNatKey>(),
        size_of::<ServiceNat>(),
        SERVICE_NAT_MAX,
    ),
    layout(
        MAP_FLOWS,
        size_of::<FlowKey>(),
        size_of::<FlowValue>(),
        FLOWS_MAX,
    ),
    layout(
        MAP_FLOW_BUDGETS,
        size_of::<u32>(),
        size_of::<FlowBudget>(),
        ENDPOINT_ID_LIMIT,
    ),
    layout(MAP_EVENTS, 0, 0, EVENTS_BYTES),
    layout(
        MAP_EVENT_LIMITS,
        size_of::<FlowKey>(),
        size_of::<EventLimit>(),
        EVENT_LIMITS_MAX,
    ),
    layout(
        MAP_ENDPOINT_STATS,
        size_of::<u32>(),
        size_of::<EndpointStats>(),
        ENDPOINT_STATS_LEN,
    ),
    layout(
        MAP_COUNTERS,
        size_of::<u32>(),
        size_of::<u64>(),
        COUNTERS_LEN,
    ),
    layout(
        MAP_DNS_PROXY,
        size_of::<u32>(),
        size_of::<DnsProxyState>(),
        1,
    ),
    layout(
        MAP_DNS_RESOLVERS,
        size_of::<DnsSocket>(),
        size_of::<DnsSocket>(),
        DNS_RESOLVERS_MAX,
    ),
    layout(
        MAP_DNS_CLIENTS,
        size_of::<DnsSocket>(),
        size_of::<u32>(),
        DNS_CLIENTS_MAX,
    ),
    layout(
        MAP_DNS_LEARNT,
        size_of::<DnsLearntKey>(),
        size_of::<DnsLearntValue>(),
        DNS_LEARNT_MAX,
    ),
];

// ---------------------------------------------------------------------------------------------
// aya::Pod for user space.

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are #[repr(C)] plain integers and byte arrays without implicit padding.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for SelfAddrKey {}
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowBudget {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for EventLimit {}
    unsafe impl aya::Pod for EndpointStats {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceBackend {}
    unsafe impl aya::Pod for ServiceNatKey {}
    unsafe impl aya::Pod for ServiceNat {}
    unsafe impl aya::Pod for DnsProxyState {}
    unsafe impl aya::Pod for DnsSocket {}
    unsafe impl aya::Pod for DnsLearntKey {}
    unsafe impl aya::Pod for DnsLearntValue {}
}
