//! Egress by name: the kernel's half of the agent's DNS proxy.
//!
//! A workload with name rules (EP_NAME_RULES) that calls a resolver in DNS_RESOLVERS has
//! the call redirected to the agent's proxy (`redirect`, at connect and sendmsg, after the
//! verdict judged the resolver it named), while the proxy is alive; recvmsg and
//! getpeername show the resolver again (SERVICE_NAT, as for Services). The packet hooks
//! pass the workload's packets to the proxy and its answers (`proxy_traffic`), noting
//! whose socket sent each query (DNS_CLIENTS), which is how the proxy knows for whom it
//! learns. The proxy writes what the answers gave for allowed names into DNS_LEARNT
//! before it hands the answer on; `learnt` reads it for a new flow no address rule
//! allows.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use stagewall_common::{
    DIR_EGRESS, DnsLearntKey, DnsLearntValue, DnsProxyState, DnsSocket, EP_NAME_RULES,
    EP_QUARANTINED, EndpointInfo, FAMILY_V4, PROTO_TCP, PROTO_UDP, ServiceNat, ServiceNatKey,
};

use crate::{
    maps::{DNS_CLIENTS, DNS_LEARNT, DNS_PROXY, DNS_RESOLVERS, SERVICE_NAT},
    verdict::Flow,
};

/// The proxy socket a call of the workload to `addr`:`port` goes to instead: the call
/// names a resolver whose DNS goes through the proxy, the workload has name rules, and
/// the proxy is alive. None otherwise (the call goes where it was made).
#[inline(never)]
pub fn proxy_for(
    ep: &EndpointInfo,
    family: u8,
    protocol: u8,
    addr: &[u8; 16],
    port: u16,
) -> Option<&'static DnsSocket> {
    if ep.flags & (EP_NAME_RULES | EP_QUARANTINED) != EP_NAME_RULES {
        return None;
    }
    let state = DNS_PROXY.get(0)?;
    if unsafe { bpf_ktime_get_ns() } >= state.alive_until_ns {
        return None;
    }
    let resolver = DnsSocket {
        family,
        protocol,
        port,
        addr: *addr,
    };
    unsafe { DNS_RESOLVERS.get(resolver) }
}

/// Remembers that the socket `cookie` called the resolver `resolver`:`port` and went to
/// the proxy, so its answers show the resolver's address again.
#[inline(never)]
pub fn remember(cookie: u64, proxy: &DnsSocket, resolver: &[u8; 16], port: u16) {
    let key = ServiceNatKey {
        cookie,
        family: proxy.family,
        _pad: 0,
        port: proxy.port,
        _pad2: 0,
        addr: proxy.addr,
    };
    let value = ServiceNat {
        addr: *resolver,
        port,
        _pad: 0,
        service: 0,
    };
    let _ = SERVICE_NAT.insert(key, value, 0);
}

fn is_proxy_socket(state: &DnsProxyState, family: u8, addr: &[u8; 16], port: u16) -> bool {
    let proxy = if family == FAMILY_V4 {
        &state.addr_v4
    } else {
        &state.addr_v6
    };
    port.wrapping_sub(state.port_first) < state.port_count && addr == proxy && *addr != [0; 16]
}

/// A packet of a named workload to the proxy, or the proxy's answer: it passes (the call
/// was judged against the resolver it named). A query's sender is noted in DNS_CLIENTS
/// first, so the proxy, which receives the packet after this hook, finds whose it is.
#[inline(never)]
pub fn proxy_traffic(ep: &EndpointInfo, flow: &Flow) -> bool {
    // Quarantine comes first: a quarantined workload reaches no proxy either.
    if ep.flags & (EP_NAME_RULES | EP_QUARANTINED) != EP_NAME_RULES
        || (flow.protocol != PROTO_UDP && flow.protocol != PROTO_TCP)
    {
        return false;
    }
    let Some(state) = DNS_PROXY.get(0) else {
        return false;
    };
    // Only while the proxy is alive: once it is gone, whatever may listen on its address
    // and ports is decided by policy like anything else.
    if !is_proxy_socket(state, flow.family, &flow.remote_addr, flow.remote_port)
        || unsafe { bpf_ktime_get_ns() } >= state.alive_until_ns
    {
        return false;
    }
    if flow.direction == DIR_EGRESS {
        let client = DnsSocket {
            family: flow.family,
            protocol: flow.protocol,
            port: flow.local_port,
            addr: flow.local_addr,
        };
        // A full LRU map evicts the least recently used; a failed insert leaves the proxy
        // not knowing the client, which it answers without learning.
        let _ = DNS_CLIENTS.insert(client, ep.endpoint_id, 0);
    }
    true
}

/// What the workload's DNS answers taught about the flow's destination: the name
/// identities to look up, if any are in force. A new flow needs an answer whose TTL (plus
/// the grace) has not run out; a flow allowed before (`established`, re-decided after a
/// policy change) is never cut by expiry, only by the entry's removal.
#[inline(never)]
pub fn learnt(
    ep: &EndpointInfo,
    flow: &Flow,
    established: bool,
) -> Option<&'static DnsLearntValue> {
    if ep.flags & EP_NAME_RULES == 0 || flow.direction != DIR_EGRESS {
        return None;
    }
    let key = DnsLearntKey {
        endpoint_id: ep.endpoint_id,
        family: flow.family,
        _pad: [0; 3],
        addr: flow.remote_addr,
    };
    let value = unsafe { DNS_LEARNT.get(key) }?;
    if !established && unsafe { bpf_ktime_get_ns() } >= value.expires_ns {
        return None;
    }
    Some(value)
}
