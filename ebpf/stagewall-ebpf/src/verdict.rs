//! The per-packet decision, the same for every hook. Its cost is a fixed number of map
//! lookups whatever the policy size:
//!
//! - CONFIG (array), ENDPOINTS (hash), FLOWS (LRU hash: is it a reply?);
//! - IPCACHE (LPM: the peer's identity);
//! - POLICY (LPM: the peer's identity), then POLICY again (LPM: any peer) on a miss;
//! - for an allowed packet whose replies need tracking, one FLOWS lookup and, at most
//!   once a second per flow, an update.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use stagewall_common::{
    CNT_ALLOWED_EGRESS, CNT_ALLOWED_INGRESS, CNT_DROPPED_EGRESS, CNT_DROPPED_INGRESS,
    CNT_EVENTS_LOST, CNT_FLOW_INSERT_FAILED, CNT_REPLIES, CNT_WOULD_DROP_EGRESS,
    CNT_WOULD_DROP_INGRESS, Config, DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EndpointInfo, Event, FAMILY_V4, FLOW_REFRESH_NS, FLOW_TIMEOUT_OTHER_NS,
    FLOW_TIMEOUT_TCP_NS, FlowKey, FlowValue, HOOK_CGROUP_SKB, HOOK_TC, IDENTITY_ANY,
    IDENTITY_WORLD_V4, IDENTITY_WORLD_V6, IPCACHE_PREFIX_BITS, IpcacheKey, MODE_AUDIT,
    POLICY_PREFIX_FULL_BITS, PROTO_TCP, PolicyKey, REASON_NO_RULE, VERDICT_DROPPED,
    VERDICT_WOULD_DROP,
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{CONFIG, EVENTS, FLOWS, IPCACHE, POLICY, count};

/// A packet from one endpoint's point of view.
pub struct Flow {
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
}

#[derive(PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Decides one packet (or connect/sendmsg) of a local endpoint. On a denial it counts and
/// reports the event (with `hook`) unless `report` is false, and returns Drop only in
/// enforce mode.
pub fn decide(cfg: &Config, ep: &EndpointInfo, flow: &Flow, hook: u8, report: bool) -> Verdict {
    // A workload's traffic to itself (loopback, or its own address, seen with equal
    // source and destination) never leaves it; as in Kubernetes, policy does not apply.
    if is_loopback(flow) || flow.local_addr == flow.remote_addr {
        return Verdict::Pass;
    }
    let ingress = flow.direction == DIR_INGRESS;
    let (isolated_flag, policy, other_isolated) = if ingress {
        (
            EP_ISOLATED_INGRESS,
            ep.ingress_policy,
            ep.flags & EP_ISOLATED_EGRESS != 0,
        )
    } else {
        (
            EP_ISOLATED_EGRESS,
            ep.egress_policy,
            ep.flags & EP_ISOLATED_INGRESS != 0,
        )
    };
    // connect/sendmsg decide before a packet exists: no local port to track, no packet to
    // count (the packets that follow are decided and counted by the packet hooks).
    let packet_hook = hook == HOOK_CGROUP_SKB || hook == HOOK_TC;
    let now = unsafe { bpf_ktime_get_ns() };

    if ep.flags & isolated_flag != 0 {
        if is_reply(ep, flow, now) {
            count(CNT_REPLIES);
            return Verdict::Pass;
        }
        let identity = remote_identity(cfg, flow);
        if !allowed_by_policy(policy, identity, flow) {
            if deny(cfg, flow, ep, identity, hook, report, now) == Verdict::Drop {
                return Verdict::Drop;
            }
            // Audit mode: the packet goes on, and its replies must count as replies (as
            // they would had it been allowed), not as violations of their own.
        } else if packet_hook {
            count(if ingress {
                CNT_ALLOWED_INGRESS
            } else {
                CNT_ALLOWED_EGRESS
            });
        }
    } else if packet_hook {
        count(if ingress {
            CNT_ALLOWED_INGRESS
        } else {
            CNT_ALLOWED_EGRESS
        });
    }
    // Replies only need tracking when the other direction is isolated.
    if other_isolated && packet_hook {
        track(ep, flow, now);
    }
    Verdict::Pass
}

fn is_loopback(flow: &Flow) -> bool {
    let a = &flow.remote_addr;
    if flow.family == FAMILY_V4 {
        a[0] == 127
    } else {
        a[..15].iter().all(|b| *b == 0) && a[15] == 1
    }
}

fn flow_key(ep: &EndpointInfo, flow: &Flow, origin: u8) -> FlowKey {
    FlowKey {
        endpoint_id: ep.endpoint_id,
        family: flow.family,
        protocol: flow.protocol,
        origin,
        _pad: 0,
        local_port: flow.local_port,
        remote_port: flow.remote_port,
        _pad2: 0,
        remote_addr: flow.remote_addr,
    }
}

fn opposite(direction: u8) -> u8 {
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
fn is_reply(ep: &EndpointInfo, flow: &Flow, now: u64) -> bool {
    let key = flow_key(ep, flow, opposite(flow.direction));
    match unsafe { FLOWS.get(key) } {
        Some(value) => now.saturating_sub(value.last_seen_ns) < timeout_ns(flow.protocol),
        None => false,
    }
}

fn track(ep: &EndpointInfo, flow: &Flow, now: u64) {
    let key = flow_key(ep, flow, flow.direction);
    if let Some(value) = unsafe { FLOWS.get(key) }
        && now.saturating_sub(value.last_seen_ns) < FLOW_REFRESH_NS
    {
        return;
    }
    let value = FlowValue { last_seen_ns: now };
    if FLOWS.insert(key, value, 0).is_err() {
        count(CNT_FLOW_INSERT_FAILED);
    }
}

fn remote_identity(cfg: &Config, flow: &Flow) -> u32 {
    let data = IpcacheKey {
        slot: cfg.active_slot as u8,
        family: flow.family,
        addr: flow.remote_addr,
        _pad: [0; 2],
    };
    let key = Key::new(IPCACHE_PREFIX_BITS + 128, data);
    match IPCACHE.get(&key) {
        Some(identity) => *identity,
        None if flow.family == FAMILY_V4 => IDENTITY_WORLD_V4,
        None => IDENTITY_WORLD_V6,
    }
}

fn allowed_by_policy(policy: u32, identity: u32, flow: &Flow) -> bool {
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
    if POLICY
        .get(Key::new(POLICY_PREFIX_FULL_BITS, data))
        .is_some()
    {
        return true;
    }
    data.identity_be = IDENTITY_ANY.to_be();
    POLICY
        .get(Key::new(POLICY_PREFIX_FULL_BITS, data))
        .is_some()
}

fn deny(
    cfg: &Config,
    flow: &Flow,
    ep: &EndpointInfo,
    identity: u32,
    hook: u8,
    report: bool,
    now: u64,
) -> Verdict {
    let audit = cfg.mode == MODE_AUDIT;
    let ingress = flow.direction == DIR_INGRESS;
    if report {
        count(match (audit, ingress) {
            (false, true) => CNT_DROPPED_INGRESS,
            (false, false) => CNT_DROPPED_EGRESS,
            (true, true) => CNT_WOULD_DROP_INGRESS,
            (true, false) => CNT_WOULD_DROP_EGRESS,
        });
        emit(
            cfg,
            ep,
            flow,
            identity,
            hook,
            if audit {
                VERDICT_WOULD_DROP
            } else {
                VERDICT_DROPPED
            },
            now,
        );
    }
    if audit { Verdict::Pass } else { Verdict::Drop }
}

fn emit(
    cfg: &Config,
    ep: &EndpointInfo,
    flow: &Flow,
    identity: u32,
    hook: u8,
    verdict: u8,
    now: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_EVENTS_LOST);
        return;
    };
    entry.write(Event {
        time_ns: now,
        generation: cfg.generation,
        endpoint_id: ep.endpoint_id,
        remote_identity: identity,
        verdict,
        reason: REASON_NO_RULE,
        direction: flow.direction,
        hook,
        family: flow.family,
        protocol: flow.protocol,
        local_port: flow.local_port,
        remote_port: flow.remote_port,
        _pad: 0,
        local_addr: flow.local_addr,
        remote_addr: flow.remote_addr,
    });
    entry.submit(0);
}
