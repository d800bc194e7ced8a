//! The demo pipeline: the example inventory (policies/ml-pipeline/workloads.yaml) brought
//! to life as network namespaces and cgroups, the agent enforcing policies/ on it, and
//! probes that show what the policies allow and deny, then the agent's violation events.
//! Exits non-zero if any probe does not get the verdict the policies demand.
//!
//! Run it with `cargo xtask demo` (as root).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use stagewall_tests::{Layout, NodeSpec, Testbed, metric_sum, privileged};

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
const EXTERNAL: &str = "203.0.113.5";

fn main() -> anyhow::Result<()> {
    if !privileged() {
        anyhow::bail!("the demo needs root");
    }
    let policies: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "policies".into())
        .into();
    let policies = policies.canonicalize()?;
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

    println!("== stagewall check {}", policies.display());
    let check = std::process::Command::new(stagewall_tests::agent_bin())
        .arg("check")
        .arg(&policies)
        .status()?;
    anyhow::ensure!(check.success(), "the example policies do not check");

    println!(
        "\n== stagewall run --policies {} (enforce mode)",
        policies.display()
    );
    let mut agent = bed.start_agent_on(&policies, &[])?;
    let ip = |node: &str| bed.node(node).v4;
    let ip6 = |node: &str| bed.node(node).v6;
    let probes: Vec<(&str, &str, IpAddr, u16, &str)> = vec![
        (
            "external-source",
            "data-ingestion",
            ip("data-ingestion"),
            8080,
            "ok",
        ),
        (
            "data-ingestion",
            "data-validation",
            ip("data-validation"),
            9090,
            "ok",
        ),
        (
            "data-ingestion",
            "data-validation (IPv6)",
            ip6("data-validation"),
            9090,
            "ok",
        ),
        ("trainer-0", "trainer-1", ip("trainer-1"), 2222, "ok"),
        ("trainer-1", "trainer-0", ip("trainer-0"), 8888, "ok"),
        (
            "trainer-0",
            "model-serving",
            ip("model-serving"),
            8500,
            "ok",
        ),
        (
            "inference-monitor",
            "model-serving",
            ip("model-serving"),
            8501,
            "ok",
        ),
        ("trainer-1", "trainer-0 ssh", ip("trainer-0"), 22, "eperm"),
        (
            "data-ingestion",
            "model-serving",
            ip("model-serving"),
            8500,
            "eperm",
        ),
        (
            "trainer-0",
            "data-validation",
            ip("data-validation"),
            9090,
            "eperm",
        ),
        (
            "trainer-0",
            "world 192.0.2.1",
            "192.0.2.1".parse()?,
            443,
            "eperm",
        ),
        (
            "external-source",
            "model-serving",
            ip("model-serving"),
            8500,
            "timeout",
        ),
        (
            "external-source",
            "data-validation",
            ip("data-validation"),
            9090,
            "timeout",
        ),
    ];
    println!(
        "\n{:<20} {:<26} {:>6}  {:<8} {:<8} {:>6}",
        "FROM", "TO", "PORT", "EXPECTED", "RESULT", "MS"
    );
    let mut wrong = 0;
    for (from, to, addr, port, expected) in &probes {
        let outcome = bed.tcp(from, *addr, *port);
        let mark = if outcome.is(expected) {
            ""
        } else {
            "  <-- WRONG"
        };
        wrong += usize::from(!outcome.is(expected));
        println!(
            "{from:<20} {to:<26} {port:>6}  {expected:<8} {:<8} {:>6}{mark}",
            outcome.word, outcome.millis
        );
    }
    println!(
        "\nok: allowed; eperm: denied at connect() by cgroup/connect4|6; timeout: dropped on the way in"
    );

    std::thread::sleep(Duration::from_millis(300));
    let (metrics, events) = agent.settled_metrics_and_events();
    println!(
        "\n== violation events ({}), one JSON line each",
        events.len()
    );
    for e in &events {
        println!("{e}");
    }
    println!("\n== /metrics: ml_network_violations_total");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("ml_network_violations_total"))
    {
        println!("{line}");
    }
    let total = metric_sum(&metrics, "ml_network_violations_total", &[]);
    agent.stop()?;
    println!("\nagent stopped; namespaces and cgroups removed");
    anyhow::ensure!(wrong == 0, "{wrong} probe(s) got the wrong verdict");
    anyhow::ensure!(
        total as usize == events.len(),
        "metric total {total} != {} events",
        events.len()
    );
    Ok(())
}
