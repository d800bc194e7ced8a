//! Services and EndpointSlices as the agent reads them, and the frontends built from
//! them: the Service's cluster IPs, external IPs, load-balancer IPs and, on this node's
//! addresses, its node ports, each with the ready endpoints of its EndpointSlices on the
//! matching port. Pure, fed with API objects as JSON.
//!
//! What kube-proxy does and this does too: an endpoint is used while it is ready (no
//! condition means ready), a slice's port is matched to the Service's by name and
//! protocol, `internalTrafficPolicy: Local` keeps this node's endpoints only. Not done
//! here (kube-proxy still does it for the calls this leaves alone): sessionAffinity (each
//! call draws a backend), falling back to serving-but-terminating endpoints, and headless
//! or ExternalName Services, which have no virtual address.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::policy::model::{ObjectName, Protocol, ServiceFrontend};

/// A Service's virtual addresses and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    name: ObjectName,
    /// Cluster IPs, external IPs and load-balancer ingress IPs.
    addresses: Vec<IpAddr>,
    ports: Vec<ServicePort>,
    local_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServicePort {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

/// An EndpointSlice's ready endpoints and ports, and the Service it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    service: ObjectName,
    /// Ready endpoints' addresses, with the node each is on.
    endpoints: Vec<(IpAddr, Option<String>)>,
    ports: Vec<(String, Protocol, u16)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    metadata: RawMeta,
    #[serde(default)]
    spec: RawServiceSpec,
    #[serde(default)]
    status: RawServiceStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    #[serde(default, rename = "externalIPs")]
    external_ips: Vec<String>,
    #[serde(default)]
    ports: Vec<RawServicePort>,
    internal_traffic_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServicePort {
    name: Option<String>,
    protocol: Option<String>,
    port: u16,
    node_port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawServiceStatus {
    #[serde(default)]
    load_balancer: RawLoadBalancer,
}

#[derive(Deserialize, Default)]
struct RawLoadBalancer {
    #[serde(default)]
    ingress: Vec<RawIngress>,
}

#[derive(Deserialize)]
struct RawIngress {
    ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSlice {
    metadata: RawMeta,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    ports: Option<Vec<RawSlicePort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: RawConditions,
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConditions {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct RawSlicePort {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<u16>,
}

fn protocol(name: Option<&str>) -> Protocol {
    match name {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn object_name(meta: &RawMeta) -> ObjectName {
    ObjectName {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone(),
    }
}

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A v1 Service's frontends, or an error saying what is wrong with the object.
pub fn service_info(object: &serde_json::Value) -> Result<ServiceInfo, String> {
    let service = RawService::deserialize(object).map_err(|e| format!("not a v1 Service: {e}"))?;
    let spec = service.spec;
    let mut addresses: Vec<IpAddr> = if spec.kind.as_deref() == Some("ExternalName") {
        Vec::new()
    } else {
        spec.cluster_ips
            .iter()
            .chain(&spec.cluster_ip)
            .chain(&spec.external_ips)
            .chain(
                service
                    .status
                    .load_balancer
                    .ingress
                    .iter()
                    .filter_map(|i| i.ip.as_ref()),
            )
            // "None": headless, no virtual address.
            .filter_map(|a| a.parse().ok())
            .collect()
    };
    addresses.sort();
    addresses.dedup();
    Ok(ServiceInfo {
        name: object_name(&service.metadata),
        addresses,
        ports: spec
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref()),
                port: p.port,
                node_port: p
                    .node_port
                    .filter(|_| matches!(spec.kind.as_deref(), Some("NodePort" | "LoadBalancer"))),
            })
            .collect(),
        local_only: spec.internal_traffic_policy.as_deref() == Some("Local"),
    })
}

/// A discovery.k8s.io/v1 EndpointSlice's ready endpoints, or an error.
pub fn slice_info(object: &serde_json::Value) -> Result<SliceInfo, String> {
    let slice =
        RawSlice::deserialize(object).map_err(|e| format!("not a v1 EndpointSlice: {e}"))?;
    let service = ObjectName {
        namespace: object_name(&slice.metadata).namespace,
        name: slice
            .metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .cloned()
            .unwrap_or_default(),
    };
    Ok(SliceInfo {
        service,
        endpoints: slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready != Some(false))
            .flat_map(|e| {
                e.addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .map(|a| (a, e.node_name.clone()))
            })
            .collect(),
        ports: slice
            .ports
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    protocol(p.protocol.as_deref()),
                    p.port?,
                ))
            })
            .collect(),
    })
}

/// The frontends of `services` with their backends from `slices`, as the agent on `node`
/// (whose addresses are `node_addresses`) sees them.
pub fn frontends<'a>(
    services: impl IntoIterator<Item = &'a ServiceInfo>,
    slices: &[&SliceInfo],
    node: &str,
    node_addresses: &[IpAddr],
) -> Vec<ServiceFrontend> {
    let mut frontends = Vec::new();
    for service in services {
        let own: Vec<&&SliceInfo> = slices
            .iter()
            .filter(|s| s.service == service.name)
            .collect();
        for port in &service.ports {
            let backends: Vec<SocketAddr> = own
                .iter()
                .flat_map(|slice| {
                    let target = slice
                        .ports
                        .iter()
                        .find(|(name, protocol, _)| {
                            *name == port.name && *protocol == port.protocol
                        })
                        .map(|(_, _, target)| *target);
                    slice
                        .endpoints
                        .iter()
                        .filter(|(_, on)| !service.local_only || on.as_deref() == Some(node))
                        .filter_map(move |(addr, _)| Some(SocketAddr::new(*addr, target?)))
                })
                .collect();
            let node_ports = port
                .node_port
                .into_iter()
                .flat_map(|p| node_addresses.iter().map(move |a| (*a, p)));
            let virtual_ports = service.addresses.iter().map(|a| (*a, port.port));
            for (address, port_number) in virtual_ports.chain(node_ports) {
                frontends.push(ServiceFrontend {
                    service: service.name.clone(),
                    address,
                    protocol: port.protocol,
                    port: port_number,
                    backends: backends.clone(),
                });
            }
        }
    }
    frontends
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dns_service() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                "externalIPs": ["192.0.2.10"],
                "ports": [
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053},
                    {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 5353}
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}, {"hostname": "lb.example"}]}}
        })
    }

    fn slice(name: &str, endpoints: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "dns", "protocol": "UDP", "port": 5353},
                      {"name": "dns-tcp", "protocol": "TCP", "port": 5354}]
        })
    }

    #[test]
    fn every_virtual_address_and_port_gets_the_ready_endpoints_on_the_slices_port() {
        let service = service_info(&dns_service()).unwrap();
        let a = slice_info(&slice(
            "kube-dns-a",
            json!([
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "nodeName": "node-a"},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}, "nodeName": "node-a"},
                {"addresses": ["10.1.1.7"], "nodeName": "node-b"}
            ]),
        ))
        .unwrap();
        let node_addresses: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap()];
        let frontends = frontends([&service], &[&a], "node-a", &node_addresses);
        let udp: Vec<(String, u16, Vec<String>)> = frontends
            .iter()
            .filter(|f| f.protocol == Protocol::Udp)
            .map(|f| {
                (
                    f.address.to_string(),
                    f.port,
                    f.backends.iter().map(|b| b.to_string()).collect(),
                )
            })
            .collect();
        let backends = vec!["10.1.0.5:5353".to_string(), "10.1.1.7:5353".to_string()];
        assert_eq!(
            udp,
            vec![
                ("10.96.0.10".into(), 53, backends.clone()),
                ("192.0.2.10".into(), 53, backends.clone()),
                ("192.0.2.20".into(), 53, backends.clone()),
                ("fd00:96::a".into(), 53, backends.clone()),
                // The node port, on this node's addresses.
                ("198.18.0.1".into(), 30053, backends),
            ]
        );
        let tcp = frontends
            .iter()
            .find(|f| f.protocol == Protocol::Tcp)
            .unwrap();
        assert_eq!(
            tcp.backends[0].port(),
            5354,
            "the slice's port of the same name"
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let mut object = dns_service();
        object["spec"]["internalTrafficPolicy"] = json!("Local");
        let service = service_info(&object).unwrap();
        let a = slice_info(&slice(
            "kube-dns-a",
            json!([
                {"addresses": ["10.1.0.5"], "nodeName": "node-a"},
                {"addresses": ["10.1.1.7"], "nodeName": "node-b"}
            ]),
        ))
        .unwrap();
        let frontends = frontends([&service], &[&a], "node-a", &[]);
        assert!(
            frontends
                .iter()
                .all(|f| f.backends == vec!["10.1.0.5:5353".parse().unwrap()]
                    || f.protocol == Protocol::Tcp)
        );
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontend() {
        let headless = json!({"metadata": {"name": "h", "namespace": "ml"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}});
        let external = json!({"metadata": {"name": "e", "namespace": "ml"},
            "spec": {"type": "ExternalName", "externalName": "db.example", "ports": [{"port": 80}]}});
        for object in [headless, external] {
            let service = service_info(&object).unwrap();
            assert!(frontends([&service], &[], "node-a", &[]).is_empty());
        }
    }

    #[test]
    fn an_object_that_is_not_a_service_says_what_was_expected() {
        let error =
            service_info(&json!({"metadata": {"name": "x"}, "spec": {"ports": "80"}})).unwrap_err();
        assert!(error.starts_with("not a v1 Service"), "{error}");
        let error = slice_info(&json!({"metadata": {"name": "x"}, "endpoints": {}})).unwrap_err();
        assert!(error.starts_with("not a v1 EndpointSlice"), "{error}");
    }
}
