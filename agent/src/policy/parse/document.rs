//! YAML text to the policy model: the documents of a text, each dispatched on its
//! apiVersion and kind after the metadata every kind shares (name, namespace, labels, the
//! mode annotation) is checked. Namespaces and Nodes are read here; the other kinds in
//! network_policy.rs, cluster_network_policy.rs and stagewall_kinds.rs.

use std::{net::IpAddr, path::Path};

use serde_saphyr::Spanned;

use super::{
    parser::DocumentParser,
    raw::{RawDocument, RawSpec, RawStatus},
};
use crate::policy::{
    error::{PolicyError, PolicyErrors},
    model::{
        FAIL_MODE_ANNOTATION, Labels, MODE_ANNOTATION, Mode, Namespace, Node, ObjectName, PolicySet,
    },
};

pub const API_NETWORKING: &str = "networking.k8s.io/v1";
pub const API_CORE: &str = "v1";
pub const API_STAGEWALL: &str = "stagewall.io/v1alpha1";
pub const API_POLICY: &str = "policy.networking.k8s.io/v1alpha2";

/// Parses one file's documents into `set` (cross-document checks are `validate_set`'s).
pub fn parse_into(file: &Path, text: &str, set: &mut PolicySet) -> Result<(), PolicyErrors> {
    parse_text(file, text, 0, set)
}

/// Parses YAML text that starts after line `line_offset` of `file` (a part of the file
/// split at document markers, or all of it) into `set`; lines in errors and origins are
/// the file's.
pub fn parse_text(
    file: &Path,
    text: &str,
    line_offset: u32,
    set: &mut PolicySet,
) -> Result<(), PolicyErrors> {
    let docs: Vec<RawDocument> = serde_saphyr::from_multiple(text).map_err(|e| {
        let line = e
            .location()
            .map(|l| l.line() as u32 + line_offset)
            .unwrap_or(line_offset);
        PolicyErrors(vec![PolicyError {
            file: file.to_path_buf(),
            line,
            message: format!("invalid YAML document: {}", first_line(&e.to_string())),
        }])
    })?;
    let mut errors = Vec::new();
    for doc in docs {
        let mut parser = DocumentParser {
            file,
            line_offset,
            errors: &mut errors,
        };
        parser.document(doc, set);
    }
    PolicyErrors::result(errors, ())
}

/// serde-saphyr renders errors with a source snippet; the first line holds the message.
fn first_line(rendered: &str) -> String {
    rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(rendered)
        .trim()
        .to_string()
}

impl DocumentParser<'_> {
    pub(super) fn document(&mut self, doc: RawDocument, set: &mut PolicySet) {
        let (Some(api), Some(kind)) = (&doc.api_version, &doc.kind) else {
            let line = doc
                .metadata
                .as_ref()
                .map(|m| self.line(m))
                .unwrap_or(self.line_offset + 1);
            self.error(line, "document has no apiVersion or kind; expected e.g. apiVersion: networking.k8s.io/v1, kind: NetworkPolicy");
            return;
        };
        let line = self.line(kind);
        let Some(metadata) = doc.metadata else {
            self.error(line, "document has no metadata; expected metadata.name");
            return;
        };
        let meta_line = self.line(&metadata);
        let meta = metadata.value;
        let Some(name) = meta.name else {
            self.error(meta_line, "metadata has no name; expected metadata.name");
            return;
        };
        if !self.check_dns_name(&name, "metadata.name") {
            return;
        }
        let namespace = match &meta.namespace {
            Some(ns) if self.check_dns_name(ns, "metadata.namespace") => ns.value.clone(),
            Some(_) => return,
            None => "default".to_string(),
        };
        let namespace_line = meta.namespace.as_ref().map(|n| self.line(n));
        let labels = match meta.labels {
            Some(l) => match self.labels(&l.value, self.line(&l)) {
                Some(labels) => labels,
                None => return,
            },
            None => Labels::new(),
        };
        let object = ObjectName {
            namespace,
            name: name.value.clone(),
        };
        let mode = match meta
            .annotations
            .as_ref()
            .and_then(|a| Some((self.line(a), a.value.get(MODE_ANNOTATION)?)))
        {
            Some((line, value)) => match self.mode(value, line, kind.value.as_str()) {
                Some(mode) => Some(mode),
                None => return,
            },
            None => None,
        };
        let spec = doc.spec;
        let status = doc.status;
        match (api.value.as_str(), kind.value.as_str()) {
            (API_NETWORKING, "NetworkPolicy") => {
                let Some(spec) = spec else {
                    self.error(line, "NetworkPolicy has no spec; expected spec.podSelector");
                    return;
                };
                if let Some(p) = self.network_policy(object, spec, mode, line) {
                    set.policies.push(p);
                }
            }
            (API_STAGEWALL, "Workload") => {
                let spec = spec.map(|s| (self.line(&s), s.value));
                let (spec_line, spec) = spec.unwrap_or((line, RawSpec::default()));
                if let Some(w) = self.workload(object, labels, spec, spec_line, line) {
                    set.workloads.push(w);
                }
            }
            (API_STAGEWALL, "Pipeline") => {
                let Some(spec) = spec else {
                    self.error(line, "Pipeline has no spec; expected spec.stages and spec.flows");
                    return;
                };
                if let Some(p) = self.pipeline(object, spec, mode, line) {
                    set.pipelines.push(p);
                }
            }
            (API_POLICY, "ClusterNetworkPolicy") => {
                if let Some(ns_line) = namespace_line {
                    self.error(ns_line, "ClusterNetworkPolicy is cluster-scoped; expected no metadata.namespace");
                    return;
                }
                let Some(spec) = spec else {
                    self.error(line, "ClusterNetworkPolicy has no spec; expected spec.tier, spec.priority and spec.subject");
                    return;
                };
                if let Some(p) = self.cluster_network_policy(object.name, spec, mode, line) {
                    set.cluster_policies.push(p);
                }
            }
            (_, old @ ("AdminNetworkPolicy" | "BaselineAdminNetworkPolicy")) => {
                let tier = if old == "AdminNetworkPolicy" { "Admin" } else { "Baseline" };
                self.error(line, format!("{old} is the API's earlier form; expected kind ClusterNetworkPolicy of apiVersion {API_POLICY} with spec.tier: {tier}"));
            }
            (API_CORE, "Namespace") => {
                if let Some(s) = &spec
                    && !self.only_fields(&s.value, self.line(s), "Namespace", &["finalizers"]) {
                        return;
                    }
                let fail_mode = match meta
                    .annotations
                    .as_ref()
                    .and_then(|a| Some((self.line(a), a.value.get(FAIL_MODE_ANNOTATION)?)))
                {
                    Some((line, value)) => {
                        let field = format!("annotation {FAIL_MODE_ANNOTATION}");
                        match self.fail_mode(value, line, &field) {
                            Some(mode) => Some(mode),
                            None => return,
                        }
                    }
                    None => None,
                };
                set.namespaces.push(Namespace {
                    name: name.value,
                    labels,
                    fail_mode,
                    mode,
                    origin: self.origin(line),
                });
            }
            (API_CORE, "Node") => {
                if let Some(ns_line) = namespace_line {
                    self.error(ns_line, "Node is cluster-scoped; expected no metadata.namespace");
                    return;
                }
                if let Some(s) = &spec {
                    let allowed = ["podCIDR", "podCIDRs", "providerID", "taints", "unschedulable"];
                    if !self.only_fields(&s.value, self.line(s), "Node", &allowed) {
                        return;
                    }
                }
                if let Some(node) = self.node(name.value, labels, status, line) {
                    set.nodes.push(node);
                }
            }
            (api, kind) => self.error(
                line,
                format!(
                    "unsupported kind {kind:?} of apiVersion {api:?}; expected NetworkPolicy ({API_NETWORKING}), ClusterNetworkPolicy ({API_POLICY}), Namespace or Node ({API_CORE}), Workload or Pipeline ({API_STAGEWALL})"
                ),
            ),
        }
    }

    /// A Node: its labels and the addresses in `status.addresses` that are IPs
    /// (InternalIP, ExternalIP); host and DNS names are skipped, as a nodes peer is
    /// matched by address.
    fn node(
        &mut self,
        name: String,
        labels: Labels,
        status: Option<Spanned<RawStatus>>,
        line: u32,
    ) -> Option<Node> {
        let mut addresses = Vec::new();
        let raw = status.and_then(|s| s.value.addresses).unwrap_or_default();
        for a in &raw {
            let a_line = self.line(a);
            let (Some(kind), Some(address)) = (&a.value.kind, &a.value.address) else {
                self.error(a_line, "Node address needs type and address; expected e.g. {type: InternalIP, address: 10.0.0.1}");
                return None;
            };
            match kind.value.as_str() {
                "InternalIP" | "ExternalIP" => match address.value.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => {
                        self.error(self.line(address), format!("Node address {:?} of type {} is not an IP address; expected e.g. 10.0.0.1 or fd00::1", address.value, kind.value));
                        return None;
                    }
                },
                "Hostname" | "InternalDNS" | "ExternalDNS" => {}
                other => {
                    self.error(self.line(kind), format!("Node address type {other:?} is unknown; expected InternalIP, ExternalIP, Hostname, InternalDNS or ExternalDNS"));
                    return None;
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        Some(Node {
            name,
            labels,
            addresses,
            origin: self.origin(line),
        })
    }

    /// The `stagewall.io/mode` annotation of a document of `kind`.
    pub(super) fn mode(&mut self, value: &str, line: u32, kind: &str) -> Option<Mode> {
        if !matches!(
            kind,
            "Namespace" | "NetworkPolicy" | "Pipeline" | "ClusterNetworkPolicy"
        ) {
            self.error(line, format!("annotation {MODE_ANNOTATION} on a {kind}; expected it on a Namespace, NetworkPolicy, ClusterNetworkPolicy or Pipeline"));
            return None;
        }
        match value {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            other => {
                self.error(
                    line,
                    format!("annotation {MODE_ANNOTATION} {other:?} is invalid; expected enforce or audit"),
                );
                None
            }
        }
    }
}
