//! Fuzzes what reads a flow records file (written by the agent, but a file on disk
//! anyone with root may have edited) and everything that reads the records: any bytes
//! must give records or an error, never a panic; records accepted must be written back
//! as records equal to them; advise, simulate and report must take them without a panic,
//! and advise's YAML must parse (with the policy parser) to advised policies only, never
//! to anything a string in the records spelt out.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stagewall::{
    policy::{
        model::{Mode, PolicySet},
        parse::parse_into,
    },
    rollout::{advise, flow_records, report, simulate},
};

/// Workloads the records may name, so that advise writes policies.
const INVENTORY: &str = r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: a, namespace: ml, labels: {stage: training}}
spec: {cgroup: /a, addresses: [10.0.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: b, namespace: ml, labels: {stage: serving}}
spec: {cgroup: /b, addresses: [10.0.0.2, "fd00::2"]}
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = flow_records::parse(data) else {
        return;
    };
    let written = serde_json::to_vec(&file).expect("records serialise");
    let again = flow_records::parse(&written).expect("records written are read back");
    assert_eq!(file, again);

    let mut inventory = PolicySet::default();
    parse_into(Path::new("inventory.yaml"), INVENTORY, &mut inventory).expect("inventory");
    let _ = report::text(&report::report(&file, &inventory, Mode::Audit));
    let _ = simulate::simulate(&file, &inventory, Mode::Enforce).text();
    let yaml = advise::advise(&file, &inventory).expect("writing to a String");
    let mut advised = PolicySet::default();
    parse_into(Path::new("advised.yaml"), &yaml, &mut advised)
        .unwrap_or_else(|e| panic!("advice does not parse: {e}\n{yaml}"));
    assert!(advised.workloads.is_empty(), "{yaml}");
    for policy in &advised.policies {
        assert_eq!(policy.name.namespace, "ml", "{yaml}");
        assert!(policy.name.name.starts_with("advised-"), "{yaml}");
    }
});
