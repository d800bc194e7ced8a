//! The event pipeline: `flows` denied flows of one packet each (every packet an event, as
//! with the per-flow event limit out of the way), from a workload attached by interface.
//! The agent writes every event to its log file, counts it in its metrics and records
//! it (`--record-flows all`). Events per second from the first frame to the last event
//! delivered, events lost (the ring buffer full), and the agent's CPU time per 10,000.

use std::time::{Duration, Instant};

use stagewall_tests::{
    Testbed,
    bench::{USER_HZ, cpu_ticks},
    metric_sum,
};

use crate::{flood, table::Line};

/// The target of issue 20, events per second.
const TARGET_PER_SECOND: f64 = 200_000.0;

pub fn measure(flows: u32) -> Vec<Line> {
    let bed = Testbed::new(&["flooder", "sink"]).expect("creating the test bed");
    let mut policy = bed.workload_yaml("flooder", "events", "{app: flooder}", true);
    policy += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: no-egress, namespace: events}\nspec:\n  podSelector: {matchLabels: {app: flooder}}\n  policyTypes: [Egress]\n";
    bed.write_policy("events.yaml", &policy).unwrap();
    let events_file = bed.dir.with_extension("events.jsonl");
    let agent = bed
        .start_agent(&[
            "--events-file",
            events_file.to_str().unwrap(),
            "--record-flows",
            "all",
        ])
        .expect("starting the agent");
    let delivered = |m: &str| metric_sum(m, "stagewall_events_delivered_total", &[]);
    let lost = |m: &str| metric_sum(m, "stagewall_events_lost_total", &[]);
    let before = agent.metrics();
    let cpu_before = cpu_ticks(agent.pid());
    let started = Instant::now();
    let sent_in = flood::flows(&bed, &["flooder".to_string()], "sink", flows);
    // Until no event arrived for a second: the last delivery's time ends the window.
    let (mut last_count, mut last_change) = (delivered(&agent.metrics()), started.elapsed());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = delivered(&agent.metrics());
        if now != last_count {
            (last_count, last_change) = (now, started.elapsed());
        } else if started.elapsed() - last_change > Duration::from_secs(1) {
            break;
        }
    }
    let cpu_seconds = (cpu_ticks(agent.pid()) - cpu_before) as f64 / USER_HZ;
    let after = agent.metrics();
    let got = delivered(&after) - delivered(&before);
    let missing = lost(&after) - lost(&before);
    let per_second = got / last_change.as_secs_f64();
    let _ = std::fs::remove_file(&events_file);
    vec![
        Line::held_to(
            format!(
                "{flows} denied one-packet flows: events delivered per second (log line, metrics, flow record each)"
            ),
            format!(
                "{per_second:.0}/s ({got:.0} delivered in {:.2} s; the frames took {:.2} s to send); {missing:.0} lost",
                last_change.as_secs_f64(),
                sent_in.as_secs_f64()
            ),
            "200,000/s without loss",
            per_second >= TARGET_PER_SECOND && missing == 0.0,
        ),
        Line::figure(
            "agent CPU per 10,000 events (utime + stime)",
            format!(
                "{:.1} ms ({cpu_seconds:.2} s for {got:.0})",
                cpu_seconds * 1000.0 / got.max(1.0) * 10_000.0
            ),
        ),
    ]
}
