//! The one place that encodes the keys of the policy maps (ENDPOINTS, SELF_ADDRS,
//! IPCACHE, POLICY, SERVICES) and the policy slot each carries; the compiler and the datapath both
//! build keys here and nowhere else. It lives below the datapath (the layer rule lets the
//! datapath import the compiler, not the other way round) and does no I/O.
//!
//! Slots: every entry belongs to policy slot 0 or 1 (see datapath/slots.rs). ENDPOINTS,
//! SELF_ADDRS, IPCACHE and SERVICES keys carry the slot in a field; POLICY keys carry it in the top
//! bit of the policy id (POLICY_SLOT_BIT), which ENDPOINTS values name too.
//!
//! The kernel programs build their lookup keys from the same stagewall-common types
//! (ebpf/stagewall-ebpf/src/main.rs and verdict.rs).

use std::net::IpAddr;

use ipnet::IpNet;
use stagewall_common::{
    DIR_EGRESS, DIR_INGRESS, ENDPOINT_KIND_CGROUP, ENDPOINT_KIND_IFINDEX, EndpointKey, Event,
    FAMILY_V4, FAMILY_V6, FLOW_KIND_FLOW, FlowKey, IPCACHE_PREFIX_BITS, IpcacheKey,
    POLICY_PREFIX_FIXED_BITS, POLICY_PREFIX_PROTO_BITS, POLICY_SLOT_BIT, PolicyKey, SelfAddrKey,
    ServiceBackend, ServiceKey,
};

use super::{PolicyEntry, PortPrefix, Services};
use crate::policy::model::Direction;

/// The EVENT_LIMITS key of the flow an event is about: the kernel's rate_limit keys it
/// by the same fields of the flow (verdict.rs flow_key, origin = the event's direction).
pub fn event_flow_key(event: &Event) -> FlowKey {
    FlowKey {
        endpoint_id: event.endpoint_id,
        family: event.family,
        protocol: event.protocol,
        origin: event.direction,
        kind: FLOW_KIND_FLOW,
        local_port: event.local_port,
        remote_port: event.remote_port,
        fragment_id: 0,
        remote_addr: event.remote_addr,
    }
}

/// The key of an LPM trie entry: (prefix length in bits, data).
pub type LpmKey<K> = (u32, K);

/// The DIR_* number of a direction, as keys, events and flags carry it.
pub fn direction_number(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// A compiled policy id as the kernel sees it in slot `slot` (0 stays "not isolated").
pub fn slot_policy_id(policy: u32, slot: u32) -> u32 {
    if policy != 0 && slot == 1 {
        policy | POLICY_SLOT_BIT
    } else {
        policy
    }
}

/// The POLICY key of `entry` in slot `slot`.
pub fn policy_key(entry: &PolicyEntry, slot: u32) -> LpmKey<PolicyKey> {
    let policy = slot_policy_id(entry.policy, slot);
    let (prefix_len, protocol, port) = match (entry.protocol, entry.ports) {
        (None, _) => (POLICY_PREFIX_FIXED_BITS, 0, 0),
        (Some(p), None) => (POLICY_PREFIX_PROTO_BITS, p, 0),
        (Some(p), Some(ports)) => (POLICY_PREFIX_PROTO_BITS + ports.bits as u32, p, ports.value),
    };
    (
        prefix_len,
        PolicyKey {
            policy_be: policy.to_be(),
            identity_be: entry.identity.to_be(),
            direction: direction_number(entry.direction),
            protocol,
            port_be: port.to_be(),
        },
    )
}

/// The entry a POLICY key holds, whatever its slot: what `policy_key` encoded, read back
/// (for `stagewall get`). None for a direction number no key is written with.
pub fn policy_entry_of_key((prefix_len, key): &LpmKey<PolicyKey>) -> Option<PolicyEntry> {
    let direction = direction_of_number(key.direction)?;
    let (protocol, ports) = if *prefix_len <= POLICY_PREFIX_FIXED_BITS {
        (None, None)
    } else if *prefix_len == POLICY_PREFIX_PROTO_BITS {
        (Some(key.protocol), None)
    } else {
        let bits = prefix_len.checked_sub(POLICY_PREFIX_PROTO_BITS)?;
        let ports = PortPrefix {
            value: u16::from_be(key.port_be),
            bits: u8::try_from(bits).ok().filter(|b| *b <= 16)?,
        };
        (Some(key.protocol), Some(ports))
    };
    Some(PolicyEntry {
        policy: u32::from_be(key.policy_be) & !POLICY_SLOT_BIT,
        identity: u32::from_be(key.identity_be),
        direction,
        protocol,
        ports,
    })
}

/// The direction a DIR_* number names.
pub fn direction_of_number(number: u8) -> Option<Direction> {
    match number {
        DIR_INGRESS => Some(Direction::Ingress),
        DIR_EGRESS => Some(Direction::Egress),
        _ => None,
    }
}

/// The slot a POLICY key belongs to (the top bit of its policy id).
pub fn policy_key_slot(key: &PolicyKey) -> u32 {
    u32::from(u32::from_be(key.policy_be) & POLICY_SLOT_BIT != 0)
}

/// The ENDPOINTS key of a cgroup workload (its cgroup id) in slot `slot`.
pub fn cgroup_endpoint_key(slot: u32, cgroup_id: u64) -> EndpointKey {
    EndpointKey {
        slot,
        kind: ENDPOINT_KIND_CGROUP,
        id: cgroup_id,
    }
}

/// The ENDPOINTS key of an interface workload (its ifindex) in slot `slot`.
pub fn interface_endpoint_key(slot: u32, ifindex: u32) -> EndpointKey {
    EndpointKey {
        slot,
        kind: ENDPOINT_KIND_IFINDEX,
        id: ifindex as u64,
    }
}

/// The slot an ENDPOINTS key belongs to.
pub fn endpoint_key_slot(key: &EndpointKey) -> u32 {
    key.slot
}

/// The SELF_ADDRS key of an endpoint's own address in slot `slot`.
pub fn self_addr_key(slot: u32, endpoint_id: u32, addr: IpAddr) -> SelfAddrKey {
    let (family, addr) = family_and_bytes(addr);
    SelfAddrKey {
        slot,
        endpoint_id,
        family,
        _pad: [0; 3],
        addr,
    }
}

/// The slot a SELF_ADDRS key belongs to.
pub fn self_addr_key_slot(key: &SelfAddrKey) -> u32 {
    key.slot
}

/// The IPCACHE key of a prefix in slot `slot`: slot and family bytes, then the address.
pub fn ipcache_key(slot: u32, prefix: &IpNet) -> LpmKey<IpcacheKey> {
    let (family, addr) = family_and_bytes(prefix.addr());
    let data = IpcacheKey {
        slot: slot as u8,
        family,
        addr,
        _pad: [0; 2],
    };
    (IPCACHE_PREFIX_BITS + prefix.prefix_len() as u32, data)
}

/// The prefix an IPCACHE key holds, whatever its slot: what `ipcache_key` encoded, read
/// back (for `stagewall get`). None for a family or length no key is written with.
pub fn ipcache_prefix_of_key((prefix_len, key): &LpmKey<IpcacheKey>) -> Option<IpNet> {
    let len = u8::try_from(prefix_len.checked_sub(IPCACHE_PREFIX_BITS)?).ok()?;
    let addr = match key.family {
        FAMILY_V4 => IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]),
        FAMILY_V6 => IpAddr::from(key.addr),
        _ => return None,
    };
    IpNet::new(addr, len).ok()
}

/// The slot an IPCACHE key belongs to.
pub fn ipcache_key_slot(key: &IpcacheKey) -> u32 {
    u32::from(key.slot)
}

/// The SERVICES entries of slot `slot`: per frontend, one per backend, numbered from 0,
/// each saying how many the frontend has.
pub fn service_entries(
    slot: u32,
    services: &Services,
) -> impl Iterator<Item = (ServiceKey, ServiceBackend)> + '_ {
    services.frontends.iter().flat_map(move |f| {
        let (family, addr) = family_and_bytes(f.address);
        let number = services.number(&f.service);
        f.backends.iter().enumerate().map(move |(i, b)| {
            let key = ServiceKey {
                slot: slot as u8,
                family,
                protocol: f.protocol.number(),
                _pad: 0,
                port: f.port,
                backend: i as u16,
                addr,
            };
            let backend = ServiceBackend {
                addr: family_and_bytes(b.ip()).1,
                port: b.port(),
                backends: f.backends.len() as u16,
                service: number,
            };
            (key, backend)
        })
    })
}

/// The slot a SERVICES key belongs to.
pub fn service_key_slot(key: &ServiceKey) -> u32 {
    u32::from(key.slot)
}

/// An address as the kernel programs hold it: family, and the bytes (IPv4 in the first 4).
pub fn family_and_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(a) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::PROTO_TCP;

    use super::*;

    /// Egress to identity 300 on TCP ports 8192-9215 (a 6-bit block), policy 7.
    fn tcp_block_entry() -> PolicyEntry {
        PolicyEntry {
            policy: 7,
            identity: 300,
            direction: Direction::Egress,
            protocol: Some(PROTO_TCP),
            ports: Some(PortPrefix {
                value: 8192,
                bits: 6,
            }),
        }
    }

    /// `stagewall get` reads back what was written: every key decodes to its entry.
    #[test]
    fn keys_decode_to_what_was_encoded() {
        let entry = tcp_block_entry();
        for entry in [
            entry,
            PolicyEntry {
                ports: None,
                ..entry
            },
            PolicyEntry {
                protocol: None,
                ports: None,
                direction: Direction::Ingress,
                ..entry
            },
            PolicyEntry {
                ports: Some(PortPrefix {
                    value: 443,
                    bits: 16,
                }),
                ..entry
            },
        ] {
            for slot in [0, 1] {
                assert_eq!(policy_entry_of_key(&policy_key(&entry, slot)), Some(entry));
            }
        }
        for prefix in ["10.1.0.0/16", "10.1.2.3/32", "fd00::/8", "0.0.0.0/0"] {
            let prefix: IpNet = prefix.parse().unwrap();
            assert_eq!(
                ipcache_prefix_of_key(&ipcache_key(1, &prefix)),
                Some(prefix)
            );
        }
    }

    #[test]
    fn lpm_keys_encode_slot_protocol_and_port_bits() {
        let entry = tcp_block_entry();
        let (len, key) = policy_key(&entry, 1);
        assert_eq!(len, 86);
        assert_eq!(u32::from_be(key.policy_be), 7 | POLICY_SLOT_BIT);
        assert_eq!(u32::from_be(key.identity_be), 300);
        assert_eq!(u16::from_be(key.port_be), 8192);
        assert_eq!(key.direction, DIR_EGRESS);
        let any = PolicyEntry {
            protocol: None,
            ports: None,
            ..entry
        };
        assert_eq!(policy_key(&any, 0).0, POLICY_PREFIX_FIXED_BITS);
    }

    #[test]
    fn every_key_says_its_slot() {
        let entry = PolicyEntry {
            policy: 7,
            identity: 300,
            direction: Direction::Ingress,
            protocol: None,
            ports: None,
        };
        let prefix: IpNet = "10.1.0.0/16".parse().unwrap();
        let addr: IpAddr = "fd00::1".parse().unwrap();
        for slot in [0, 1] {
            assert_eq!(policy_key_slot(&policy_key(&entry, slot).1), slot);
            assert_eq!(endpoint_key_slot(&cgroup_endpoint_key(slot, 42)), slot);
            assert_eq!(endpoint_key_slot(&interface_endpoint_key(slot, 3)), slot);
            assert_eq!(self_addr_key_slot(&self_addr_key(slot, 5, addr)), slot);
            assert_eq!(ipcache_key_slot(&ipcache_key(slot, &prefix).1), slot);
            let services = Services::compile(&[crate::policy::model::ServiceFrontend {
                service: crate::policy::model::ObjectName {
                    namespace: "ml".into(),
                    name: "dns".into(),
                },
                address: "10.96.0.10".parse().unwrap(),
                protocol: crate::policy::model::Protocol::Udp,
                port: 53,
                backends: vec!["10.1.0.5:5353".parse().unwrap()],
            }]);
            for (key, _) in service_entries(slot, &services) {
                assert_eq!(service_key_slot(&key), slot);
            }
        }
        // Policy id 0 (not isolated) is the same in both slots.
        assert_eq!(slot_policy_id(0, 1), 0);
    }

    #[test]
    fn ipcache_keys_put_the_address_after_slot_and_family() {
        let (len, key) = ipcache_key(1, &"10.1.0.0/16".parse().unwrap());
        assert_eq!(len, IPCACHE_PREFIX_BITS + 16);
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(key.addr[..4], [10, 1, 0, 0]);
        assert_eq!(key.addr[4..], [0; 12]);
        let key = self_addr_key(0, 9, "fd00::1".parse().unwrap());
        assert_eq!(key.family, FAMILY_V6);
        assert_eq!(key.addr[15], 1);
    }

    #[test]
    fn service_entries_number_backends_and_say_how_many_there_are() {
        use crate::policy::model::{ObjectName, Protocol, ServiceFrontend};
        let services = Services::compile(&[ServiceFrontend {
            service: ObjectName {
                namespace: "ml".into(),
                name: "registry".into(),
            },
            address: "10.96.0.20".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
            backends: vec![
                "10.1.0.9:8080".parse().unwrap(),
                "10.1.0.3:8081".parse().unwrap(),
            ],
        }]);
        let entries: Vec<_> = service_entries(1, &services).collect();
        assert_eq!(entries.len(), 2);
        for (i, (key, backend)) in entries.iter().enumerate() {
            assert_eq!(key.backend, i as u16);
            assert_eq!(
                (key.slot, key.family, key.protocol),
                (1, FAMILY_V4, PROTO_TCP)
            );
            assert_eq!(
                (key.port, key.addr[..4].to_vec()),
                (80, vec![10, 96, 0, 20])
            );
            assert_eq!((backend.backends, backend.service), (2, 1));
        }
        assert_eq!(entries[0].1.addr[..4], [10, 1, 0, 3]);
        assert_eq!(entries[0].1.port, 8081);
        assert_eq!(entries[1].1.port, 8080);
    }
}
