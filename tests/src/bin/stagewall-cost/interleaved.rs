//! Interleaved throughput (`stagewall-cost --throughput`): baseline and stagewall
//! measured alternately, pair after pair, so that whatever else the machine does at a
//! moment weighs on both halves of a pair alike; each cell is the median of the pairs'
//! ratios with its 95% confidence interval (`stagewall_tests::paired`).
//!
//! Both halves of a pair run the same client, the same namespaces and devices, at the
//! same moment's noise: the server namespace holds two servers, one in the workload's
//! cgroup (the agent's cgroup programs run on its packets) and one in a sibling cgroup
//! that is no workload (no program runs on its packets: the baseline). The workload is
//! enforced by cgroup only here, so that no TC program sees the baseline's packets; the
//! agent runs throughout. The order inside a pair alternates, so a drift in the
//! machine's load does not favour either side.

use stagewall_tests::{Testbed, paired};

use crate::{ECHO_PORT, IPERF_PORT, policy};

/// The baseline server's ports (in the sibling cgroup).
const BASELINE_ECHO_PORT: u16 = 5212;
const BASELINE_IPERF_PORT: u16 = 5211;

pub struct Plan {
    pub pairs: usize,
    pub millis: u64,
    pub rule_counts: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Workload {
    Stream,
    RequestResponse,
    NewConnections,
}

impl Workload {
    const ALL: [Workload; 3] = [
        Workload::Stream,
        Workload::RequestResponse,
        Workload::NewConnections,
    ];
    fn name(self) -> &'static str {
        match self {
            Workload::Stream => "TCP stream (Gbit/s)",
            Workload::RequestResponse => "TCP request/response (transactions/s)",
            Workload::NewConnections => "TCP new connections (per s)",
        }
    }
}

/// One measurement of `workload` against the server on the given ports.
fn measure(bed: &Testbed, workload: Workload, millis: u64, echo: u16, iperf: u16) -> f64 {
    let server = bed.node("server").v4.to_string();
    let ms = millis.to_string();
    match workload {
        Workload::Stream => {
            // iperf3 takes whole seconds (0 would mean forever).
            let seconds = (millis / 1000).max(1).to_string();
            let out = bed
                .command("client", "iperf3")
                .unwrap()
                .args([
                    "-c",
                    &server,
                    "-p",
                    &iperf.to_string(),
                    "-t",
                    &seconds,
                    "-J",
                ])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e})"));
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .expect("iperf3's received bits per second")
                / 1e9
        }
        Workload::RequestResponse | Workload::NewConnections => {
            let mode = match workload {
                Workload::RequestResponse => "rr",
                _ => "crr",
            };
            let out = bed.probe_output("client", &[mode, &server, &echo.to_string(), &ms]);
            out.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("probe {mode}: no rate in {out:?}"))
        }
    }
}

/// Runs the plan; gives the Markdown table.
pub fn run(plan: &Plan) -> String {
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let workload_cgroup = bed.node("server").cgroup_path.clone();
    bed.serve("server", &[ECHO_PORT], &[]).unwrap();
    bed.spawn("server", "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])
        .unwrap();
    // The baseline's servers: the same namespace, a cgroup no workload holds.
    bed.move_cgroup("server", &format!("{}/baseline", bed.cgroup_base_path()))
        .unwrap();
    bed.serve("server", &[BASELINE_ECHO_PORT], &[]).unwrap();
    bed.spawn(
        "server",
        "iperf3",
        &["-s", "-p", &BASELINE_IPERF_PORT.to_string()],
    )
    .unwrap();
    bed.move_cgroup("server", &workload_cgroup).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut out = format!(
        "\n## Interleaved throughput ({} pairs of {} ms per cell; stagewall / baseline: median [95% interval])\n\n| rules | workload | baseline median | stagewall median | ratio median | 95% interval | >= 97% shown? |\n|---|---|---|---|---|---|---|\n",
        plan.pairs, plan.millis
    );
    for &rules in &plan.rule_counts {
        bed.write_policy("cost.yaml", &policy(&bed, rules, false))
            .unwrap();
        let mut agent = bed.start_agent(&[]).expect("starting the agent");
        for workload in Workload::ALL {
            let (mut base, mut wall, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for pair in 0..plan.pairs {
                let b = |bed: &Testbed| {
                    measure(
                        bed,
                        workload,
                        plan.millis,
                        BASELINE_ECHO_PORT,
                        BASELINE_IPERF_PORT,
                    )
                };
                let s = |bed: &Testbed| measure(bed, workload, plan.millis, ECHO_PORT, IPERF_PORT);
                let (bv, sv) = if pair % 2 == 0 {
                    let bv = b(&bed);
                    (bv, s(&bed))
                } else {
                    let sv = s(&bed);
                    (b(&bed), sv)
                };
                base.push(bv);
                wall.push(sv);
                ratios.push(sv / bv);
            }
            let line = match paired::median_interval(&ratios) {
                Some(m) => format!(
                    "{:.1}% | [{:.1}%, {:.1}%] ({:.1}% coverage) | {} |",
                    m.median * 100.0,
                    m.low * 100.0,
                    m.high * 100.0,
                    m.coverage * 100.0,
                    if m.low >= 0.97 { "met" } else { "not shown" }
                ),
                None => "- | too few pairs for an interval | - |".to_string(),
            };
            out += &format!(
                "| {rules} | {} | {:.2} | {:.2} | {line}\n",
                workload.name(),
                paired::median(&base),
                paired::median(&wall)
            );
        }
        agent.stop().expect("stopping the agent");
        bed.uninstall().expect("uninstalling the agent");
    }
    out
}
