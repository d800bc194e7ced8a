//! The parser's tests: errors name the file, the line and what was expected; kubectl
//! output is accepted; pipelines expand as stated; the parser never panics on arbitrary or
//! mutated input (property tests).

use std::path::Path;

use proptest::prelude::*;

use super::{MAX_FILE_BYTES, ParseCache, load_dir, parse_into, validate_set};
use crate::policy::{
    error::PolicyError,
    model::{Attachment, Peer, PolicySet},
    pipeline,
};

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

/// A policy directory holding one good policy and the given hostile entries.
fn hostile_dir(name: &str, make: impl FnOnce(&Path)) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stagewall-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good.yaml"), POLICY_HEAD).unwrap();
    make(&dir);
    dir
}

/// Loads `dir` on a thread and waits at most 10 s: a regression that hangs (a loop, a
/// fifo, an endless device) fails the test instead of stalling the run.
fn load_within_10s(dir: &Path) -> (Result<PolicySet, Vec<PolicyError>>, usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut cache = ParseCache::default();
        let result = load_dir(&dir, &mut cache).map_err(|e| e.0);
        let _ = tx.send((result, cache.parsed));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("loading the directory did not finish within 10 s")
}

/// The good policy was read and parsed (one document, no error of its own) and every
/// error names one of `bad` with `wanted` in its message. The set as a whole is refused,
/// as with any file's error: the policy in force stays.
fn only_bad_entries_reported(dir: &Path, bad: &[&str], wanted: &str) {
    let (result, parsed) = load_within_10s(dir);
    let errors = result.expect_err("hostile entries are errors");
    assert_eq!(parsed, 1, "the good policy is parsed: {errors:?}");
    for name in bad {
        let e = errors
            .iter()
            .find(|e| e.file == dir.join(name))
            .unwrap_or_else(|| panic!("no error names {name}: {errors:?}"));
        assert!(e.message.contains(wanted), "{e}");
    }
    assert_eq!(errors.len(), bad.len(), "{errors:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn directory_symlink_loops_are_refused_not_followed_forever() {
    use std::os::unix::fs::symlink;
    // Two links to the directory itself, one back up from below: followed blindly, the
    // paths double at every level (2^40 before the kernel's ELOOP).
    let dir = hostile_dir("loop", |d| {
        symlink(".", d.join("a")).unwrap();
        symlink(".", d.join("b")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        symlink("..", d.join("sub/up")).unwrap();
    });
    only_bad_entries_reported(&dir, &["a", "b", "sub/up"], "directory already read");
}

#[test]
fn a_symlink_to_a_device_is_refused_not_read_without_end() {
    let dir = hostile_dir("device", |d| {
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
    });
    only_bad_entries_reported(&dir, &["zero.yaml"], "not a regular file");
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = hostile_dir("fifo", |d| {
        let path =
            std::ffi::CString::new(d.join("fifo.yaml").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    });
    only_bad_entries_reported(&dir, &["fifo.yaml"], "not a regular file");
}

#[test]
fn a_symlink_to_a_regular_file_is_followed() {
    // As a ConfigMap volume does: policy.yaml -> ..data/policy.yaml.
    let dir = hostile_dir("link", |d| {
        std::fs::create_dir(d.join("..data")).unwrap();
        std::fs::write(
            d.join("..data/other.yaml"),
            POLICY_HEAD.replace("name: p,", "name: q,"),
        )
        .unwrap();
        std::os::unix::fs::symlink("..data/other.yaml", d.join("other.yaml")).unwrap();
    });
    let (result, parsed) = load_within_10s(&dir);
    let set = result.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((parsed, set.policies.len()), (2, 2));
    std::fs::remove_dir_all(dir).unwrap();
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
        e.message.contains(
            "expected it on a Namespace, NetworkPolicy, ClusterNetworkPolicy or Pipeline"
        ),
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
fn an_interface_beside_a_cgroup_is_its_backstop_and_two_cgroups_are_refused() {
    let set = expanded(
        "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: a}\nspec: {cgroup: /w, interface: veth1}\n",
    )
    .unwrap();
    assert_eq!(
        set.workloads[0].attachment,
        Some(Attachment::Cgroup("/w".into()))
    );
    assert_eq!(set.workloads[0].backstop.as_deref(), Some("veth1"));
    let set = expanded(
        "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: a}\nspec: {interface: veth1}\n",
    )
    .unwrap();
    assert_eq!(
        set.workloads[0].attachment,
        Some(Attachment::Interface("veth1".into()))
    );
    assert_eq!(set.workloads[0].backstop, None);
    let e = one_error(
        "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: a}\nspec: {cgroup: /w, systemdUnit: w.service}\n",
    );
    assert!(e.message.contains("both cgroup and systemdUnit"), "{e}");
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
    pipeline::expand(&mut set)?;
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
    let errs = expanded(&format!(
        "{PIPELINE_HEAD}  flows:\n    - {{from: {{cidr: 10.0.0.0/8}}, to: {{cidr: 10.0.0.0/8}}}}\n"
    ))
    .unwrap_err();
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
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml, labels: {tenant: x}}\n---\n";
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

/// One object's size is bounded where it is read: too many ipBlocks, too many distinct
/// CIDRs, or a rule whose peers times ports is too large are refused with the line and
/// the limit; 16,000 ipBlocks (a 0.9 MB object) are still fine.
#[test]
fn per_object_limits_refuse_oversized_policies_with_line_and_limit() {
    use crate::policy::parse::network_policy::{
        MAX_CIDRS_PER_OBJECT, MAX_IP_BLOCKS_PER_OBJECT, MAX_PEERS_TIMES_PORTS_PER_RULE,
    };
    let blocks = |n: usize, excepts: usize| -> String {
        (0..n)
            .map(|j| {
                let except: Vec<String> = (0..excepts)
                    .map(|k| format!("10.{}.{}.{}/32", j / 256, j % 256, k + 1))
                    .collect();
                format!(
                    "        - ipBlock: {{cidr: 10.{}.{}.0/24, except: [{}]}}\n",
                    j / 256,
                    j % 256,
                    except.join(", ")
                )
            })
            .collect()
    };
    assert!(
        errors(&format!(
            "{POLICY_HEAD}  egress:\n    - to:\n{}",
            blocks(16_000, 0)
        ))
        .is_empty()
    );

    let e = one_error(&format!(
        "{POLICY_HEAD}  egress:\n    - to:\n{}",
        blocks(MAX_IP_BLOCKS_PER_OBJECT + 1, 0)
    ));
    assert_eq!(e.line, 5, "{e}");
    assert!(
        e.message
            .contains("20001 ipBlock peers; expected at most 20000"),
        "{e}"
    );

    let e = one_error(&format!(
        "{POLICY_HEAD}  egress:\n    - to:\n{}",
        blocks(MAX_CIDRS_PER_OBJECT / 3 + 1, 2)
    ));
    assert!(e.message.contains("distinct CIDRs"), "{e}");
    assert!(
        e.message
            .contains(&format!("at most {MAX_CIDRS_PER_OBJECT}")),
        "{e}"
    );

    // 400 peers times 300 ports.
    let ports: String = (0..300)
        .map(|p| format!("        - {{port: {}}}\n", 1000 + p))
        .collect();
    let e = one_error(&format!(
        "{POLICY_HEAD}  egress:\n    - to:\n{}      ports:\n{ports}",
        blocks(400, 0)
    ));
    assert_eq!(e.line, 7, "the rule's line: {e}");
    assert!(
        e.message.contains(&format!(
            "400 peers and 300 ports (120000 combinations); expected at most {MAX_PEERS_TIMES_PORTS_PER_RULE}"
        )),
        "{e}"
    );
}

/// A control-plane Node as `kubectl get node -o yaml` shows it (trimmed), lines 1-17.
pub(super) const CONTROL_PLANE: &str = "apiVersion: v1
kind: Node
metadata:
  name: cp-1
  labels: {node-role.kubernetes.io/control-plane: '', kubernetes.io/hostname: cp-1}
  uid: 0b7a
spec:
  podCIDR: 10.244.0.0/24
  podCIDRs: [10.244.0.0/24]
  taints: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
status:
  addresses:
    - {type: InternalIP, address: 10.0.0.10}
    - {type: Hostname, address: cp-1}
    - {type: ExternalIP, address: 'fd00::10'}
    - {type: InternalIP, address: 10.0.0.10}
  conditions: [{type: Ready, status: 'True'}]
";

#[test]
fn a_bad_node_document_names_its_line_and_never_stops_the_others() {
    let node = |body: &str| format!("apiVersion: v1\nkind: Node\n{body}");
    let cases: Vec<(String, u32, &str)> = vec![
        (
            node("metadata: {name: n, namespace: default}\n"),
            3,
            "Node is cluster-scoped; expected no metadata.namespace",
        ),
        (
            node(
                "metadata: {name: n}\nstatus:\n  addresses:\n    - {type: InternalIP, address: 10.0.0.300}\n",
            ),
            6,
            "Node address \"10.0.0.300\" of type InternalIP is not an IP address; expected e.g. 10.0.0.1",
        ),
        (
            node(
                "metadata: {name: n}\nstatus:\n  addresses:\n    - {type: PodIP, address: 10.0.0.3}\n",
            ),
            6,
            "Node address type \"PodIP\" is unknown; expected InternalIP, ExternalIP, Hostname",
        ),
        (
            node("metadata: {name: n}\nstatus:\n  addresses:\n    - {address: 10.0.0.3}\n"),
            6,
            "Node address needs type and address",
        ),
        (
            node("metadata: {name: n}\nspec: {podSelector: {}}\n"),
            4,
            "Node spec has podSelector, which belong to another kind; expected only podCIDR",
        ),
        (
            node("metadata: {name: n, labels: {'no spaces': x}}\n"),
            3,
            "label key \"no spaces\" is invalid",
        ),
        (
            node("metadata: {name: n, annotations: {stagewall.io/mode: audit}}\n"),
            3,
            "annotation stagewall.io/mode on a Node; expected it on a Namespace",
        ),
        (
            node("metadata: {name: n}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}\n"),
            6,
            "duplicate Node n; first defined at p.yaml:2",
        ),
    ];
    for (yaml, line, expected) in cases {
        let e = one_error(&yaml);
        assert!(
            e.line == line && e.message.contains(expected),
            "{yaml}\nexpected line {line}: {expected}\ngot {e}"
        );
        // The same document beside a good Node: the good one is still read.
        let beside = format!("{CONTROL_PLANE}---\n{yaml}");
        let mut set = PolicySet::default();
        assert!(
            parse_into(Path::new("p.yaml"), &beside, &mut set).is_err()
                || validate_set(&set).is_err(),
            "{beside}"
        );
        assert!(set.nodes.iter().any(|n| n.name == "cp-1"), "{beside}");
    }
}

#[test]
fn a_pipeline_fqdn_is_an_egress_domain_peer_and_never_a_source() {
    use crate::policy::model::DomainPattern;
    let pipeline = |flow: &str| {
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: p, namespace: ml}}\nspec:\n  stages:\n    - {{name: training, selector: {{matchLabels: {{stage: training}}}}}}\n  flows:\n    - {flow}\n"
        )
    };
    let set = expanded(&pipeline("{from: {stage: training}, to: {fqdn: '*.PythonHosted.org'}, ports: [{protocol: TCP, port: 443}]}")).unwrap();
    let training = set
        .policies
        .iter()
        .find(|p| p.name.name == "p-training")
        .unwrap();
    assert_eq!(
        training.egress[0].peers,
        [Peer::Domain(
            DomainPattern::parse("*.pythonhosted.org").unwrap()
        )]
    );
    assert!(training.ingress.is_empty());
    for (flow, message) in [
        (
            "{from: {fqdn: pypi.org}, to: {stage: training}}",
            "p.yaml:8: fqdn can only be a flow's destination (to)",
        ),
        (
            "{from: {stage: training}, to: {fqdn: 'pypi.*'}}",
            "p.yaml:8: fqdn: domain name \"pypi.*\" has a `*` that is not the whole first label",
        ),
        (
            "{from: {stage: training}, to: {fqdn: pypi.org, cidr: 10.0.0.0/8}}",
            "p.yaml:8: flow end must be exactly one of",
        ),
    ] {
        let err = parse_into(
            Path::new("p.yaml"),
            &pipeline(flow),
            &mut PolicySet::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with(message), "{flow}: {err}");
    }
}

/// A ClusterNetworkPolicy with one egress (or ingress) rule, for the domainNames cases
/// (cluster_tests.rs has the rest of the schema; the rule is at line 8).
fn cluster_rule(direction: &str, rule: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: guard}}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {{namespaces: {{}}}}\n  {direction}: [{rule}]\n"
    )
}

#[test]
fn domain_names_parse_into_canonical_patterns_in_accept_rules_only() {
    use crate::policy::model::ClusterPeer;
    let mut set = PolicySet::default();
    let yaml = cluster_rule(
        "egress",
        "{action: Accept, to: [{domainNames: [PyPI.org., '*.pythonhosted.org']}], protocols: [{tcp: {destinationPort: {number: 443}}}]}",
    );
    parse_into(Path::new("c.yaml"), &yaml, &mut set).unwrap();
    let rule = &set.cluster_policies[0].egress[0];
    let ClusterPeer::Domains(patterns) = &rule.peers[0] else {
        panic!("{:?}", rule.peers);
    };
    let texts: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
    assert_eq!(texts, ["pypi.org", "*.pythonhosted.org"]);
    let many = vec!["example.org"; 26].join(", ");
    for (direction, rule, message) in [
        (
            "egress",
            "{action: Pass, to: [{networks: [10.0.0.0/8]}, {domainNames: [example.org]}]}",
            "egress rule with action Pass has a domainNames peer; expected action Accept",
        ),
        (
            "egress",
            "{action: Accept, to: [{domainNames: []}]}",
            "domainNames has 0 names; expected from 1 to 25",
        ),
        (
            "egress",
            &format!("{{action: Accept, to: [{{domainNames: [{many}]}}]}}"),
            "domainNames has 26 names; expected from 1 to 25",
        ),
        (
            "egress",
            "{action: Accept, to: [{domainNames: [pypi.org, 'files.*.org']}]}",
            "domainNames: domain name \"files.*.org\" has a `*` that is not the whole first label",
        ),
        (
            "egress",
            "{action: Accept, to: [{domainNames: [org]}]}",
            "single label; expected at least two",
        ),
        (
            "egress",
            "{action: Accept, to: [{domainNames: [example.org]}], protocols: [{destinationNamedPort: https}]}",
            "rule has a domainNames peer and a destinationNamedPort",
        ),
        (
            "ingress",
            "{action: Accept, from: [{domainNames: [example.org]}]}",
            "domainNames is an egress peer; expected namespaces or pods in an ingress rule",
        ),
    ] {
        let err = parse_into(
            Path::new("c.yaml"),
            &cluster_rule(direction, rule),
            &mut PolicySet::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.yaml:8: "), "{rule}: {err}");
        assert!(err.contains(message), "{rule}: {err}");
    }
}

/// stagewall's NetworkPolicy extension in policy files (what advise writes): an egress
/// peer by domain name, alone, never in `from`.
#[test]
fn a_network_policy_fqdn_peer_is_egress_only_and_alone() {
    let policy = |rules: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: ml}}\nspec:\n  podSelector: {{}}\n{rules}"
        )
    };
    let mut set = PolicySet::default();
    parse_into(
        Path::new("p.yaml"),
        &policy("  egress:\n  - to: [{fqdn: pypi.org}]\n    ports: [{protocol: TCP, port: 443}]\n"),
        &mut set,
    )
    .unwrap();
    assert_eq!(
        set.policies[0].egress[0].peers,
        [Peer::Domain(
            crate::policy::model::DomainPattern::parse("pypi.org").unwrap()
        )]
    );
    for (rules, message) in [
        (
            "  ingress:\n  - from: [{fqdn: pypi.org}]\n",
            "fqdn can only be an egress peer (to)",
        ),
        (
            "  egress:\n  - to: [{fqdn: pypi.org, ipBlock: {cidr: 10.0.0.0/8}}]\n",
            "peer has fqdn together with ipBlock or a selector",
        ),
        ("  egress:\n  - to: [{fqdn: 'a..b'}]\n", "fqdn: domain name"),
    ] {
        let e = one_error(&policy(rules)).to_string();
        assert!(e.contains(message), "{e}");
        assert!(
            e.contains("line") || e.contains(":7") || e.contains(":8"),
            "{e}"
        );
    }
}
