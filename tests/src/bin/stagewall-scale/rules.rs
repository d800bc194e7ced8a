//! 100,000 rules at one workload (the harness's measured policy, `bench::stagewall_policy`):
//! the first apply into empty maps, one rule change at that size (the harness's own
//! measurement, `bench::rule_change_latencies`), and the agent's memory after them.

use stagewall_tests::{
    Testbed,
    bench::{ECHO_PORT, logged_millis, median, rule_change_latencies, stagewall_policy},
};

use crate::table::Line;

const FILE: &str = "bench.yaml";

pub fn measure(rules: usize, changes: usize) -> Vec<Line> {
    let mut bed = Testbed::new(&["client", "server", "ctl"]).expect("creating the test bed");
    bed.serve("server", &[ECHO_PORT], &[]).unwrap();
    let policy = stagewall_policy(&bed, rules);
    bed.write_policy(FILE, &policy).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let mut lines = Vec::new();
    let started = logged_millis(&agent.log(), " applied in ");
    let apply = started.first().copied().unwrap_or(f64::NAN);
    lines.push(Line::held_to(
        format!("{rules} rules: first apply to the kernel (agent log, policy 1)"),
        format!("{apply:.0} ms"),
        "under 1 s",
        apply < 1000.0,
    ));
    let mut latencies = rule_change_latencies(&bed, FILE, &policy, changes);
    assert!(
        !latencies.is_empty(),
        "no rule change took effect; the agent's log:\n{}",
        agent.log()
    );
    let med = median(&mut latencies);
    let max = latencies[latencies.len() - 1];
    lines.push(Line::held_to(
        format!(
            "{rules} rules: one rule change, file written -> verdict changed (median of {}; max)",
            latencies.len()
        ),
        format!("{med:.1} ms; max {max:.1} ms"),
        "under 20 ms",
        med < 20.0,
    ));
    let log = agent.log();
    let mut compile = logged_millis(&log, "read and compiled in ");
    let mut apply: Vec<f64> = logged_millis(&log, " applied in ")
        .into_iter()
        .skip(1)
        .collect();
    if !compile.is_empty() && !apply.is_empty() {
        lines.push(Line::figure(
            format!("{rules} rules: of a change, in the agent (medians)"),
            format!(
                "read + parse + compile {:.1} ms, kernel maps written {:.1} ms",
                median(&mut compile),
                median(&mut apply)
            ),
        ));
    }
    lines.extend(crate::memory::of_agent(&agent, &format!("{rules} rules")));
    lines
}
