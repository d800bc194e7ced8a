//! A pod's host-side interface, for TC enforcement: routed CNIs (Calico, and Cilium and
//! others in their routed modes) give each local pod a host route to its address alone
//! (/32 or /128) through its veth. Read from the kernel's routing tables in /proc, so no
//! netlink is needed. A pod without such a route (a bridged CNI) may still have a veth,
//! found through its network namespace (veths.rs): TC there is the backstop of its cgroup
//! enforcement.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// Pods' host-side interfaces: host routes to single addresses (address -> interface),
/// and the veths of pods without one (pod UID -> interface).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodInterfaces {
    routes: HashMap<IpAddr, String>,
    veths: BTreeMap<String, String>,
}

impl PodInterfaces {
    /// The routes of the agent's network namespace (the host's, in the DaemonSet).
    pub fn read() -> PodInterfaces {
        let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        PodInterfaces::parse(&v4, &v6)
    }

    /// With the veths of pods (by UID) found through their network namespaces.
    pub fn with_veths(self, veths: BTreeMap<String, String>) -> PodInterfaces {
        PodInterfaces { veths, ..self }
    }

    pub(super) fn parse(v4: &str, v6: &str) -> PodInterfaces {
        let mut routes = HashMap::new();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...; numbers in hex, the
        // address in the kernel's (little-endian) byte order.
        for line in v4.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[7] != "FFFFFFFF" {
                continue;
            }
            if let Ok(dest) = u32::from_str_radix(f[1], 16) {
                let addr = std::net::Ipv4Addr::from(dest.to_le_bytes());
                routes.insert(IpAddr::V4(addr), f[0].to_string());
            }
        }
        // destination prefix-length source source-length next-hop metric refcnt use
        // flags interface.
        for line in v6.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[1] != "80" || f[9] == "lo" {
                continue;
            }
            if let Ok(dest) = u128::from_str_radix(f[0], 16) {
                routes.insert(IpAddr::V6(dest.into()), f[9].to_string());
            }
        }
        PodInterfaces {
            routes,
            veths: BTreeMap::new(),
        }
    }

    /// The interface of the first address with a host route.
    pub fn interface(&self, addresses: &[IpAddr]) -> Option<&str> {
        addresses
            .iter()
            .find_map(|a| self.routes.get(a))
            .map(String::as_str)
    }

    /// The interface TC backstops a cgroup-enforced pod on: its host route's, else its
    /// veth's.
    pub fn backstop(&self, uid: &str, addresses: &[IpAddr]) -> Option<&str> {
        self.interface(addresses)
            .or_else(|| self.veths.get(uid).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_to_single_addresses_name_the_pods_interface() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  cali1a2b3c\t0501F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                  eth0\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let v6 = "fd000000000000000000000000000005 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 cali1a2b3c\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 80200001       lo\n";
        let routes = PodInterfaces::parse(v4, v6);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(routes.interface(&[ip("10.244.1.5")]), Some("cali1a2b3c"));
        assert_eq!(
            routes.interface(&[ip("10.244.0.9"), ip("fd00::5")]),
            Some("cali1a2b3c")
        );
        assert_eq!(
            routes.interface(&[ip("10.244.0.9")]),
            None,
            "a subnet route is no pod's"
        );
        assert_eq!(routes.interface(&[ip("::1")]), None);
    }
}
