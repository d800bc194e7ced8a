//! The documents as written, deserialised with their positions (`Spanned`) before
//! anything is checked. Fields that Kubernetes objects carry but policy does not use (uid,
//! resourceVersion, status but a Node's addresses, ...) are accepted and ignored; unknown
//! fields in a spec are errors, since a misspelt field would silently change what a
//! policy allows.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawDocument {
    pub(super) api_version: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) metadata: Option<Spanned<RawMetadata>>,
    pub(super) spec: Option<Spanned<RawSpec>>,
    pub(super) status: Option<Spanned<RawStatus>>,
}

/// `status` of any kind: only a Node's `addresses` are read, the rest is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawStatus {
    pub(super) addresses: Option<Vec<Spanned<RawNodeAddress>>>,
}

/// One of a Node's `status.addresses`: `{type: InternalIP, address: 10.0.0.1}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawNodeAddress {
    #[serde(rename = "type")]
    pub(super) kind: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawMetadata {
    pub(super) name: Option<Spanned<String>>,
    pub(super) namespace: Option<Spanned<String>>,
    pub(super) labels: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) annotations: Option<Spanned<BTreeMap<String, String>>>,
}

/// The specs of every kind in one struct; `check_fields` rejects fields of another kind.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSpec {
    // NetworkPolicy
    pub(super) pod_selector: Option<Spanned<RawSelector>>,
    pub(super) policy_types: Option<Vec<Spanned<String>>>,
    pub(super) ingress: Option<Vec<Spanned<RawRule>>>,
    pub(super) egress: Option<Vec<Spanned<RawRule>>>,
    // Workload
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) systemd_unit: Option<Spanned<String>>,
    pub(super) interface: Option<Spanned<String>>,
    pub(super) addresses: Option<Vec<Spanned<String>>>,
    pub(super) ports: Option<Vec<Spanned<RawNamedPort>>>,
    pub(super) fail_mode: Option<Spanned<String>>,
    // Pipeline
    pub(super) stages: Option<Vec<Spanned<RawStage>>>,
    pub(super) flows: Option<Vec<Spanned<RawFlow>>>,
    pub(super) tenant_label: Option<Spanned<String>>,
    pub(super) default_deny: Option<bool>,
    // Namespace
    pub(super) finalizers: Option<serde::de::IgnoredAny>,
    // ClusterNetworkPolicy (with ingress and egress)
    pub(super) tier: Option<Spanned<String>>,
    pub(super) priority: Option<Spanned<i64>>,
    pub(super) subject: Option<Spanned<RawSubject>>,
    // Node: what `kubectl get node -o yaml` shows, accepted and ignored.
    #[serde(rename = "podCIDR")]
    pub(super) pod_cidr: Option<serde::de::IgnoredAny>,
    #[serde(rename = "podCIDRs")]
    pub(super) pod_cidrs: Option<serde::de::IgnoredAny>,
    #[serde(rename = "providerID")]
    pub(super) provider_id: Option<serde::de::IgnoredAny>,
    pub(super) taints: Option<serde::de::IgnoredAny>,
    pub(super) unschedulable: Option<serde::de::IgnoredAny>,
}

impl RawSpec {
    /// The fields present, as written, so each kind can reject those of another kind.
    pub(super) fn present(&self) -> Vec<&'static str> {
        [
            ("podSelector", self.pod_selector.is_some()),
            ("policyTypes", self.policy_types.is_some()),
            ("ingress", self.ingress.is_some()),
            ("egress", self.egress.is_some()),
            ("cgroup", self.cgroup.is_some()),
            ("systemdUnit", self.systemd_unit.is_some()),
            ("interface", self.interface.is_some()),
            ("addresses", self.addresses.is_some()),
            ("ports", self.ports.is_some()),
            ("failMode", self.fail_mode.is_some()),
            ("stages", self.stages.is_some()),
            ("flows", self.flows.is_some()),
            ("tenantLabel", self.tenant_label.is_some()),
            ("defaultDeny", self.default_deny.is_some()),
            ("finalizers", self.finalizers.is_some()),
            ("tier", self.tier.is_some()),
            ("priority", self.priority.is_some()),
            ("subject", self.subject.is_some()),
            ("podCIDR", self.pod_cidr.is_some()),
            ("podCIDRs", self.pod_cidrs.is_some()),
            ("providerID", self.provider_id.is_some()),
            ("taints", self.taints.is_some()),
            ("unschedulable", self.unschedulable.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) name: Spanned<String>,
    pub(super) selector: Spanned<RawSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawFlow {
    pub(super) from: Spanned<RawFlowEnd>,
    pub(super) to: Spanned<RawFlowEnd>,
    pub(super) ports: Option<Vec<Spanned<RawPort>>>,
}

/// One end of a flow: `{stage: name}`, `{cidr: ..., except: [...]}`,
/// `{workloads: {namespaceSelector: ..., podSelector: ...}}` or (a destination only)
/// `{fqdn: pypi.org}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawFlowEnd {
    pub(super) stage: Option<String>,
    pub(super) cidr: Option<Spanned<String>>,
    pub(super) except: Option<Vec<Spanned<String>>>,
    pub(super) workloads: Option<Spanned<RawPeer>>,
    pub(super) fqdn: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSelector {
    pub(super) match_labels: Option<BTreeMap<String, String>>,
    pub(super) match_expressions: Option<Vec<Spanned<RawRequirement>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRequirement {
    pub(super) key: String,
    pub(super) operator: String,
    pub(super) values: Option<Vec<String>>,
}

/// A rule of a NetworkPolicy (from or to, ports) or of a ClusterNetworkPolicy (name,
/// action, from or to, protocols): each kind rejects the other's fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) from: Option<Vec<Spanned<RawPeer>>>,
    pub(super) to: Option<Vec<Spanned<RawPeer>>>,
    pub(super) ports: Option<Vec<Spanned<RawPort>>>,
    // ClusterNetworkPolicy
    pub(super) name: Option<Spanned<String>>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) protocols: Option<Vec<Spanned<RawProtocol>>>,
}

impl RawRule {
    /// The fields of a ClusterNetworkPolicy rule present, as written.
    pub(super) fn cluster_fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("action", self.action.is_some()),
            ("protocols", self.protocols.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// A peer of a NetworkPolicy rule (podSelector, namespaceSelector, ipBlock) or of a
/// ClusterNetworkPolicy rule (exactly one of namespaces, pods, networks, nodes,
/// domainNames): each kind rejects the other's fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) pod_selector: Option<Spanned<RawSelector>>,
    pub(super) namespace_selector: Option<Spanned<RawSelector>>,
    pub(super) ip_block: Option<Spanned<RawIpBlock>>,
    /// stagewall's extension of a NetworkPolicy egress peer, in policy files (what
    /// `advise` writes for a destination known by name): a domain name or `*.` pattern.
    pub(super) fqdn: Option<Spanned<String>>,
    // ClusterNetworkPolicy
    pub(super) namespaces: Option<Spanned<RawSelector>>,
    pub(super) pods: Option<Spanned<RawNamespacedPod>>,
    pub(super) networks: Option<Vec<Spanned<String>>>,
    pub(super) nodes: Option<Spanned<RawSelector>>,
    pub(super) domain_names: Option<Vec<Spanned<String>>>,
}

impl RawPeer {
    /// The fields of a ClusterNetworkPolicy peer present, as written.
    pub(super) fn cluster_fields(&self) -> Vec<&'static str> {
        [
            ("namespaces", self.namespaces.is_some()),
            ("pods", self.pods.is_some()),
            ("networks", self.networks.is_some()),
            ("nodes", self.nodes.is_some()),
            ("domainNames", self.domain_names.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The fields of a NetworkPolicy peer present, as written.
    pub(super) fn network_policy_fields(&self) -> Vec<&'static str> {
        [
            ("podSelector", self.pod_selector.is_some()),
            ("namespaceSelector", self.namespace_selector.is_some()),
            ("ipBlock", self.ip_block.is_some()),
            ("fqdn", self.fqdn.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `spec.subject` of a ClusterNetworkPolicy: exactly one of the two.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSubject {
    pub(super) namespaces: Option<Spanned<RawSelector>>,
    pub(super) pods: Option<Spanned<RawNamespacedPod>>,
}

/// `pods` of a subject or peer: namespaceSelector (absent: every namespace) and
/// podSelector (required).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawNamespacedPod {
    pub(super) namespace_selector: Option<Spanned<RawSelector>>,
    pub(super) pod_selector: Option<Spanned<RawSelector>>,
}

/// One entry of a ClusterNetworkPolicy rule's `protocols`: exactly one field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawProtocol {
    pub(super) tcp: Option<Spanned<RawProtocolPorts>>,
    pub(super) udp: Option<Spanned<RawProtocolPorts>>,
    pub(super) sctp: Option<Spanned<RawProtocolPorts>>,
    pub(super) destination_named_port: Option<Spanned<String>>,
}

/// `tcp`, `udp` or `sctp`: `{destinationPort: {number: 80}}` or
/// `{destinationPort: {range: {start: 8000, end: 8080}}}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawProtocolPorts {
    pub(super) destination_port: Option<Spanned<RawDestinationPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawDestinationPort {
    pub(super) number: Option<Spanned<i64>>,
    pub(super) range: Option<Spanned<RawPortRange>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPortRange {
    pub(super) start: Option<Spanned<i64>>,
    pub(super) end: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawIpBlock {
    pub(super) cidr: Spanned<String>,
    pub(super) except: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPort {
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<IntOrString>>,
    pub(super) end_port: Option<Spanned<i64>>,
}

/// A Workload's declared port: `{name: http, port: 8080, protocol: TCP}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawNamedPort {
    pub(super) name: String,
    pub(super) port: i64,
    pub(super) protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum IntOrString {
    Int(i64),
    String(String),
}
