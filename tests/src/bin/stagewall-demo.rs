//! The demo pipeline: the example inventory (policies/ml-pipeline/workloads.yaml) brought
//! to life as network namespaces and cgroups, the agent enforcing policies/ on it, and
//! probes that show what the policies allow and deny, then the agent's violation events.
//! Exits non-zero if any probe does not get the verdict the policies demand.
//!
//! Run it with `cargo xtask demo` (as root).

use std::{path::PathBuf, time::Duration};

use stagewall_tests::{demo, metric_sum, privileged};

fn main() -> anyhow::Result<()> {
    if !privileged() {
        anyhow::bail!("the demo needs root");
    }
    let policies: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "policies".into())
        .into();
    let policies = policies.canonicalize()?;
    let bed = demo::testbed()?;

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
    let probes = demo::probes(&bed);
    println!(
        "\n{:<20} {:<26} {:>6}  {:<8} {:<8} {:>6}",
        "FROM", "TO", "PORT", "EXPECTED", "RESULT", "MS"
    );
    let mut wrong = 0;
    for demo::Probe {
        from,
        to,
        addr,
        port,
        expected,
    } in &probes
    {
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
