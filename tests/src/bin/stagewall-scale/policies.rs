//! The policies of the workload and identity scales, as files of a policy directory.

use std::fmt::Write as _;

/// Frontend workloads (no cgroup here: peers on other nodes) every local workload takes
/// ingress from.
const FRONTENDS: usize = 10;
/// Most ipBlocks in one policy file: the agent takes at most 20,000 ipBlock peers in
/// one NetworkPolicy.
const BLOCKS_PER_FILE: usize = 20_000;

/// The address of the i-th workload (10.200.0.1 onwards).
fn address(i: usize) -> String {
    format!("10.{}.{}.{}", 200 + i / 62_500, i / 250 % 250, i % 250 + 1)
}

/// `workloads` local workloads in 100 apps, the cgroup of the i-th `cgroup(i)`, taking
/// ingress on TCP 8080 from 10 frontend workloads: each local workload holds 10 POLICY
/// entries. Files by name.
pub fn workloads(workloads: usize, cgroup: impl Fn(usize) -> String) -> Vec<(String, String)> {
    let mut yaml = String::new();
    for i in 0..workloads {
        writeln!(
            yaml,
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: w{i}, namespace: ml, labels: {{app: a{}}}}}\nspec:\n  cgroup: {}\n  addresses: [{}]\n---",
            i % 100,
            cgroup(i),
            address(i)
        )
        .unwrap();
    }
    for f in 0..FRONTENDS {
        writeln!(
            yaml,
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: frontend-{f}, namespace: ml, labels: {{role: frontend}}}}\nspec:\n  addresses: [10.199.0.{}]\n---",
            f + 1
        )
        .unwrap();
    }
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-frontends, namespace: ml}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: Exists}]}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: frontend}}}]\n    ports: [{port: 8080}]\n";
    vec![
        ("workloads.yaml".into(), yaml),
        ("policy.yaml".into(), policy.into()),
    ]
}

/// One local workload (`cgroup`, address 10.199.1.1) taking ingress on TCP 443 from
/// `identities` distinct /32 ipBlocks (each a CIDR identity of its own), in policies of
/// at most BLOCKS_PER_FILE ipBlocks a file. Files by name.
pub fn identities(identities: usize, cgroup: &str) -> Vec<(String, String)> {
    let mut files = vec![(
        "workload.yaml".to_string(),
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: server, namespace: ml, labels: {{app: server}}}}\nspec:\n  cgroup: {cgroup}\n  addresses: [10.199.1.1]\n"
        ),
    )];
    for (n, first) in (0..identities).step_by(BLOCKS_PER_FILE).enumerate() {
        let mut yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: blocks-{n}, namespace: ml}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{{port: 443}}]\n    from:\n"
        );
        for i in first..identities.min(first + BLOCKS_PER_FILE) {
            writeln!(yaml, "    - ipBlock: {{cidr: {}/32}}", address(i)).unwrap();
        }
        files.push((format!("blocks-{n}.yaml"), yaml));
    }
    files
}
