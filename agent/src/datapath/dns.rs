//! The DNS proxy's maps: where the proxy listens and that it is alive (DNS_PROXY), which
//! resolvers' DNS goes through it (DNS_RESOLVERS), whose socket sent a query (DNS_CLIENTS,
//! written by the packet hooks) and the addresses learnt from the answers it held
//! (DNS_LEARNT). The map layout is in stagewall-common; the kernel's half is
//! ebpf/stagewall-ebpf/src/dns.rs.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, MapData, MapError};
use stagewall_common::{
    DnsLearntKey, DnsLearntValue, DnsProxyState, DnsSocket, FAMILY_V4, PROTO_TCP, PROTO_UDP,
};

use crate::{compiler::map_keys::family_and_bytes, datapath::error::DatapathError};

/// The proxy as the kernel sees it: its addresses and, per resolver the workloads call,
/// the port it listens on for that resolver's queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyLayout {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
    /// The first port; resolver `i` of `resolvers` is served on `port_first + i`.
    pub port_first: u16,
    pub resolvers: Vec<SocketAddr>,
}

impl ProxyLayout {
    /// The port the proxy serves `resolver`'s queries on.
    pub fn port_of(&self, index: usize) -> u16 {
        self.port_first + index as u16
    }
}

/// The map's form of a socket address of `protocol` (PROTO_TCP or PROTO_UDP).
pub fn dns_socket(protocol: u8, addr: SocketAddr) -> DnsSocket {
    let (family, bytes) = family_and_bytes(addr.ip());
    DnsSocket {
        family,
        protocol,
        port: addr.port(),
        addr: bytes,
    }
}

/// The address a map key holds.
pub fn ip_of(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

pub struct DnsMaps {
    proxy: Array<MapData, DnsProxyState>,
    resolvers: HashMap<MapData, DnsSocket, DnsSocket>,
    clients: HashMap<MapData, DnsSocket, u32>,
    learnt: HashMap<MapData, DnsLearntKey, DnsLearntValue>,
}

fn failed(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::WriteMap { map, source }
}

impl DnsMaps {
    pub(super) fn new(
        proxy: Array<MapData, DnsProxyState>,
        resolvers: HashMap<MapData, DnsSocket, DnsSocket>,
        clients: HashMap<MapData, DnsSocket, u32>,
        learnt: HashMap<MapData, DnsLearntKey, DnsLearntValue>,
    ) -> DnsMaps {
        DnsMaps {
            proxy,
            resolvers,
            clients,
            learnt,
        }
    }

    /// Writes where the proxy listens and which resolvers it serves (over UDP and TCP),
    /// removing resolvers a previous agent redirected that this one does not serve. The
    /// proxy is not alive until the first `alive_until`.
    pub fn set_layout(&mut self, layout: &ProxyLayout) -> Result<(), DatapathError> {
        let mut wanted = Vec::new();
        for (i, resolver) in layout.resolvers.iter().enumerate() {
            let proxy_ip = match resolver {
                SocketAddr::V4(_) => layout.v4.map(IpAddr::V4),
                SocketAddr::V6(_) => layout.v6.map(IpAddr::V6),
            };
            // A resolver of a family the proxy has no address of is not redirected.
            let Some(proxy_ip) = proxy_ip else { continue };
            let proxy = SocketAddr::new(proxy_ip, layout.port_of(i));
            for protocol in [PROTO_UDP, PROTO_TCP] {
                wanted.push((dns_socket(protocol, *resolver), dns_socket(protocol, proxy)));
            }
        }
        let stale: Vec<DnsSocket> = self
            .resolvers
            .keys()
            .flatten()
            .filter(|k| !wanted.iter().any(|(w, _)| w == k))
            .collect();
        for key in stale {
            let _ = self.resolvers.remove(&key);
        }
        for (resolver, proxy) in &wanted {
            self.resolvers
                .insert(resolver, proxy, 0)
                .map_err(failed("DNS_RESOLVERS"))?;
        }
        let mut state = self.proxy.get(&0, 0).map_err(failed("DNS_PROXY"))?;
        state.port_first = layout.port_first;
        state.port_count = layout.resolvers.len() as u16;
        state.addr_v4 = layout
            .v4
            .map(|a| family_and_bytes(a.into()).1)
            .unwrap_or_default();
        state.addr_v6 = layout.v6.map(|a| a.octets()).unwrap_or_default();
        self.proxy.set(0, state, 0).map_err(failed("DNS_PROXY"))
    }

    /// The proxy is alive until `until_ns` (CLOCK_MONOTONIC): the socket hooks redirect
    /// DNS to it until then. 0 stops the redirection at once.
    pub fn alive_until(&mut self, until_ns: u64) -> Result<(), DatapathError> {
        let mut state = self.proxy.get(&0, 0).map_err(failed("DNS_PROXY"))?;
        state.alive_until_ns = until_ns;
        self.proxy.set(0, state, 0).map_err(failed("DNS_PROXY"))
    }

    /// The endpoint whose socket `client` sent a query to the proxy over `protocol`.
    pub fn client(&self, protocol: u8, client: SocketAddr) -> Option<u32> {
        self.clients.get(&dns_socket(protocol, client), 0).ok()
    }

    pub fn write_learnt(
        &mut self,
        entries: &[(DnsLearntKey, DnsLearntValue)],
    ) -> Result<(), DatapathError> {
        for (key, value) in entries {
            self.learnt
                .insert(key, value, 0)
                .map_err(failed("DNS_LEARNT"))?;
        }
        Ok(())
    }

    /// Removes learnt entries; one already gone is no error.
    pub fn remove_learnt(&mut self, keys: &[DnsLearntKey]) {
        for key in keys {
            let _ = self.learnt.remove(key);
        }
    }

    /// Every learnt entry in the kernel (what a previous agent learnt, at start).
    pub fn learnt_entries(&self) -> Vec<(DnsLearntKey, DnsLearntValue)> {
        self.learnt.iter().flatten().collect()
    }
}
