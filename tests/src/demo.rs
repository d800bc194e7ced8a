//! The demo pipeline: the example inventory (policies/ml-pipeline/workloads.yaml) brought
//! to life as network namespaces and cgroups, with its servers, and the connections
//! `cargo xtask demo` probes with the verdicts the example policies demand.

use std::net::IpAddr;

use crate::{Layout, NodeSpec, Testbed};

/// The demo's workloads as policies/ml-pipeline/workloads.yaml names them.
const NODES: [(&str, u8, &str); 7] = [
    ("data-ingestion", 10, "sw-demo-ingest"),
    ("data-validation", 11, "sw-demo-valid"),
    ("trainer-0", 20, "sw-demo-train0"),
    ("trainer-1", 21, "sw-demo-train1"),
    ("model-serving", 30, "sw-demo-serve"),
    ("inference-monitor", 31, "sw-demo-mon"),
    ("external-source", 40, "sw-demo-ext"),
];
/// The partner's upload service, outside the host (in the pipeline's allowed CIDR).
const EXTERNAL: &str = "203.0.113.5";

/// The demo's namespaces, cgroups and servers.
pub fn testbed() -> anyhow::Result<Testbed> {
    let layout = Layout {
        prefix: "stagewall-demo".into(),
        cgroup_dir: "stagewall-demo".into(),
        nodes: NODES
            .iter()
            .map(|(name, n, host_if)| NodeSpec {
                name: name.to_string(),
                n: *n,
                host_if: host_if.to_string(),
            })
            .collect(),
    };
    let mut bed = Testbed::with_layout(layout)?;
    bed.make_outside("external-source", EXTERNAL)?;
    bed.serve("data-ingestion", &[8080], &[8080])?;
    bed.serve("data-validation", &[9090], &[])?;
    bed.serve("trainer-0", &[2222, 8888, 22], &[])?;
    bed.serve("trainer-1", &[2222, 8888], &[])?;
    bed.serve("model-serving", &[8500, 8501], &[])?;
    Ok(bed)
}

/// One TCP connection of the demo, and what the example policies make of it: "ok",
/// "eperm" (denied at connect()) or "timeout" (dropped on the way in).
pub struct Probe {
    pub from: &'static str,
    pub to: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    pub expected: &'static str,
}

/// The demo's connections: the pipeline's paths and some it does not allow.
pub fn probes(bed: &Testbed) -> Vec<Probe> {
    let ip = |node: &str| bed.node(node).v4;
    let probe = |from, to, addr, port, expected| Probe {
        from,
        to,
        addr,
        port,
        expected,
    };
    let world: IpAddr = "192.0.2.1".parse().expect("an address");
    vec![
        probe(
            "external-source",
            "data-ingestion",
            ip("data-ingestion"),
            8080,
            "ok",
        ),
        probe(
            "data-ingestion",
            "data-validation",
            ip("data-validation"),
            9090,
            "ok",
        ),
        probe(
            "data-ingestion",
            "data-validation (IPv6)",
            bed.node("data-validation").v6,
            9090,
            "ok",
        ),
        probe("trainer-0", "trainer-1", ip("trainer-1"), 2222, "ok"),
        probe("trainer-1", "trainer-0", ip("trainer-0"), 8888, "ok"),
        probe(
            "trainer-0",
            "model-serving",
            ip("model-serving"),
            8500,
            "ok",
        ),
        probe(
            "inference-monitor",
            "model-serving",
            ip("model-serving"),
            8501,
            "ok",
        ),
        probe("trainer-1", "trainer-0 ssh", ip("trainer-0"), 22, "eperm"),
        probe(
            "data-ingestion",
            "model-serving",
            ip("model-serving"),
            8500,
            "eperm",
        ),
        probe(
            "trainer-0",
            "data-validation",
            ip("data-validation"),
            9090,
            "eperm",
        ),
        probe("trainer-0", "world 192.0.2.1", world, 443, "eperm"),
        probe(
            "external-source",
            "model-serving",
            ip("model-serving"),
            8500,
            "timeout",
        ),
        probe(
            "external-source",
            "data-validation",
            ip("data-validation"),
            9090,
            "timeout",
        ),
    ]
}
