//! The documents as written, deserialised with their positions (`Spanned`) before
//! anything is checked. Fields that Kubernetes objects carry but policy does not use (uid,
//! resourceVersion, status, ...) are accepted and ignored; unknown fields in a spec are
//! errors, since a misspelt field would silently change what a policy allows.

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
    #[allow(dead_code)]
    pub(super) status: Option<serde::de::IgnoredAny>,
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

/// One end of a flow: `{stage: name}`, `{cidr: ..., except: [...]}` or
/// `{workloads: {namespaceSelector: ..., podSelector: ...}}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawFlowEnd {
    pub(super) stage: Option<String>,
    pub(super) cidr: Option<Spanned<String>>,
    pub(super) except: Option<Vec<Spanned<String>>>,
    pub(super) workloads: Option<Spanned<RawPeer>>,
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) from: Option<Vec<Spanned<RawPeer>>>,
    pub(super) to: Option<Vec<Spanned<RawPeer>>>,
    pub(super) ports: Option<Vec<Spanned<RawPort>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) pod_selector: Option<Spanned<RawSelector>>,
    pub(super) namespace_selector: Option<Spanned<RawSelector>>,
    pub(super) ip_block: Option<Spanned<RawIpBlock>>,
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
