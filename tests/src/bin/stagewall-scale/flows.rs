//! The flow table under many new flows: `senders` workloads each open `per_sender` new
//! UDP flows (allowed) at once. What the table holds afterwards (counted from the pinned
//! map), the flows it refused (each workload has a share of new entries per second; over
//! it a flow passes untracked, counted in stagewall_flow_track_failures_total), and the
//! table's kernel memory.

use stagewall::datapath::{inspect::flow_count, pins::Pins};
use stagewall_common::{FLOW_INSERTS_PER_WINDOW, FLOWS_MAX};
use stagewall_tests::{Testbed, bench::map_memlock, metric_sum};

use crate::{
    flood,
    table::{Line, mib},
};

pub fn measure(senders: usize, per_sender: u32) -> Vec<Line> {
    let names: Vec<String> = (0..senders).map(|i| format!("f{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("sink");
    let bed = Testbed::new(&all).expect("creating the test bed");
    let sink = bed.node("sink").v4;
    let mut policy = String::new();
    for name in &names {
        policy += &bed.workload_yaml(name, "flows", "{app: sender}", true);
    }
    policy += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: senders, namespace: flows}}\nspec:\n  podSelector: {{matchLabels: {{app: sender}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {sink}/32}}}}], ports: [{{protocol: UDP}}]}}]\n"
    );
    bed.write_policy("flows.yaml", &policy).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let before = metric_sum(&agent.metrics(), "stagewall_flow_track_failures_total", &[]);
    let offered = senders as u64 * u64::from(per_sender);
    let took = flood::flows(&bed, &names, "sink", per_sender);
    let tracked = flow_count(&Pins::new(&bed.bpffs)).expect("reading the flow table");
    let refused = metric_sum(&agent.metrics(), "stagewall_flow_track_failures_total", &[]) - before;
    let memlock: u64 = map_memlock(agent.pid())
        .into_iter()
        .filter(|(name, _)| name == "FLOWS")
        .map(|(_, bytes)| bytes)
        .sum();
    let what = format!("{offered} new flows from {senders} workloads at once");
    vec![
        Line::held_to(
            "flow table size (FLOWS, LRU hash, fixed in the kernel object)",
            format!(
                "{FLOWS_MAX} entries; a workload adds at most {FLOW_INSERTS_PER_WINDOW} a second"
            ),
            "1,000,000 concurrently tracked flows",
            FLOWS_MAX >= 1_000_000,
        ),
        Line::figure(
            format!("{what}: tracked afterwards; refused (counted)"),
            format!(
                "{tracked} tracked; {refused:.0} refused over the workloads' shares, in {:.1} s",
                took.as_secs_f64()
            ),
        ),
        Line::figure("flow table kernel memory (FLOWS memlock)", mib(memlock)),
    ]
}
