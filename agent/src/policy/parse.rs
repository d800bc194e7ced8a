//! YAML documents (multi-document files in a directory) to the policy model. Every error
//! names the file, the line and what was expected; parsing never stops at the first bad
//! document, so `stagewall check` reports all of them at once.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::documents::ParseCache;
use super::model::{
    Attachment, FAIL_MODE_ANNOTATION, FailMode, Flow, FlowEnd, LabelSelector, Labels,
    MODE_ANNOTATION, Mode, NamedPort, Namespace, NetworkPolicy, ObjectName, Origin, Peer, Pipeline,
    PolicySet, PortMatch, PortSpec, Protocol, Requirement, Rule, Stage, Workload,
};

pub const API_NETWORKING: &str = "networking.k8s.io/v1";
pub const API_CORE: &str = "v1";
pub const API_STAGEWALL: &str = "stagewall.io/v1alpha1";

/// Policy files larger than this are refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One problem in the input: where, what is wrong, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: u32,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// All the errors of one load, in file and line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

// ---------------------------------------------------------------------------------------------
// Raw documents, as they are written. Fields that Kubernetes objects carry but policy does
// not use (uid, resourceVersion, status, ...) are accepted and ignored; unknown fields in a
// spec are errors, since a misspelt field would silently change what a policy allows.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDocument {
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    metadata: Option<Spanned<RawMetadata>>,
    spec: Option<Spanned<RawSpec>>,
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    name: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    annotations: Option<Spanned<BTreeMap<String, String>>>,
}

/// The specs of every kind in one struct; `check_fields` rejects fields of another kind.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    // NetworkPolicy
    pod_selector: Option<Spanned<RawSelector>>,
    policy_types: Option<Vec<Spanned<String>>>,
    ingress: Option<Vec<Spanned<RawRule>>>,
    egress: Option<Vec<Spanned<RawRule>>>,
    // Workload
    cgroup: Option<Spanned<String>>,
    systemd_unit: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    addresses: Option<Vec<Spanned<String>>>,
    ports: Option<Vec<Spanned<RawNamedPort>>>,
    fail_mode: Option<Spanned<String>>,
    // Pipeline
    stages: Option<Vec<Spanned<RawStage>>>,
    flows: Option<Vec<Spanned<RawFlow>>>,
    tenant_label: Option<Spanned<String>>,
    default_deny: Option<bool>,
    // Namespace
    finalizers: Option<serde::de::IgnoredAny>,
}

impl RawSpec {
    /// The fields present, as written, so each kind can reject those of another kind.
    fn present(&self) -> Vec<&'static str> {
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
struct RawStage {
    name: Spanned<String>,
    selector: Spanned<RawSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFlow {
    from: Spanned<RawFlowEnd>,
    to: Spanned<RawFlowEnd>,
    ports: Option<Vec<Spanned<RawPort>>>,
}

/// One end of a flow: `{stage: name}`, `{cidr: ..., except: [...]}` or
/// `{workloads: {namespaceSelector: ..., podSelector: ...}}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFlowEnd {
    stage: Option<String>,
    cidr: Option<Spanned<String>>,
    except: Option<Vec<Spanned<String>>>,
    workloads: Option<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<Spanned<RawRequirement>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    from: Option<Vec<Spanned<RawPeer>>>,
    to: Option<Vec<Spanned<RawPeer>>>,
    ports: Option<Vec<Spanned<RawPort>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPeer {
    pod_selector: Option<Spanned<RawSelector>>,
    namespace_selector: Option<Spanned<RawSelector>>,
    ip_block: Option<Spanned<RawIpBlock>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIpBlock {
    cidr: Spanned<String>,
    except: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPort {
    protocol: Option<Spanned<String>>,
    port: Option<Spanned<IntOrString>>,
    end_port: Option<Spanned<i64>>,
}

/// A Workload's declared port: `{name: http, port: 8080, protocol: TCP}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNamedPort {
    name: String,
    port: i64,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

// ---------------------------------------------------------------------------------------------

/// The policy files below `dir`: every `*.yaml` and `*.yml`, recursively, sorted; hidden
/// files and directories (editors' swap files, a ConfigMap's `..data`) are skipped.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    collect_files(dir, &mut files, &mut errors);
    files.sort();
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Reads every policy file below `dir` into one set; documents unchanged since the last
/// load with the same cache are not parsed again.
pub fn load_dir(dir: &Path, cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    let files = policy_files(dir)?;
    if files.is_empty() {
        return Err(PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            message: "no policy files: expected *.yaml or *.yml files in this directory".into(),
        }]));
    }
    load_files(&files, cache)
}

/// Reads these files into one set: parses every document, expands pipelines and checks
/// the set as a whole. Every error of every file is reported, not just the first.
pub fn load_files(files: &[PathBuf], cache: &mut ParseCache) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut set = PolicySet::default();
    for file in files {
        match read_file(file) {
            Ok(text) => {
                if let Err(mut e) = cache.parse_into(file, &text, &mut set) {
                    errors.append(&mut e.0);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    cache.finish_load();
    if errors.is_empty() {
        errors = complete(&mut set);
    } else if let Err(mut e) = validate_set(&set) {
        errors.append(&mut e.0);
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<PolicyError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(PolicyError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read policy directory: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editors' and Kubernetes ConfigMaps' hidden files (..data, .swp) are not policies.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, files, errors);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            files.push(path);
        }
    }
}

fn read_file(file: &Path) -> Result<String, PolicyError> {
    let err = |message: String| PolicyError {
        file: file.to_path_buf(),
        line: 0,
        message,
    };
    let size = std::fs::metadata(file)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(err(format!(
            "file is {size} bytes; expected at most {MAX_FILE_BYTES} bytes of policy"
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))
}

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
        let mut cx = Cx {
            file,
            line_offset,
            errors: &mut errors,
        };
        cx.document(doc, set);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyErrors(errors))
    }
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

/// Parsing context: the file, where in it the text parsed starts, and the errors found
/// so far.
struct Cx<'a> {
    file: &'a Path,
    line_offset: u32,
    errors: &'a mut Vec<PolicyError>,
}

impl Cx<'_> {
    /// The file's line of a parsed value.
    fn line<T>(&self, s: &Spanned<T>) -> u32 {
        s.referenced.line() as u32 + self.line_offset
    }

    fn error(&mut self, line: u32, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn origin(&self, line: u32) -> Origin {
        Origin {
            file: self.file.to_path_buf(),
            line,
        }
    }

    fn document(&mut self, doc: RawDocument, set: &mut PolicySet) {
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
            (api, kind) => self.error(
                line,
                format!(
                    "unsupported kind {kind:?} of apiVersion {api:?}; expected NetworkPolicy ({API_NETWORKING}), Namespace ({API_CORE}), Workload or Pipeline ({API_STAGEWALL})"
                ),
            ),
        }
    }

    /// Rejects spec fields that belong to another kind.
    fn only_fields(&mut self, spec: &RawSpec, line: u32, kind: &str, allowed: &[&str]) -> bool {
        let foreign: Vec<&str> = spec
            .present()
            .into_iter()
            .filter(|f| !allowed.contains(f))
            .collect();
        if foreign.is_empty() {
            return true;
        }
        self.error(
            line,
            format!(
                "{kind} spec has {}, which belong to another kind; expected only {}",
                foreign.join(", "),
                allowed.join(", ")
            ),
        );
        false
    }

    fn check_dns_name(&mut self, value: &Spanned<String>, field: &str) -> bool {
        let v = &value.value;
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !v.starts_with(['-', '.'])
            && !v.ends_with(['-', '.']);
        if !ok {
            self.error(
                self.line(value),
                format!("{field} {v:?} is not a valid name; expected lowercase letters, digits, '-' and '.', at most 253 characters"),
            );
        }
        ok
    }

    fn labels(&mut self, raw: &BTreeMap<String, String>, line: u32) -> Option<Labels> {
        for (k, v) in raw {
            if !valid_label_key(k) {
                self.error(line, format!("label key {k:?} is invalid; expected [prefix/]name with name of at most 63 alphanumerics, '-', '_' or '.'"));
                return None;
            }
            if !valid_label_value(v) {
                self.error(line, format!("label value {v:?} of {k:?} is invalid; expected at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"));
                return None;
            }
        }
        Some(raw.clone())
    }

    fn selector(&mut self, raw: &Spanned<RawSelector>) -> Option<LabelSelector> {
        let line = self.line(raw);
        let sel = &raw.value;
        let match_labels = match &sel.match_labels {
            Some(l) => self.labels(l, line)?,
            None => Labels::new(),
        };
        let mut match_expressions = Vec::new();
        for req in sel.match_expressions.iter().flatten() {
            let line = self.line(req);
            let r = &req.value;
            let values = r.values.clone().unwrap_or_default();
            let requirement = match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    self.error(line, format!("matchExpressions operator {} needs values; expected a non-empty values list", r.operator));
                    return None;
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    self.error(line, format!("matchExpressions operator {} takes no values; expected values to be absent", r.operator));
                    return None;
                }
                "In" => Requirement::In(r.key.clone(), values),
                "NotIn" => Requirement::NotIn(r.key.clone(), values),
                "Exists" => Requirement::Exists(r.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
                other => {
                    self.error(line, format!("unknown matchExpressions operator {other:?}; expected In, NotIn, Exists or DoesNotExist"));
                    return None;
                }
            };
            if !valid_label_key(&r.key) {
                self.error(
                    line,
                    format!("matchExpressions key {:?} is not a valid label key", r.key),
                );
                return None;
            }
            match_expressions.push(requirement);
        }
        Some(LabelSelector {
            match_labels,
            match_expressions,
        })
    }

    fn network_policy(
        &mut self,
        name: ObjectName,
        spec: Spanned<RawSpec>,
        mode: Option<Mode>,
        line: u32,
    ) -> Option<NetworkPolicy> {
        let spec_line = self.line(&spec);
        let spec = spec.value;
        if !self.only_fields(
            &spec,
            spec_line,
            "NetworkPolicy",
            &["podSelector", "policyTypes", "ingress", "egress"],
        ) {
            return None;
        }
        let Some(pod_selector) = &spec.pod_selector else {
            self.error(spec_line, "NetworkPolicy spec has no podSelector; expected podSelector ({} selects every workload of the namespace)");
            return None;
        };
        let pod_selector = self.selector(pod_selector)?;
        let ingress = self.rules(spec.ingress.as_deref().unwrap_or_default(), true)?;
        let egress = self.rules(spec.egress.as_deref().unwrap_or_default(), false)?;
        let (ingress_isolates, egress_isolates) = match &spec.policy_types {
            Some(types) => {
                let mut ingress = false;
                let mut egress = false;
                for t in types {
                    match t.value.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => {
                            self.error(
                                self.line(t),
                                format!("unknown policyType {other:?}; expected Ingress or Egress"),
                            );
                            return None;
                        }
                    }
                }
                (ingress, egress)
            }
            // Kubernetes: Ingress always; Egress when the policy has an egress section.
            None => (true, spec.egress.is_some()),
        };
        Some(NetworkPolicy {
            name,
            pod_selector,
            ingress_isolates,
            egress_isolates,
            ingress,
            egress,
            mode,
            origin: self.origin(line),
        })
    }

    fn rules(&mut self, raw: &[Spanned<RawRule>], ingress: bool) -> Option<Vec<Rule>> {
        let mut rules = Vec::new();
        for r in raw {
            let line = self.line(r);
            let (peers, wrong) = if ingress {
                (&r.value.from, &r.value.to)
            } else {
                (&r.value.to, &r.value.from)
            };
            if wrong.is_some() {
                let (field, expected) = if ingress {
                    ("to", "from")
                } else {
                    ("from", "to")
                };
                self.error(
                    line,
                    format!(
                        "{} rule has '{field}'; expected '{expected}'",
                        if ingress { "ingress" } else { "egress" }
                    ),
                );
                return None;
            }
            let mut rule = Rule {
                line,
                ..Rule::default()
            };
            for p in peers.iter().flatten() {
                rule.peers.push(self.peer(p)?);
            }
            for p in r.value.ports.iter().flatten() {
                rule.ports.push(self.port(p)?);
            }
            rules.push(rule);
        }
        Some(rules)
    }

    fn peer(&mut self, raw: &Spanned<RawPeer>) -> Option<Peer> {
        let line = self.line(raw);
        let p = &raw.value;
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (Some(block), None, None) => self.ip_block(block),
            (Some(_), _, _) => {
                self.error(line, "peer has ipBlock together with a selector; expected either ipBlock or podSelector/namespaceSelector");
                None
            }
            (None, None, None) => {
                self.error(
                    line,
                    "peer is empty; expected podSelector, namespaceSelector or ipBlock",
                );
                None
            }
            (None, pods, namespaces) => {
                let pod_selector = match pods {
                    Some(s) => Some(self.selector(s)?),
                    None => None,
                };
                let namespace_selector = match namespaces {
                    Some(s) => Some(self.selector(s)?),
                    None => None,
                };
                Some(Peer::Workloads {
                    namespace_selector,
                    pod_selector,
                })
            }
        }
    }

    fn ip_block(&mut self, raw: &Spanned<RawIpBlock>) -> Option<Peer> {
        let cidr = self.cidr(&raw.value.cidr)?;
        let mut except = Vec::new();
        for e in raw.value.except.iter().flatten() {
            let net = self.cidr(e)?;
            let inside = match (cidr, net) {
                (IpNet::V4(c), IpNet::V4(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                (IpNet::V6(c), IpNet::V6(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                _ => false,
            };
            if !inside {
                self.error(self.line(e), format!("except {net} is not strictly inside cidr {cidr}; expected a smaller block of the same family within it"));
                return None;
            }
            except.push(net);
        }
        Some(Peer::IpBlock { cidr, except })
    }

    fn cidr(&mut self, raw: &Spanned<String>) -> Option<IpNet> {
        match raw.value.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(self.line(raw), format!("invalid CIDR {:?}; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64", raw.value));
                None
            }
        }
    }

    fn protocol(&mut self, raw: Option<&Spanned<String>>, line: u32) -> Option<Protocol> {
        match raw.map(|s| s.value.as_str()) {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(other) => {
                self.error(
                    line,
                    format!("unknown protocol {other:?}; expected TCP, UDP or SCTP"),
                );
                None
            }
        }
    }

    fn port_number(&mut self, n: i64, line: u32, field: &str) -> Option<u16> {
        if (1..=65535).contains(&n) {
            Some(n as u16)
        } else {
            self.error(
                line,
                format!("{field} {n} is out of range; expected 1 to 65535"),
            );
            None
        }
    }

    fn port_name(&mut self, name: &str, line: u32) -> Option<String> {
        // Kubernetes' IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', with a
        // letter, no '-' at either end or twice in a row.
        let valid = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.chars().any(|c| c.is_ascii_lowercase())
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !valid {
            self.error(line, format!("port name {name:?} is invalid; expected at most 15 lowercase letters, digits and '-', with at least one letter"));
            return None;
        }
        Some(name.to_string())
    }

    fn port(&mut self, raw: &Spanned<RawPort>) -> Option<PortSpec> {
        let line = self.line(raw);
        let p = &raw.value;
        let protocol = self.protocol(p.protocol.as_ref(), line)?;
        let port = match (&p.port, &p.end_port) {
            (None, None) => PortMatch::All,
            (None, Some(e)) => {
                self.error(
                    self.line(e),
                    "endPort without port; expected port to be set with endPort",
                );
                return None;
            }
            (Some(s), end) => match (&s.value, end) {
                (IntOrString::Int(n), None) => {
                    let n = self.port_number(*n, self.line(s), "port")?;
                    PortMatch::Range(n, n)
                }
                (IntOrString::Int(n), Some(e)) => {
                    let n = self.port_number(*n, self.line(s), "port")?;
                    if e.value < n as i64 || e.value > 65535 {
                        self.error(
                            self.line(e),
                            format!(
                                "endPort {} is invalid; expected a number from port ({n}) to 65535",
                                e.value
                            ),
                        );
                        return None;
                    }
                    PortMatch::Range(n, e.value as u16)
                }
                (IntOrString::String(name), None) => {
                    PortMatch::Named(self.port_name(name, self.line(s))?)
                }
                (IntOrString::String(name), Some(e)) => {
                    self.error(
                        self.line(e),
                        format!("endPort with the named port {name:?}; expected a numeric port with endPort"),
                    );
                    return None;
                }
            },
        };
        Some(PortSpec { protocol, port })
    }

    fn named_ports(&mut self, raw: &[Spanned<RawNamedPort>]) -> Option<Vec<NamedPort>> {
        let mut ports: Vec<NamedPort> = Vec::new();
        for p in raw {
            let line = self.line(p);
            let name = self.port_name(&p.value.name, line)?;
            let protocol = self.protocol(p.value.protocol.as_ref(), line)?;
            let port = self.port_number(p.value.port, line, "port")?;
            if ports.iter().any(|q| q.name == name) {
                self.error(
                    line,
                    format!("port name {name:?} is declared twice; expected unique names"),
                );
                return None;
            }
            ports.push(NamedPort {
                name,
                protocol,
                port,
            });
        }
        Some(ports)
    }

    fn pipeline(
        &mut self,
        name: ObjectName,
        spec: Spanned<RawSpec>,
        mode: Option<Mode>,
        line: u32,
    ) -> Option<Pipeline> {
        let spec_line = self.line(&spec);
        let spec = spec.value;
        if !self.only_fields(
            &spec,
            spec_line,
            "Pipeline",
            &["stages", "flows", "tenantLabel", "defaultDeny"],
        ) {
            return None;
        }
        let mut stages: Vec<Stage> = Vec::new();
        for s in spec.stages.iter().flatten() {
            let stage_line = self.line(s);
            if !self.check_dns_name(&s.value.name, "stage name") {
                return None;
            }
            if stages.iter().any(|x| x.name == s.value.name.value) {
                self.error(
                    stage_line,
                    format!(
                        "stage {:?} is defined twice; expected unique stage names",
                        s.value.name.value
                    ),
                );
                return None;
            }
            let selector = self.selector(&s.value.selector)?;
            stages.push(Stage {
                name: s.value.name.value.clone(),
                selector,
            });
        }
        if stages.is_empty() {
            self.error(
                spec_line,
                "Pipeline has no stages; expected stages: [{name, selector}]",
            );
            return None;
        }
        let mut flows = Vec::new();
        for f in spec.flows.iter().flatten() {
            let from = self.flow_end(&f.value.from)?;
            let to = self.flow_end(&f.value.to)?;
            let mut ports = Vec::new();
            for p in f.value.ports.iter().flatten() {
                ports.push(self.port(p)?);
            }
            flows.push(Flow {
                from,
                to,
                ports,
                line: self.line(f),
            });
        }
        let tenant_label = match spec.tenant_label {
            Some(l) if valid_label_key(&l.value) => Some(l.value),
            Some(l) => {
                self.error(
                    self.line(&l),
                    format!("tenantLabel {:?} is not a valid label key", l.value),
                );
                return None;
            }
            None => None,
        };
        Some(Pipeline {
            name,
            stages,
            flows,
            tenant_label,
            default_deny: spec.default_deny.unwrap_or(false),
            mode,
            origin: self.origin(line),
        })
    }

    fn flow_end(&mut self, raw: &Spanned<RawFlowEnd>) -> Option<FlowEnd> {
        let line = self.line(raw);
        let e = &raw.value;
        match (&e.stage, &e.cidr, &e.workloads) {
            (Some(stage), None, None) if e.except.is_none() => Some(FlowEnd::Stage(stage.clone())),
            (None, Some(cidr), None) => {
                let block = RawIpBlock {
                    cidr: cidr.clone(),
                    except: e.except.clone(),
                };
                let spanned = Spanned::new(block, raw.referenced, raw.defined);
                self.ip_block(&spanned).map(FlowEnd::Peer)
            }
            (None, None, Some(peer)) if e.except.is_none() => self.peer(peer).map(FlowEnd::Peer),
            _ => {
                self.error(line, "flow end must be exactly one of {stage: name}, {cidr: ..., except: [...]} or {workloads: {namespaceSelector, podSelector}}");
                None
            }
        }
    }

    fn workload(
        &mut self,
        name: ObjectName,
        labels: Labels,
        spec: RawSpec,
        spec_line: u32,
        line: u32,
    ) -> Option<Workload> {
        if !self.only_fields(
            &spec,
            spec_line,
            "Workload",
            &[
                "cgroup",
                "systemdUnit",
                "interface",
                "addresses",
                "ports",
                "failMode",
            ],
        ) {
            return None;
        }
        let mut attachments = Vec::new();
        if let Some(c) = spec.cgroup {
            if !c.value.starts_with('/') || c.value.split('/').any(|part| part == "..") {
                self.error(self.line(&c), format!("cgroup {:?} is not an absolute path; expected a path below the cgroup2 mount such as /ml.slice/trainer", c.value));
                return None;
            }
            attachments.push(Attachment::Cgroup(c.value));
        }
        if let Some(u) = spec.systemd_unit {
            if u.value.is_empty() || u.value.contains('/') {
                self.error(
                    self.line(&u),
                    format!(
                        "systemdUnit {:?} is invalid; expected a unit name such as trainer.service",
                        u.value
                    ),
                );
                return None;
            }
            attachments.push(Attachment::SystemdUnit(u.value));
        }
        if let Some(i) = spec.interface {
            if i.value.is_empty() || i.value.len() > 15 || i.value.contains(['/', ' ']) {
                self.error(self.line(&i), format!("interface {:?} is invalid; expected a network interface name of at most 15 characters", i.value));
                return None;
            }
            attachments.push(Attachment::Interface(i.value));
        }
        if attachments.len() > 1 {
            self.error(spec_line, "Workload has more than one of cgroup, systemdUnit and interface; expected at most one");
            return None;
        }
        let mut addresses = Vec::new();
        for a in spec.addresses.iter().flatten() {
            match a.value.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => {
                    self.error(self.line(a), format!("invalid address {:?}; expected an IPv4 or IPv6 address without prefix length", a.value));
                    return None;
                }
            }
        }
        let ports = self.named_ports(spec.ports.as_deref().unwrap_or_default())?;
        let fail_mode = match &spec.fail_mode {
            Some(m) => Some(self.fail_mode(&m.value, self.line(m), "spec.failMode")?),
            None => None,
        };
        Some(Workload {
            name,
            labels,
            attachment: attachments.pop(),
            addresses,
            ports,
            fail_mode,
            origin: self.origin(line),
        })
    }

    /// The `stagewall.io/mode` annotation of a document of `kind`.
    fn mode(&mut self, value: &str, line: u32, kind: &str) -> Option<Mode> {
        if !matches!(kind, "Namespace" | "NetworkPolicy" | "Pipeline") {
            self.error(line, format!("annotation {MODE_ANNOTATION} on a {kind}; expected it on a Namespace, NetworkPolicy or Pipeline"));
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

    fn fail_mode(&mut self, value: &str, line: u32, field: &str) -> Option<FailMode> {
        match value {
            "closed" => Some(FailMode::Closed),
            "open" => Some(FailMode::Open),
            other => {
                self.error(
                    line,
                    format!("{field} {other:?} is invalid; expected closed or open"),
                );
                None
            }
        }
    }
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && !name.contains('/')
                && valid_label_name(name)
        }
        None => valid_label_name(key),
    }
}

fn valid_label_value(value: &str) -> bool {
    value.is_empty() || valid_label_name(value)
}

/// Checks across documents: duplicate names, one address or attachment claimed by two
/// workloads, and cgroups nested in another workload's cgroup.
/// The last step of loading, from files or from the API server: expands the pipelines
/// and checks the whole set (names, addresses, attachments).
pub fn complete(set: &mut PolicySet) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    if let Err(mut e) = super::pipeline::expand(set) {
        errors.append(&mut e);
    }
    if let Err(mut e) = validate_set(set) {
        errors.append(&mut e.0);
    }
    errors
}

pub fn validate_set(set: &PolicySet) -> Result<(), PolicyErrors> {
    let mut errors = Vec::new();
    let mut err = |origin: &Origin, message: String| {
        errors.push(PolicyError {
            file: origin.file.clone(),
            line: origin.line,
            message,
        })
    };
    let workloads = set
        .workloads
        .iter()
        .map(|w| (w.name.to_string(), &w.origin));
    let policies = set.policies.iter().map(|p| (p.name.to_string(), &p.origin));
    let namespaces = set.namespaces.iter().map(|n| (n.name.clone(), &n.origin));
    for (kind, named) in [
        ("Workload", workloads.collect::<Vec<_>>()),
        ("NetworkPolicy", policies.collect()),
        ("Namespace", namespaces.collect()),
    ] {
        let mut first: HashMap<&str, &Origin> = HashMap::new();
        for (name, origin) in &named {
            if let Some(first) = first.insert(name, origin) {
                err(
                    origin,
                    format!(
                        "duplicate {kind} {name}; first defined at {first}; expected each name once"
                    ),
                );
            }
        }
    }
    let mut addresses: HashMap<IpAddr, &Workload> = HashMap::new();
    let mut attachments: HashMap<&Attachment, &Workload> = HashMap::new();
    for w in &set.workloads {
        for a in &w.addresses {
            if let Some(other) = addresses.insert(*a, w)
                && other.name != w.name
            {
                err(
                    &w.origin,
                    format!(
                        "address {a} of {} is also the address of {} ({}); expected each address to belong to one workload",
                        w.name, other.name, other.origin
                    ),
                );
            }
        }
        if let Some(att) = &w.attachment
            && let Some(other) = attachments.insert(att, w)
        {
            err(
                &w.origin,
                format!(
                    "{} is attached to the same {att:?} as {} ({}); expected one workload per cgroup or interface",
                    w.name, other.name, other.origin
                ),
            );
        }
    }
    let cgroups: Vec<(&str, &Workload)> = set
        .workloads
        .iter()
        .filter_map(|w| match &w.attachment {
            Some(Attachment::Cgroup(path)) => Some((path.trim_end_matches('/'), w)),
            _ => None,
        })
        .collect();
    for (path, w) in &cgroups {
        for (outer, o) in &cgroups {
            if path != outer && path.starts_with(&format!("{outer}/")) {
                err(
                    &w.origin,
                    format!(
                        "cgroup {path} of {} is inside cgroup {outer} of {} ({}); expected workload cgroups not to nest, so each packet belongs to one workload",
                        w.name, o.name, o.origin
                    ),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn errors(yaml: &str) -> Vec<PolicyError> {
        let mut set = PolicySet::default();
        let mut errs = match parse_into(Path::new("p.yaml"), yaml, &mut set) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        };
        if let Err(mut e) = validate_set(&set) {
            errs.append(&mut e.0);
        }
        errs
    }

    fn one_error(yaml: &str) -> PolicyError {
        let errs = errors(yaml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    const POLICY_HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  podSelector: {}\n";

    #[test]
    fn invalid_cidr_names_its_line_and_the_expected_form() {
        let e = one_error(&format!(
            "{POLICY_HEAD}  egress:\n    - to:\n        - ipBlock: {{cidr: 10.0.0.0/33}}\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("invalid CIDR \"10.0.0.0/33\""), "{e}");
        assert!(e.message.contains("expected"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:8: "), "{e}");
    }

    #[test]
    fn ports_out_of_range_and_bad_end_ports_are_rejected() {
        for (ports, wanted) in [
            ("{port: 0}", "port 0 is out of range"),
            ("{port: 65536}", "port 65536 is out of range"),
            ("{port: 90, endPort: 80}", "endPort 80 is invalid"),
            ("{endPort: 80}", "endPort without port"),
            (
                "{port: http, endPort: 90}",
                "endPort with the named port \"http\"",
            ),
            ("{port: Http}", "port name \"Http\" is invalid"),
            ("{port: 80, protocol: ICMP}", "unknown protocol \"ICMP\""),
        ] {
            let e = one_error(&format!(
                "{POLICY_HEAD}  ingress:\n    - ports: [{ports}]\n"
            ));
            assert!(e.message.contains(wanted), "{ports}: {e}");
            assert_eq!(e.line, 7, "{ports}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_errors_not_silently_ignored() {
        let e = one_error(&format!("{POLICY_HEAD}  ingres: []\n"));
        assert!(e.message.contains("ingres"), "{e}");
        assert!(e.line > 0, "{e}");
    }

    #[test]
    fn a_huge_file_is_refused_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("stagewall-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sparse: the size is what counts, nothing is written.
        let file = std::fs::File::create(dir.join("huge.yaml")).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let errors = load_dir(&dir, &mut ParseCache::default()).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("huge.yaml"));
        assert!(
            errors[0]
                .message
                .contains("expected at most 16777216 bytes"),
            "{}",
            errors[0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let e = one_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: [unclosed\n");
        assert!(e.line >= 3, "{e}");
        assert!(e.message.starts_with("invalid YAML document"), "{e}");
    }

    #[test]
    fn except_outside_its_block_is_rejected() {
        let e = one_error(&format!(
            "{POLICY_HEAD}  ingress:\n    - from:\n        - ipBlock: {{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}\n"
        ));
        assert!(e.message.contains("not strictly inside"), "{e}");
    }

    #[test]
    fn mode_annotations_other_than_enforce_or_audit_or_on_other_kinds_are_rejected() {
        let e = one_error(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  annotations:\n    stagewall.io/mode: watch\nspec: {podSelector: {}}\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("expected enforce or audit"), "{e}");
        let e = one_error(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata:\n  name: w\n  annotations: {stagewall.io/mode: audit}\nspec: {cgroup: /w}\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(
            e.message
                .contains("expected it on a Namespace, NetworkPolicy or Pipeline"),
            "{e}"
        );
    }

    #[test]
    fn fail_modes_other_than_closed_or_open_are_rejected_with_their_line() {
        let e = one_error(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: a}\nspec:\n  cgroup: /w\n  failMode: maybe\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("expected closed or open"), "{e}");
        let e = one_error(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {stagewall.io/fail-mode: ajar}\n",
        );
        assert!(e.message.contains("stagewall.io/fail-mode"), "{e}");
        assert!(e.message.contains("expected closed or open"), "{e}");
    }

    #[test]
    fn conflicting_workloads_are_rejected() {
        let w = |name: &str, cgroup: &str, addr: &str| {
            format!(
                "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{cgroup: {cgroup}, addresses: [{addr}]}}\n---\n"
            )
        };
        let errs = errors(&(w("a", "/a", "10.0.0.1") + &w("a", "/b", "10.0.0.2")));
        assert!(
            errs.iter()
                .any(|e| e.message.contains("duplicate Workload ns/a")),
            "{errs:?}"
        );
        let errs = errors(&(w("a", "/a", "10.0.0.1") + &w("b", "/b", "10.0.0.1")));
        assert!(
            errs.iter().any(|e| e.message.contains("address 10.0.0.1")),
            "{errs:?}"
        );
        let errs = errors(&(w("a", "/a", "10.0.0.1") + &w("b", "/a/b", "10.0.0.2")));
        assert!(
            errs.iter().any(|e| e.message.contains("inside cgroup /a")),
            "{errs:?}"
        );
    }

    #[test]
    fn policy_types_are_inferred_as_kubernetes_does() {
        let mut set = PolicySet::default();
        parse_into(
            Path::new("p.yaml"),
            &format!("{POLICY_HEAD}  egress: []\n"),
            &mut set,
        )
        .unwrap();
        let p = &set.policies[0];
        assert!(p.ingress_isolates && p.egress_isolates);
        let mut set = PolicySet::default();
        parse_into(Path::new("p.yaml"), POLICY_HEAD, &mut set).unwrap();
        assert!(set.policies[0].ingress_isolates && !set.policies[0].egress_isolates);
    }

    #[test]
    fn kubectl_output_with_status_and_server_fields_is_accepted() {
        let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\n  uid: 1234\n  resourceVersion: \"99\"\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\n  annotations: {a: b}\nspec:\n  podSelector: {}\nstatus: {}\n";
        assert!(errors(yaml).is_empty(), "{:?}", errors(yaml));
    }

    #[test]
    fn the_example_policies_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = load_dir(&dir, &mut ParseCache::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.policies.len() >= 6 && set.workloads.len() >= 6);
    }

    const PIPELINE_HEAD: &str = "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {name: pipe, namespace: ml}\nspec:\n  stages:\n    - {name: a, selector: {matchLabels: {stage: a}}}\n    - {name: b, selector: {matchLabels: {stage: b}}}\n";

    /// Parses and expands pipelines, returning the set or every error.
    fn expanded(yaml: &str) -> Result<PolicySet, Vec<PolicyError>> {
        let mut set = PolicySet::default();
        parse_into(Path::new("p.yaml"), yaml, &mut set).map_err(|e| e.0)?;
        super::super::pipeline::expand(&mut set)?;
        Ok(set)
    }

    #[test]
    fn pipelines_expand_into_one_isolating_policy_per_stage() {
        let set = expanded(&format!("{PIPELINE_HEAD}  flows:\n    - {{from: {{stage: a}}, to: {{stage: b}}, ports: [{{port: 80}}]}}\n    - {{from: {{cidr: 192.0.2.0/24}}, to: {{stage: a}}}}\n")).unwrap();
        let names: Vec<String> = set.policies.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["ml/pipe-a", "ml/pipe-b"]);
        let (a, b) = (&set.policies[0], &set.policies[1]);
        assert!(a.ingress_isolates && a.egress_isolates && b.ingress_isolates && b.egress_isolates);
        assert_eq!(
            (
                a.ingress.len(),
                a.egress.len(),
                b.ingress.len(),
                b.egress.len()
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(a.egress[0].line, 9, "rules carry the flow's line");
        assert!(matches!(&a.ingress[0].peers[0], Peer::IpBlock { .. }));
    }

    #[test]
    fn pipeline_errors_name_the_flow() {
        let errs = expanded(&format!(
            "{PIPELINE_HEAD}  flows:\n    - {{from: {{stage: a}}, to: {{stage: c}}}}\n"
        ))
        .unwrap_err();
        assert!(
            errs[0].message.contains("stage \"c\"") && errs[0].line == 9,
            "{errs:?}"
        );
        let errs = expanded(&format!("{PIPELINE_HEAD}  flows:\n    - {{from: {{cidr: 10.0.0.0/8}}, to: {{cidr: 10.0.0.0/8}}}}\n")).unwrap_err();
        assert!(
            errs[0].message.contains("no stage at either end"),
            "{errs:?}"
        );
        let errs = expanded(&format!("{PIPELINE_HEAD}  flows:\n    - {{from: {{stage: a, cidr: 10.0.0.0/8}}, to: {{stage: b}}}}\n")).unwrap_err();
        assert!(errs[0].message.contains("exactly one of"), "{errs:?}");
        let errs = expanded(&format!(
            "{PIPELINE_HEAD}  tenantLabel: tenant\n  flows: []\n"
        ))
        .unwrap_err();
        assert!(errs[0].message.contains("has no such label"), "{errs:?}");
    }

    #[test]
    fn tenant_label_confines_outside_peers_to_the_tenant() {
        let ns =
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml, labels: {tenant: x}}\n---\n";
        let set = expanded(&format!("{ns}{PIPELINE_HEAD}  tenantLabel: tenant\n  flows:\n    - {{from: {{workloads: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: mon}}}}}}}}, to: {{stage: a}}}}\n")).unwrap();
        let Peer::Workloads {
            namespace_selector, ..
        } = &set.policies[0].ingress[0].peers[0]
        else {
            panic!("expected a workloads peer");
        };
        let labels = &namespace_selector.as_ref().unwrap().match_labels;
        assert_eq!(labels.get("tenant").map(String::as_str), Some("x"));
        let errs = expanded(&format!("{ns}{PIPELINE_HEAD}  tenantLabel: tenant\n  flows:\n    - {{from: {{workloads: {{namespaceSelector: {{matchLabels: {{tenant: y}}}}}}}}, to: {{stage: a}}}}\n")).unwrap_err();
        assert!(
            errs[0].message.contains("not the pipeline's tenant"),
            "{errs:?}"
        );
    }

    proptest! {
        // The parser never panics, whatever the bytes; errors carry a message.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            for e in errors(&text) {
                prop_assert!(!e.message.is_empty());
            }
        }

        // Mutations of a valid policy (a character replaced) give a policy or errors with
        // a line inside the document, never a panic.
        #[test]
        fn mutated_policies_never_panic(pos in 0usize..400, c in proptest::char::any()) {
            let base = format!("{POLICY_HEAD}  ingress:\n    - from:\n        - ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}\n        - namespaceSelector: {{matchExpressions: [{{key: tenant, operator: In, values: [a]}}]}}\n      ports: [{{port: 80, endPort: 90}}, {{protocol: UDP}}]\n");
            let mut chars: Vec<char> = base.chars().collect();
            let i = pos % chars.len();
            chars[i] = c;
            let text: String = chars.into_iter().collect();
            // YAML breaks lines at \n, \r\n and a lone \r (str::lines() does not split at a
            // lone \r), and may report the position just past the end.
            let lines = text.matches(['\n', '\r']).count() as u32 + 2;
            for e in errors(&text) {
                prop_assert!(e.line <= lines, "{}", e);
            }
        }
    }
}
