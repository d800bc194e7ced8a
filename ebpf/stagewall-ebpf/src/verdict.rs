//! The per-packet decision, the same for every hook. Its cost is a fixed number of map
//! lookups whatever the policy size:
//!
//! - CONFIG (array), ENDPOINTS (hash);
//! - FLOWS (LRU hash: a flow already allowed this way under the policy in force — the
//!   verdict cache; most packets stop here), FLOWS again (is it a reply?);
//! - IPCACHE (LPM: the peer's identity);
//! - the tiers, each a POLICY program (LPM) looked up under the peer's identity and, on a
//!   miss, under the any-peer identity: the Admin tier (at most 2 lookups), then the
//!   NetworkPolicy tier (at most 2) when a NetworkPolicy isolates the workload this way,
//!   else the Baseline tier (at most 2) — so at most 4 POLICY lookups (4 more where an
//!   audited ClusterNetworkPolicy holds the workload: its shadow programs, read for a flow
//!   the enforced ones allow), whatever the number of ClusterNetworkPolicies and rules
//!   (the compiler flattens priorities and rule order into the entries: the longest
//!   prefix is the first rule that matches);
//! - ENDPOINT_STATS (per-CPU array: the workload's packets and bytes);
//! - for an allowed packet whose replies need tracking, one FLOWS lookup and, at most
//!   once a second per flow, an update; a new flow also takes one of the workload's
//!   FLOW_BUDGETS (array: its share of the shared flow table);
//! - for a later fragment, one FLOWS lookup (did its datagram's first fragment pass?); for
//!   an ICMP error, two (is the flow it is about tracked, either way?);
//! - for a denied packet, EVENT_LIMITS (LRU hash: the flow's event rate) and the ring
//!   buffer.
//!
//! The lookups are separate BPF functions (`#[inline(never)]`): each keeps its map key in
//! its own stack frame instead of all of them piling up in `decide`'s, which keeps the call
//! chain within the verifier's 512-byte stack.

use core::ptr::addr_of_mut;

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use stagewall_common::{
    ACTION_ACCEPT, ACTION_DENY, CNT_EVENTS_LOST, CNT_EVENTS_QUEUED, CNT_EVENTS_SUPPRESSED,
    CNT_FLOW_INSERT_FAILED, CNT_MALFORMED, CNT_REPLIES, Config, DIR_EGRESS, DIR_INGRESS,
    DnsLearntValue, EP_BACKSTOP, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, EP_FAIL_OPEN,
    EP_QUARANTINED, EVENT_WINDOW_NS, EVENTS_PER_FLOW_WINDOW, EndpointInfo, Event, EventLimit,
    FAMILY_V4, FLOW_BUDGET_WINDOW_NS, FLOW_F_SNI_DENIED, FLOW_INSERTS_PER_WINDOW, FLOW_KIND_FLOW,
    FLOW_KIND_FRAGMENTS, FLOW_REFRESH_NS, FLOW_TIMEOUT_OTHER_NS, FLOW_TIMEOUT_TCP_NS,
    FRAGMENTS_TIMEOUT_NS, FlowKey, FlowValue, HOOK_CGROUP_SKB, HOOK_SOCKET_CREATE, HOOK_TC,
    IDENTITY_ANY, IDENTITY_WORLD_V4, IDENTITY_WORLD_V6, IPCACHE_PREFIX_BITS, IpcacheKey,
    MODE_AUDIT, POLICY_ALLOW, POLICY_PREFIX_FULL_BITS, PROTO_TCP, PolicyKey, REASON_ADMIN_DENY,
    REASON_ALLOWED, REASON_BASELINE_DENY, REASON_DEFAULT_DENY, REASON_MALFORMED, REASON_MAP_FULL,
    REASON_NO_RULE, REASON_NOT_IP, REASON_PACKET_SOCKET, REASON_QUARANTINE, REASON_SNI_MISMATCH,
    STAT_ALLOWED, STAT_DROPPED, STAT_WOULD_DROP, VERDICT_ALLOWED, VERDICT_DROPPED,
    VERDICT_WOULD_DROP, audit_flag, endpoint_stats_index, identity_any, is_node_identity,
    isolation_flag, policy_value, policy_value_action, policy_value_rule, shadow_flag,
    tiers_audit_flag, verdict_counter,
};

use crate::{
    dns,
    maps::{
        CONFIG, COUNTERS, ENDPOINT_STATS, EVENT_LIMITS, EVENTS, FLOW_BUDGETS, FLOWS, IPCACHE,
        POLICY, count,
    },
    sni,
};

/// A packet from one endpoint's point of view.
pub struct Flow {
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// The packet's length (0 for connect/sendmsg, which are not packets).
    pub bytes: u32,
    /// The Service the call was made to (connect/sendmsg), 0 for none.
    pub service: u32,
    /// The workload's traffic to itself: on the loopback device (packet hooks), or to a
    /// loopback address or its own (connect/sendmsg). Never decided from the header's
    /// addresses, which a raw socket writes as it likes.
    pub self_traffic: bool,
}

#[derive(PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Is the endpoint's `direction` in audit mode: the whole agent, or the workload's
/// namespace or policy?
pub fn audits(cfg: &Config, ep: &EndpointInfo, direction: u8) -> bool {
    cfg.mode == MODE_AUDIT || ep.flags & audit_flag(direction) != 0
}

/// Does a policy isolate the endpoint in `direction`?
fn isolates(ep: &EndpointInfo, direction: u8) -> bool {
    ep.flags & isolation_flag(direction) != 0
}

/// The endpoint's tier programs for `direction`: (Admin, Baseline) enforced, then the
/// shadow pair with the audited ClusterNetworkPolicies in them (EP_SHADOW_*).
fn tier_programs(ep: &EndpointInfo, direction: u8) -> [u32; 4] {
    if direction == DIR_INGRESS {
        [
            ep.admin_ingress,
            ep.baseline_ingress,
            ep.shadow_admin_ingress,
            ep.shadow_baseline_ingress,
        ]
    } else {
        [
            ep.admin_egress,
            ep.baseline_egress,
            ep.shadow_admin_egress,
            ep.shadow_baseline_egress,
        ]
    }
}

/// Does an enforced ClusterNetworkPolicy tier have rules for the endpoint in `direction`?
fn has_tiers(ep: &EndpointInfo, direction: u8) -> bool {
    let [admin, baseline, _, _] = tier_programs(ep, direction);
    admin != 0 || baseline != 0
}

/// Is the endpoint's `direction` decided by policy at all: isolated by a NetworkPolicy,
/// or held by a ClusterNetworkPolicy (enforced, or audited: its shadow is read)?
pub fn guarded(ep: &EndpointInfo, direction: u8) -> bool {
    isolates(ep, direction) || has_tiers(ep, direction) || ep.flags & shadow_flag(direction) != 0
}

/// Does anything deny in `direction` and drop (not audited)? An enforced NetworkPolicy,
/// or an enforced tier program.
fn enforces(cfg: &Config, ep: &EndpointInfo, direction: u8) -> bool {
    (isolates(ep, direction) && !audits(cfg, ep, direction))
        || (has_tiers(ep, direction) && !audits_denial(cfg, ep, direction, REASON_ADMIN_DENY))
}

/// Is a denial for `reason` in `direction` audited? A tier's denial only by the agent's
/// mode or the namespace's annotation (EP_TIERS_AUDIT_*), never by a NetworkPolicy's:
/// the namespace's owner may write those, and a guardrail is what they cannot weaken.
fn audits_denial(cfg: &Config, ep: &EndpointInfo, direction: u8, reason: u8) -> bool {
    if reason == REASON_ADMIN_DENY || reason == REASON_BASELINE_DENY {
        cfg.mode == MODE_AUDIT || ep.flags & tiers_audit_flag(direction) != 0
    } else {
        audits(cfg, ep, direction)
    }
}

/// Is this TC seeing the packet as the backstop of a cgroup-enforced workload (which
/// counts and reports only what it denies)?
fn is_backstop(ep: &EndpointInfo, hook: u8) -> bool {
    hook == HOOK_TC && ep.flags & EP_BACKSTOP != 0
}

/// What an event says of a packet.
struct Report {
    verdict: u8,
    reason: u8,
    identity: u32,
    hook: u8,
    /// The ClusterNetworkPolicy rule that decided, 0 for none.
    rule: u32,
}

/// Decides one packet (or connect/sendmsg) of a local endpoint. On a denial it counts and
/// reports the event (with `hook`) — an audited one only if `report_audited` (connect and
/// sendmsg leave those to the packets that follow) — and returns Drop only for an
/// enforced one.
#[inline(never)]
pub fn decide(
    cfg: &Config,
    ep: &EndpointInfo,
    flow: &Flow,
    hook: u8,
    report_audited: bool,
) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    // Quarantine comes first: nothing, not even loopback traffic (which reaches the
    // node's own services from a workload in the node's network namespace), passes.
    if ep.flags & EP_QUARANTINED != 0 {
        return quarantined(cfg, ep, flow, now, hook);
    }
    // A workload's traffic to itself never leaves it; as in Kubernetes, policy does not
    // apply.
    if flow.self_traffic {
        return Verdict::Pass;
    }
    // Decided by policy this way: a NetworkPolicy isolates the workload, or a
    // ClusterNetworkPolicy tier has rules for it (which may deny what no NetworkPolicy
    // would).
    let decided = guarded(ep, flow.direction);
    // connect/sendmsg decide before a packet exists: no local port to track, no packet to
    // count (the packets that follow are decided and counted by the packet hooks).
    let packet_hook = hook == HOOK_CGROUP_SKB || hook == HOOK_TC;
    // TC as the backstop of a cgroup-enforced workload: it decides like the cgroup hooks
    // but counts and reports only what it denies; the cgroup hooks count the rest.
    let backstop = is_backstop(ep, hook);

    if decided {
        // A flow this endpoint already allowed this way, under the policy in force: one
        // hash lookup instead of the LPM lookups below.
        let before = if packet_hook {
            allowed_before(cfg, ep, flow, now)
        } else {
            FLOW_UNKNOWN
        };
        if before == FLOW_ALLOWED {
            if !backstop {
                count_verdict(ep, flow, STAT_ALLOWED);
            }
            return Verdict::Pass;
        }
        if is_reply(ep, flow, now) {
            if !backstop {
                count(CNT_REPLIES);
                count_for_endpoint(ep, flow, STAT_ALLOWED);
            }
            return Verdict::Pass;
        }
        let identity = remote_identity(cfg, flow);
        // The node reaches its pods whatever their ingress policy says (probes), in every
        // tier: no ClusterNetworkPolicy ingress peer names a node.
        let from_node = flow.direction == DIR_INGRESS && is_node_identity(identity);
        let mut judgement = if from_node {
            ALLOWED_BY_DEFAULT
        } else {
            judge(ep, flow, identity, false, before == FLOW_OPEN)
        };
        // Allowed: would the audited ClusterNetworkPolicies deny it? Reported as
        // would-drop, and it passes.
        let shadow = !from_node
            && judged_reason(judgement) == REASON_ALLOWED
            && ep.flags & shadow_flag(flow.direction) != 0;
        if shadow {
            judgement = judge(ep, flow, identity, true, before == FLOW_OPEN);
        }
        let rule = judged_rule(judgement);
        let reason = judged_reason(judgement);
        if reason != REASON_ALLOWED {
            let audit = shadow || audits_denial(cfg, ep, flow.direction, reason);
            if audit && backstop {
                // Reported where sockets send it; a backstop in audit mode only watches.
                return Verdict::Pass;
            }
            let verdict = if audit {
                VERDICT_WOULD_DROP
            } else {
                VERDICT_DROPPED
            };
            let stat = if audit { STAT_WOULD_DROP } else { STAT_DROPPED };
            // Packets are always reported; a denied connect or sendmsg is too, except in
            // audit mode (its packets will be). Either way the workload's statistics
            // count it, as the global counters do: a connect refused with EPERM is a
            // violation of the workload's own, like a dropped packet.
            if report_audited || !audit {
                count_verdict(ep, flow, stat);
                emit(
                    cfg,
                    ep,
                    flow,
                    now,
                    &Report {
                        verdict,
                        reason,
                        identity,
                        hook,
                        rule,
                    },
                );
            }
            if !audit {
                return Verdict::Drop;
            }
            // Audit mode: the packet goes on, and its replies must count as replies (as
            // they would had it been allowed), not as violations of their own. The flow is
            // remembered for its replies only (generation 0 is never in force), so its
            // next packets are decided — and reported — again.
            if packet_hook && within_flow_budget(ep, now) {
                let _ = remember(ep, flow, now, 0, 0);
            }
            return Verdict::Pass;
        } else if packet_hook && !backstop {
            let report = Report {
                verdict: VERDICT_ALLOWED,
                reason: REASON_ALLOWED,
                identity,
                hook,
                rule,
            };
            allowed(cfg, ep, flow, now, &report);
        }
    } else if packet_hook && !backstop {
        // With flow logging, a reply must not be reported as a flow of its own (a
        // connection's answers would show up as traffic to the client's ephemeral port).
        if cfg.log_allowed != 0 && is_reply(ep, flow, now) {
            count(CNT_REPLIES);
            count_for_endpoint(ep, flow, STAT_ALLOWED);
            return Verdict::Pass;
        }
        let report = Report {
            verdict: VERDICT_ALLOWED,
            reason: REASON_ALLOWED,
            identity: remote_identity(cfg, flow),
            hook,
            rule: 0,
        };
        allowed(cfg, ep, flow, now, &report);
    }
    // Track every allowed flow: for its replies — also those that arrive after a policy
    // change isolated the other direction (a connection opened before keeps working, as
    // conntrack-based enforcement does) — and as the verdict cache when policy decides.
    if packet_hook {
        track(cfg, ep, flow, now, hook);
    }
    Verdict::Pass
}

/// A quarantined workload: everything in and out is dropped, in audit mode too (an
/// operator who isolates a workload means it), replies included.
#[inline(never)]
fn quarantined(cfg: &Config, ep: &EndpointInfo, flow: &Flow, now: u64, hook: u8) -> Verdict {
    count_verdict(ep, flow, STAT_DROPPED);
    let report = Report {
        verdict: VERDICT_DROPPED,
        reason: REASON_QUARANTINE,
        identity: remote_identity(cfg, flow),
        hook,
        rule: 0,
    };
    emit(cfg, ep, flow, now, &report);
    Verdict::Drop
}

/// A frame without an IP header, seen from the endpoint.
fn frame_flow(direction: u8, bytes: u32) -> Flow {
    Flow {
        direction,
        family: 0,
        protocol: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        bytes,
        service: 0,
        self_traffic: false,
    }
}

/// A packet whose headers could not be parsed: counted and reported as an internal error,
/// and dropped — passed in audit mode, or when the workload's fail mode is open (reported
/// as allowed then), but never for a quarantined workload. A truncated header never comes
/// from the local stack, so this only ever hits crafted packets.
#[inline(never)]
pub fn malformed(cfg: &Config, ep: &EndpointInfo, direction: u8, hook: u8, bytes: u32) -> Verdict {
    count(CNT_MALFORMED);
    let flow = frame_flow(direction, bytes);
    let now = unsafe { bpf_ktime_get_ns() };
    if ep.flags & EP_QUARANTINED != 0 {
        return quarantined(cfg, ep, &flow, now, hook);
    }
    let audit = audits(cfg, ep, direction);
    let fail_open = ep.flags & EP_FAIL_OPEN != 0;
    let (stat, verdict) = if fail_open {
        (STAT_ALLOWED, VERDICT_ALLOWED)
    } else if audit {
        (STAT_WOULD_DROP, VERDICT_WOULD_DROP)
    } else {
        (STAT_DROPPED, VERDICT_DROPPED)
    };
    count_for_endpoint(ep, &flow, stat);
    let report = Report {
        verdict,
        reason: REASON_MALFORMED,
        identity: 0,
        hook,
        rule: 0,
    };
    emit(cfg, ep, &flow, now, &report);
    if audit || fail_open {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// ARP: passes, as network policy does not cover it, except for a quarantined workload.
#[inline(never)]
pub fn arp(cfg: &Config, ep: &EndpointInfo, direction: u8, hook: u8, bytes: u32) -> Verdict {
    if ep.flags & EP_QUARANTINED == 0 {
        return Verdict::Pass;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    quarantined(cfg, ep, &frame_flow(direction, bytes), now, hook)
}

/// A frame that is neither IP nor ARP (VLAN in VLAN, raw L2 protocols): policy says
/// nothing about it, so a workload isolated in its direction may not pass it — dropped
/// (would-drop in audit mode; the fail mode is for what cannot be parsed, and this can),
/// counted and reported. A workload that is not isolated passes it uncounted, as before
/// any policy.
#[inline(never)]
pub fn not_ip(cfg: &Config, ep: &EndpointInfo, direction: u8, hook: u8, bytes: u32) -> Verdict {
    let flow = frame_flow(direction, bytes);
    let now = unsafe { bpf_ktime_get_ns() };
    if ep.flags & EP_QUARANTINED != 0 {
        return quarantined(cfg, ep, &flow, now, hook);
    }
    if !isolates(ep, direction) {
        return Verdict::Pass;
    }
    let audit = audits(cfg, ep, direction);
    let (stat, verdict) = if audit {
        (STAT_WOULD_DROP, VERDICT_WOULD_DROP)
    } else {
        (STAT_DROPPED, VERDICT_DROPPED)
    };
    count_verdict(ep, &flow, stat);
    let report = Report {
        verdict,
        reason: REASON_NOT_IP,
        identity: 0,
        hook,
        rule: 0,
    };
    emit(cfg, ep, &flow, now, &report);
    if audit { Verdict::Pass } else { Verdict::Drop }
}

/// A workload creating a packet (AF_PACKET) or XDP socket: refused when it is quarantined
/// or its traffic is decided by policy in either direction (`guarded`: what it would send
/// or receive through the socket passes no cgroup hook), reported (hook socket_create);
/// let through, and reported as would-drop, only when every guarded direction is audited. Not counted as a
/// packet: there is none yet.
pub fn packet_socket(cfg: &Config, ep: &EndpointInfo) -> Verdict {
    let quarantined = ep.flags & EP_QUARANTINED != 0;
    let enforced = |d| enforces(cfg, ep, d);
    // The direction the event names: an enforced one first, else an audited one.
    let direction = if enforced(DIR_EGRESS) || (!enforced(DIR_INGRESS) && guarded(ep, DIR_EGRESS)) {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    if !quarantined && !guarded(ep, direction) {
        return Verdict::Pass;
    }
    let audit = !quarantined && !enforced(DIR_EGRESS) && !enforced(DIR_INGRESS);
    let report = Report {
        verdict: if audit {
            VERDICT_WOULD_DROP
        } else {
            VERDICT_DROPPED
        },
        reason: if quarantined {
            REASON_QUARANTINE
        } else {
            REASON_PACKET_SOCKET
        },
        identity: 0,
        hook: HOOK_SOCKET_CREATE,
        rule: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit(cfg, ep, &frame_flow(direction, 0), now, &report);
    if audit { Verdict::Pass } else { Verdict::Drop }
}

/// The verdict without the configuration in force (see `without_config` in main.rs): a
/// quarantined workload stays cut off, one whose fail mode is open passes, any other is
/// dropped where policy decides its traffic (`guarded`). Counted there; nothing to report
/// it with.
pub fn without_config(ep: &EndpointInfo, direction: u8) -> Verdict {
    if ep.flags & EP_QUARANTINED == 0 && (ep.flags & EP_FAIL_OPEN != 0 || !guarded(ep, direction)) {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// An ICMP error (`about` is the packet it is about, in that packet's direction): passes
/// when that packet's flow is tracked either way (allowed, or a reply of an allowed one),
/// so that "packet too big" reaches an allowed flow's sender and path MTU discovery works.
/// An error about no tracked flow is denied where the workload is isolated.
#[inline(never)]
pub fn icmp_error(cfg: &Config, ep: &EndpointInfo, about: &Flow, hook: u8) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    if ep.flags & EP_QUARANTINED != 0 {
        return quarantined(cfg, ep, about, now, hook);
    }
    let direction = opposite(about.direction);
    if !isolates(ep, direction) || tracked(ep, about, now) {
        return Verdict::Pass;
    }
    let audit = audits(cfg, ep, direction);
    if audit && is_backstop(ep, hook) {
        return Verdict::Pass;
    }
    let (stat, verdict) = if audit {
        (STAT_WOULD_DROP, VERDICT_WOULD_DROP)
    } else {
        (STAT_DROPPED, VERDICT_DROPPED)
    };
    count_verdict(ep, about, stat);
    let report = Report {
        verdict,
        reason: REASON_NO_RULE,
        identity: remote_identity(cfg, about),
        hook,
        rule: 0,
    };
    emit(cfg, ep, about, now, &report);
    if audit { Verdict::Pass } else { Verdict::Drop }
}

/// Is the flow tracked, allowed this way or as the reply of one allowed the other way?
fn tracked(ep: &EndpointInfo, flow: &Flow, now: u64) -> bool {
    let fresh = |key: FlowKey| match unsafe { FLOWS.get(key) } {
        Some(value) => now.saturating_sub(value.last_seen_ns) < timeout_ns(flow.protocol),
        None => false,
    };
    fresh(flow_key(ep, flow, flow.direction)) || fresh(flow_key(ep, flow, opposite(flow.direction)))
}

/// The key of the fragments of one datagram (`id`) of the flow.
fn fragments_key(ep: &EndpointInfo, flow: &Flow, id: u32) -> FlowKey {
    FlowKey {
        endpoint_id: ep.endpoint_id,
        family: flow.family,
        protocol: flow.protocol,
        origin: flow.direction,
        kind: FLOW_KIND_FRAGMENTS,
        local_port: 0,
        remote_port: 0,
        fragment_id: id,
        remote_addr: flow.remote_addr,
    }
}

/// The first fragment of datagram `id` passed: its later fragments (no ports) may follow.
#[inline(never)]
pub fn remember_fragments(ep: &EndpointInfo, flow: &Flow, id: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_flow_budget(ep, now) {
        count(CNT_FLOW_INSERT_FAILED);
        return;
    }
    let value = FlowValue {
        last_seen_ns: now,
        generation: 0,
        flags: 0,
    };
    let _ = FLOWS.insert(fragments_key(ep, flow, id), value, 0);
}

/// A later fragment of a datagram whose first fragment passed (counted as allowed, except
/// by a backstop). Quarantine still drops it: the caller's decide() sees it otherwise.
#[inline(never)]
pub fn fragment_allowed(ep: &EndpointInfo, flow: &Flow, id: u32, hook: u8) -> bool {
    if ep.flags & EP_QUARANTINED != 0 {
        return false;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let fresh = match unsafe { FLOWS.get(fragments_key(ep, flow, id)) } {
        Some(value) => now.saturating_sub(value.last_seen_ns) < FRAGMENTS_TIMEOUT_NS,
        None => false,
    };
    if fresh && !is_backstop(ep, hook) {
        count_verdict(ep, flow, STAT_ALLOWED);
    }
    fresh
}

/// Counts an allowed packet, and logs its flow (`report`) when flow logging is on.
fn allowed(cfg: &Config, ep: &EndpointInfo, flow: &Flow, now: u64, report: &Report) {
    count_verdict(ep, flow, STAT_ALLOWED);
    if cfg.log_allowed != 0 {
        emit(cfg, ep, flow, now, report);
    }
}

/// Counts a packet with its verdict (STAT_*) in the global counters and in the workload's
/// statistics.
fn count_verdict(ep: &EndpointInfo, flow: &Flow, stat: u32) {
    count(verdict_counter(stat, flow.direction));
    count_for_endpoint(ep, flow, stat);
}

/// Counts a packet with its verdict (STAT_*) in the workload's statistics only: its
/// packets and bytes, per CPU.
fn count_for_endpoint(ep: &EndpointInfo, flow: &Flow, stat: u32) {
    let index = endpoint_stats_index(ep.endpoint_id, flow.direction, stat);
    if let Some(entry) = ENDPOINT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe {
            (*entry).packets += 1;
            (*entry).bytes += flow.bytes as u64;
        }
    }
}

fn flow_key(ep: &EndpointInfo, flow: &Flow, origin: u8) -> FlowKey {
    FlowKey {
        endpoint_id: ep.endpoint_id,
        family: flow.family,
        protocol: flow.protocol,
        origin,
        kind: FLOW_KIND_FLOW,
        local_port: flow.local_port,
        remote_port: flow.remote_port,
        fragment_id: 0,
        remote_addr: flow.remote_addr,
    }
}

pub fn opposite(direction: u8) -> u8 {
    if direction == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

fn timeout_ns(protocol: u8) -> u64 {
    if protocol == PROTO_TCP {
        FLOW_TIMEOUT_TCP_NS
    } else {
        FLOW_TIMEOUT_OTHER_NS
    }
}

/// Is this packet a reply within a flow the endpoint allowed the other way?
#[inline(never)]
fn is_reply(ep: &EndpointInfo, flow: &Flow, now: u64) -> bool {
    let key = flow_key(ep, flow, opposite(flow.direction));
    match unsafe { FLOWS.get(key) } {
        Some(value) => now.saturating_sub(value.last_seen_ns) < timeout_ns(flow.protocol),
        None => false,
    }
}

/// What `allowed_before` found: a flow it does not know (or one remembered only for its
/// replies, in audit mode), one allowed under the policy in force, or an open flow
/// allowed under an earlier policy (decided again, but not cut by a learnt address's
/// expiry).
const FLOW_UNKNOWN: u8 = 0;
const FLOW_ALLOWED: u8 = 1;
const FLOW_OPEN: u8 = 2;

/// Did this endpoint allow this flow, in this direction, under the policy in force (and
/// recently enough)? Refreshes the entry at most once a second.
#[inline(never)]
fn allowed_before(cfg: &Config, ep: &EndpointInfo, flow: &Flow, now: u64) -> u8 {
    let key = flow_key(ep, flow, flow.direction);
    let Some(value) = FLOWS.get_ptr_mut(key) else {
        return FLOW_UNKNOWN;
    };
    // SAFETY: a valid map value; a racing refresh only writes a similar timestamp.
    let value = unsafe { &mut *value };
    let age = now.saturating_sub(value.last_seen_ns);
    if age >= timeout_ns(flow.protocol) || value.generation == 0 {
        return FLOW_UNKNOWN;
    }
    if value.generation != cfg.generation {
        return FLOW_OPEN;
    }
    if age >= FLOW_REFRESH_NS {
        value.last_seen_ns = now;
    }
    FLOW_ALLOWED
}

#[inline(never)]
fn track(cfg: &Config, ep: &EndpointInfo, flow: &Flow, now: u64, hook: u8) {
    let key = flow_key(ep, flow, flow.direction);
    match FLOWS.get_ptr_mut(key) {
        // SAFETY (both arms): a valid map value; a racing refresh writes the same.
        Some(value)
            if unsafe { (*value).generation } == cfg.generation
                && now.saturating_sub(unsafe { (*value).last_seen_ns }) < FLOW_REFRESH_NS =>
        {
            return;
        }
        // Refreshing an entry takes nothing from the table, and keeps what the SNI check
        // knows of the flow; a new one takes the workload's share.
        Some(value) => {
            unsafe {
                (*value).last_seen_ns = now;
                (*value).generation = cfg.generation;
            }
            return;
        }
        None if within_flow_budget(ep, now) => {}
        None => {
            count(CNT_FLOW_INSERT_FAILED);
            return;
        }
    }
    if !remember(ep, flow, now, cfg.generation, hook) {
        count(CNT_FLOW_INSERT_FAILED);
        let report = Report {
            verdict: VERDICT_ALLOWED,
            reason: REASON_MAP_FULL,
            identity: remote_identity(cfg, flow),
            hook,
            rule: 0,
        };
        emit(cfg, ep, flow, now, &report);
    }
}

/// May the workload add one more entry to the flow table now? Each workload has
/// FLOW_INSERTS_PER_WINDOW new entries per window (FLOW_BUDGETS): one workload, or
/// spoofed sources sent to it, cannot evict the others' flows from the shared LRU table.
/// An id outside the table (the unguarded entry's) has no share to take from.
#[inline(never)]
fn within_flow_budget(ep: &EndpointInfo, now: u64) -> bool {
    let Some(budget) = FLOW_BUDGETS.get_ptr_mut(ep.endpoint_id) else {
        return true;
    };
    // SAFETY: a valid map value; CPUs racing on it make the limit approximate.
    let budget = unsafe { &mut *budget };
    if now.saturating_sub(budget.window_start_ns) >= FLOW_BUDGET_WINDOW_NS {
        budget.window_start_ns = now;
        budget.inserts = 1;
        return true;
    }
    if budget.inserts < FLOW_INSERTS_PER_WINDOW {
        budget.inserts += 1;
        return true;
    }
    false
}

/// Records the flow, new, as allowed this way under policy `generation` by `hook` (0: for
/// its replies only); false if the table refused it. A flow the SNI check may apply to is
/// marked for it (sni.rs).
#[inline(never)]
fn remember(ep: &EndpointInfo, flow: &Flow, now: u64, generation: u32, hook: u8) -> bool {
    let value = FlowValue {
        last_seen_ns: now,
        generation,
        flags: sni::new_flow_flags(ep, flow, hook),
    };
    FLOWS
        .insert(flow_key(ep, flow, flow.direction), value, 0)
        .is_ok()
}

#[inline(never)]
fn remote_identity(cfg: &Config, flow: &Flow) -> u32 {
    let data = IpcacheKey {
        slot: cfg.active_slot as u8,
        family: flow.family,
        addr: flow.remote_addr,
        _pad: [0; 2],
    };
    let key = Key::new(IPCACHE_PREFIX_BITS + 128, data);
    match IPCACHE.get(key) {
        Some(identity) => *identity,
        None if flow.family == FAMILY_V4 => IDENTITY_WORLD_V4,
        None => IDENTITY_WORLD_V6,
    }
}

/// The verdict of the tiers for a new flow, packed in 64 bits (a BPF function returns one
/// register): the reason (REASON_ALLOWED or the denial's) above the POLICY value that
/// decided (`policy_value`: its action and rule reference).
type Judgement = u64;

const fn judgement(reason: u8, value: u32) -> Judgement {
    (reason as u64) << 32 | value as u64
}

fn judged_reason(j: Judgement) -> u8 {
    (j >> 32) as u8
}

/// The ClusterNetworkPolicy rule that decided, 0 for none.
fn judged_rule(j: Judgement) -> u32 {
    policy_value_rule(j as u32)
}

/// Allowed, with no rule to name: nothing denies it.
const ALLOWED_BY_DEFAULT: Judgement = judgement(REASON_ALLOWED, POLICY_ALLOW);

/// The tiers, first match wins: the Admin tier program (Accept allows, Deny denies, Pass
/// or no match goes on); then, if a NetworkPolicy isolates the workload this way, their
/// union (allowed by one of them, or denied); else the Baseline tier program (Accept,
/// Deny; Pass or no match goes on); then allowed. The enforced programs, or with `shadow`
/// those with the audited ClusterNetworkPolicies too. A program id of 0 has no rules.
///
/// A destination the workload's DNS answers gave for allowed names (`dns::learnt`) is
/// also looked up under those names' identities: in a tier program the first rule in
/// precedence order wins (`with_names`), in the NetworkPolicy union any entry allows.
#[inline(never)]
fn judge(
    ep: &EndpointInfo,
    flow: &Flow,
    identity: u32,
    shadow: bool,
    established: bool,
) -> Judgement {
    judge_with(
        ep,
        flow,
        identity,
        shadow,
        dns::learnt(ep, flow, established),
    )
}

/// `judge` with the names `names` (None: by the address alone).
#[inline(always)]
fn judge_with(
    ep: &EndpointInfo,
    flow: &Flow,
    identity: u32,
    shadow: bool,
    names: Option<&DnsLearntValue>,
) -> Judgement {
    let ingress = flow.direction == DIR_INGRESS;
    let [admin, baseline, shadow_admin, shadow_baseline] = tier_programs(ep, flow.direction);
    let (admin, baseline) = if shadow {
        (shadow_admin, shadow_baseline)
    } else {
        (admin, baseline)
    };
    if admin != 0 {
        let value = lookup_policy(admin, identity, identity_any(flow.family), flow);
        let value = with_names(admin, value, names, flow);
        match policy_value_action(value) {
            ACTION_ACCEPT => return judgement(REASON_ALLOWED, value),
            ACTION_DENY => return judgement(REASON_ADMIN_DENY, value),
            _ => {}
        }
    }
    if isolates(ep, flow.direction) {
        let (policy, default_deny) = if ingress {
            (ep.ingress_policy, ep.flags & EP_DEFAULT_DENY_INGRESS != 0)
        } else {
            (ep.egress_policy, ep.flags & EP_DEFAULT_DENY_EGRESS != 0)
        };
        if lookup_policy(policy, identity, IDENTITY_ANY, flow) != 0
            || with_names(policy, 0, names, flow) != 0
        {
            return ALLOWED_BY_DEFAULT;
        }
        let reason = if default_deny {
            REASON_DEFAULT_DENY
        } else {
            REASON_NO_RULE
        };
        return judgement(reason, policy_value(ACTION_DENY, 0));
    }
    if baseline != 0 {
        let value = lookup_policy(baseline, identity, identity_any(flow.family), flow);
        let value = with_names(baseline, value, names, flow);
        match policy_value_action(value) {
            ACTION_ACCEPT => return judgement(REASON_ALLOWED, value),
            ACTION_DENY => return judgement(REASON_BASELINE_DENY, value),
            _ => {}
        }
    }
    ALLOWED_BY_DEFAULT
}

/// Would the tiers allow the flow by its destination's address alone, the names its DNS
/// answers gave left out? (The SNI check applies to flows only a name allowed.)
#[inline(never)]
pub fn allowed_by_address(cfg: &Config, ep: &EndpointInfo, flow: &Flow) -> bool {
    let identity = remote_identity(cfg, flow);
    judged_reason(judge_with(ep, flow, identity, false, None)) == REASON_ALLOWED
}

/// The first in precedence order of `value` (an entry found for the destination's
/// address, 0 for none) and the entries of policy program `policy` for the names the
/// destination was learnt for. A tier program's rule references grow with precedence
/// (the compiler numbers them so), and a name's rules only accept.
#[inline(never)]
fn with_names(policy: u32, value: u32, names: Option<&DnsLearntValue>, flow: &Flow) -> u32 {
    let Some(names) = names else {
        return value;
    };
    let mut first = value;
    for identity in names.identities {
        if identity == 0 {
            break;
        }
        let found = lookup_policy(policy, identity, identity, flow);
        if found != 0 && (first == 0 || policy_value_rule(found) < policy_value_rule(first)) {
            first = found;
        }
    }
    first
}

/// The value of policy program `policy`'s entry for the flow's peer `identity`, or on a
/// miss for `any` (the program's any-peer identity); 0 when neither has one.
#[inline(never)]
fn lookup_policy(policy: u32, identity: u32, any: u32, flow: &Flow) -> u32 {
    // The port a rule names is the destination's: the remote's for egress, ours for ingress.
    let port = if flow.direction == DIR_INGRESS {
        flow.local_port
    } else {
        flow.remote_port
    };
    let mut data = PolicyKey {
        policy_be: policy.to_be(),
        identity_be: identity.to_be(),
        direction: flow.direction,
        protocol: flow.protocol,
        port_be: port.to_be(),
    };
    if let Some(value) = POLICY.get(Key::new(POLICY_PREFIX_FULL_BITS, data)) {
        return *value;
    }
    if any == identity {
        return 0;
    }
    data.identity_be = any.to_be();
    match POLICY.get(Key::new(POLICY_PREFIX_FULL_BITS, data)) {
        Some(value) => *value,
        None => 0,
    }
}

/// Sets the FLOW_F_* flags of the flow's entry, if it has one.
#[inline(never)]
pub fn set_flow_flags(ep: &EndpointInfo, flow: &Flow, flags: u32) {
    if let Some(value) = FLOWS.get_ptr_mut(flow_key(ep, flow, flow.direction)) {
        // SAFETY: a valid map value; only this flow's packets write its flags.
        unsafe { (*value).flags = flags };
    }
}

/// The FLOW_F_* flags of the flow's entry; `missing` without one.
#[inline(never)]
pub fn flow_flags(ep: &EndpointInfo, flow: &Flow, missing: u32) -> u32 {
    match unsafe { FLOWS.get(flow_key(ep, flow, flow.direction)) } {
        Some(value) => value.flags,
        None => missing,
    }
}

/// A packet of a flow whose ClientHello the SNI check refused: dropped, counted and
/// reported (rate-limited per flow), under any policy.
#[inline(never)]
pub fn sni_refused(cfg: &Config, ep: &EndpointInfo, flow: &Flow) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    count_verdict(ep, flow, STAT_DROPPED);
    let report = Report {
        verdict: VERDICT_DROPPED,
        reason: REASON_SNI_MISMATCH,
        identity: remote_identity(cfg, flow),
        hook: HOOK_CGROUP_SKB,
        rule: 0,
    };
    emit(cfg, ep, flow, now, &report);
    Verdict::Drop
}

/// The SNI check found the flow's first payload naming no host the destination was learnt
/// for: the packet, counted as allowed by `decide`, is counted again as dropped (or
/// would-drop, in audit mode) and reported; the flow is marked refused, so its later
/// packets drop too (audit mode: no longer pending, so it is reported once).
#[inline(never)]
pub fn sni_mismatch(cfg: &Config, ep: &EndpointInfo, flow: &Flow) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    let audit = audits_denial(cfg, ep, flow.direction, REASON_SNI_MISMATCH);
    uncount_allowed(ep, flow);
    let (stat, verdict) = if audit {
        (STAT_WOULD_DROP, VERDICT_WOULD_DROP)
    } else {
        (STAT_DROPPED, VERDICT_DROPPED)
    };
    count_verdict(ep, flow, stat);
    let report = Report {
        verdict,
        reason: REASON_SNI_MISMATCH,
        identity: remote_identity(cfg, flow),
        hook: HOOK_CGROUP_SKB,
        rule: 0,
    };
    emit(cfg, ep, flow, now, &report);
    if audit {
        set_flow_flags(ep, flow, 0);
        Verdict::Pass
    } else {
        set_flow_flags(ep, flow, FLOW_F_SNI_DENIED);
        Verdict::Drop
    }
}

/// Takes back the count of an allowed packet (`count_verdict` with STAT_ALLOWED) in this
/// program run: the counters are per CPU, and a program does not migrate, so this is
/// exact.
fn uncount_allowed(ep: &EndpointInfo, flow: &Flow) {
    if let Some(value) = COUNTERS.get_ptr_mut(verdict_counter(STAT_ALLOWED, flow.direction)) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *value = (*value).saturating_sub(1) };
    }
    let index = endpoint_stats_index(ep.endpoint_id, flow.direction, STAT_ALLOWED);
    if let Some(entry) = ENDPOINT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*entry).packets = (*entry).packets.saturating_sub(1);
            (*entry).bytes = (*entry).bytes.saturating_sub(flow.bytes as u64);
        }
    }
}

/// Applies the flow's event rate limit: how many suppressed events the next one stands
/// for, or None to suppress this one (counted). Allowed-flow records are limited to one
/// per window; denials to EVENTS_PER_FLOW_WINDOW.
#[inline(never)]
fn rate_limit(ep: &EndpointInfo, flow: &Flow, now: u64, verdict: u8) -> Option<u32> {
    let key = flow_key(ep, flow, flow.direction);
    let limit = if verdict == VERDICT_ALLOWED {
        1
    } else {
        EVENTS_PER_FLOW_WINDOW
    };
    let Some(state) = EVENT_LIMITS.get_ptr_mut(key) else {
        let fresh = EventLimit {
            window_start_ns: now,
            events: 1,
            suppressed: 0,
        };
        // A full LRU map evicts; an insert that still fails only loses rate limiting.
        let _ = EVENT_LIMITS.insert(key, fresh, 0);
        return Some(0);
    };
    // SAFETY: a valid map value; concurrent CPUs may race on it, stat only makes the
    // limit approximate (the counters stay exact).
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.window_start_ns) >= EVENT_WINDOW_NS {
        let carried = state.suppressed;
        *state = EventLimit {
            window_start_ns: now,
            events: 1,
            suppressed: 0,
        };
        return Some(carried);
    }
    if state.events < limit {
        state.events += 1;
        return Some(0);
    }
    state.suppressed += 1;
    count(CNT_EVENTS_SUPPRESSED);
    None
}

fn emit(cfg: &Config, ep: &EndpointInfo, flow: &Flow, now: u64, report: &Report) {
    let Some(suppressed) = rate_limit(ep, flow, now, report.verdict) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_EVENTS_LOST);
        return;
    };
    // Written field by field into the ring buffer: an Event built on the stack first
    // would cost 80 bytes of the 512 the verifier allows the whole call chain.
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at reserved ring buffer memory the size of an Event; every field
    // is written before submit.
    unsafe {
        addr_of_mut!((*e).time_ns).write(now);
        addr_of_mut!((*e).generation).write(cfg.generation);
        addr_of_mut!((*e).endpoint_id).write(ep.endpoint_id);
        addr_of_mut!((*e).remote_identity).write(report.identity);
        addr_of_mut!((*e).suppressed).write(suppressed);
        addr_of_mut!((*e).verdict).write(report.verdict);
        addr_of_mut!((*e).reason).write(report.reason);
        addr_of_mut!((*e).direction).write(flow.direction);
        addr_of_mut!((*e).hook).write(report.hook);
        addr_of_mut!((*e).family).write(flow.family);
        addr_of_mut!((*e).protocol).write(flow.protocol);
        addr_of_mut!((*e).local_port).write(flow.local_port);
        addr_of_mut!((*e).remote_port).write(flow.remote_port);
        addr_of_mut!((*e)._pad).write([0; 2]);
        addr_of_mut!((*e).service).write(flow.service);
        addr_of_mut!((*e).local_addr).write(flow.local_addr);
        addr_of_mut!((*e).remote_addr).write(flow.remote_addr);
        addr_of_mut!((*e).rule).write(report.rule);
        addr_of_mut!((*e)._pad_end).write(0);
    }
    entry.submit(0);
    count(CNT_EVENTS_QUEUED);
}
