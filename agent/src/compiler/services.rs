//! Services: their frontends as the kernel translates them at the socket. Each frontend
//! (virtual address, protocol, port) with backends becomes one SERVICES entry per backend
//! (map_keys::service_entries); a frontend without a ready backend is left to kube-proxy,
//! and the call is judged on the virtual address.
//!
//! Only TCP and UDP: the socket hooks see no other protocol. Backends of the other
//! address family are never used (a dual-stack Service has one frontend per family).

use std::net::SocketAddr;

use stagewall_common::SERVICE_BACKENDS_MAX;

use crate::policy::model::{ObjectName, Protocol, ServiceFrontend};

/// The Services of one compiled policy: the frontends the kernel translates, and the
/// Services' names by their number (events carry the number).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Services {
    /// Sorted; each with its backends sorted, deduplicated, of its family, and at most
    /// SERVICE_BACKENDS_MAX of them (the first ones in that order).
    pub frontends: Vec<ServiceFrontend>,
    /// Service names, sorted: number n is `names[n - 1]`.
    pub names: Vec<ObjectName>,
    /// Backends beyond SERVICE_BACKENDS_MAX that were left out (a frontend with more gets
    /// only the first ones).
    pub backends_left_out: usize,
}

impl Services {
    pub fn compile(frontends: &[ServiceFrontend]) -> Services {
        let mut services = Services::default();
        for f in frontends {
            if f.protocol == Protocol::Sctp {
                continue;
            }
            let mut backends: Vec<SocketAddr> = f
                .backends
                .iter()
                .filter(|b| b.is_ipv4() == f.address.is_ipv4())
                .copied()
                .collect();
            backends.sort();
            backends.dedup();
            if backends.is_empty() {
                continue;
            }
            let max = SERVICE_BACKENDS_MAX as usize;
            if backends.len() > max {
                services.backends_left_out += backends.len() - max;
                backends.truncate(max);
            }
            services.frontends.push(ServiceFrontend {
                backends,
                ..f.clone()
            });
        }
        services.frontends.sort();
        // One frontend per (address, protocol, port): two Services claiming the same is
        // an API server that let it happen; the first by name keeps it.
        services
            .frontends
            .dedup_by(|b, a| (a.address, a.protocol, a.port) == (b.address, b.protocol, b.port));
        services.names = services
            .frontends
            .iter()
            .map(|f| f.service.clone())
            .collect();
        services.names.sort();
        services.names.dedup();
        services
    }

    /// The number events carry for `service` (1 and up).
    pub fn number(&self, service: &ObjectName) -> u32 {
        self.names
            .binary_search(service)
            .map_or(0, |i| i as u32 + 1)
    }

    /// The Service an event's number names.
    pub fn name(&self, number: u32) -> Option<&ObjectName> {
        self.names.get((number as usize).checked_sub(1)?)
    }

    /// SERVICES entries one slot needs.
    pub fn entries(&self) -> usize {
        self.frontends.iter().map(|f| f.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::model::Protocol;

    fn frontend(name: &str, address: &str, port: u16, backends: &[&str]) -> ServiceFrontend {
        ServiceFrontend {
            service: ObjectName {
                namespace: "ml".into(),
                name: name.into(),
            },
            address: address.parse::<IpAddr>().unwrap(),
            protocol: Protocol::Udp,
            port,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn frontends_keep_their_family_sorted_backends_and_number_services_by_name() {
        let services = Services::compile(&[
            frontend(
                "registry",
                "10.96.0.20",
                80,
                &["10.1.0.9:8080", "10.1.0.3:8080"],
            ),
            frontend("dns", "10.96.0.10", 53, &["10.1.0.5:53", "[fd00::5]:53"]),
            frontend("dns", "fd00:96::10", 53, &["10.1.0.5:53", "[fd00::5]:53"]),
            // No ready backend: left to kube-proxy.
            frontend("empty", "10.96.0.30", 80, &[]),
        ]);
        assert_eq!(services.frontends.len(), 3);
        // Sorted by Service, then address.
        let registry = &services.frontends[2];
        assert_eq!(
            registry.backends,
            vec![
                "10.1.0.3:8080".parse().unwrap(),
                "10.1.0.9:8080".parse().unwrap()
            ]
        );
        assert_eq!(
            services.frontends[1].backends,
            vec!["[fd00::5]:53".parse().unwrap()]
        );
        assert_eq!(services.entries(), 4);
        let dns = &services.frontends[0].service;
        assert_eq!(services.number(dns), 1);
        assert_eq!(services.name(2), Some(&registry.service));
        assert_eq!(services.name(0), None);
        assert_eq!(services.name(3), None);
    }

    #[test]
    fn a_frontend_has_at_most_the_kernels_backends_and_says_how_many_were_left_out() {
        let many: Vec<String> = (0..SERVICE_BACKENDS_MAX + 5)
            .map(|i| format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let services = Services::compile(&[frontend("big", "10.96.0.40", 80, &many)]);
        assert_eq!(
            services.frontends[0].backends.len(),
            SERVICE_BACKENDS_MAX as usize
        );
        assert_eq!(services.backends_left_out, 5);
    }
}
