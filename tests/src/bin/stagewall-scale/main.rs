//! The node-local scale benchmark (as root; `cargo xtask bench` runs it after
//! `stagewall-bench`, `--quick` at a tenth of the sizes): one table, a line per figure,
//! the target beside the ones issue 20 sets and whether it was met.
//!
//! - `rules`: 100,000 ingress rules at one workload: apply to the kernel, one rule change
//!   (file written -> a connection's verdict changed), the agent's memory;
//! - `workloads`: local workloads, each in a real cgroup of its own (`mkdir` below the
//!   test bed's cgroup): compile, apply, endpoints, memory;
//! - `identities`: CIDR identities (one ipBlock each): compile, apply, memory;
//! - `flows`: new flows sent from many workloads at once: what the flow table holds,
//!   what it refuses (counted) and what it costs;
//! - `events`: a flood of denied flows, one packet each (every one an event, as with the
//!   per-flow event limit out of the way): events per second turned into metrics, log
//!   lines and flow records, lost ones, and the agent's CPU per 10,000 events.
//!
//! Compile figures come from `stagewall check` (one process each, peak memory from
//! wait4) so that sizes past the kernel maps' capacity are still measured; kernel figures
//! from a running agent at the largest size the maps take.

mod applied;
mod compile;
mod events;
mod flood;
mod flows;
mod memory;
mod policies;
mod rules;
mod table;

use stagewall_tests::privileged;

/// Sizes of one run: the issue's, or a tenth of them for `--quick`.
pub struct Sizes {
    pub rules: usize,
    pub rule_changes: usize,
    pub workloads_compiled: usize,
    pub workloads_applied: usize,
    pub identities_compiled: usize,
    pub identities_applied: usize,
    pub flow_workloads: usize,
    pub flows_per_workload: u32,
    pub denied_flows: u32,
}

fn main() {
    if !privileged() {
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            rules: 10_000,
            rule_changes: 4,
            workloads_compiled: 1_000,
            workloads_applied: 400,
            identities_compiled: 100_000,
            identities_applied: 10_000,
            flow_workloads: 4,
            flows_per_workload: 25_000,
            denied_flows: 100_000,
        }
    } else {
        Sizes {
            rules: 100_000,
            rule_changes: 10,
            workloads_compiled: 10_000,
            // The ENDPOINTS map holds 4,096 endpoints per policy slot: the bed's own
            // nodes take a few.
            workloads_applied: 4_000,
            identities_compiled: 1_000_000,
            // The IPCACHE map holds 131,072 prefixes per policy slot.
            identities_applied: 130_000,
            flow_workloads: 40,
            flows_per_workload: 25_000,
            denied_flows: 1_000_000,
        }
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // `--only PART` (rules, workloads, identities, flows, events): that part alone.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let runs = |part: &str| only.is_none_or(|o| o == part);
    let mut lines = Vec::new();
    // Compiles first, while this process is small: a child's peak memory as the kernel
    // counts it starts from its parent's at the spawn.
    if runs("workloads") {
        lines.extend(compile::workloads(sizes.workloads_compiled));
    }
    if runs("identities") {
        lines.extend(compile::identities(sizes.identities_compiled));
    }
    if runs("rules") {
        lines.extend(rules::measure(sizes.rules, sizes.rule_changes));
    }
    if runs("workloads") {
        lines.extend(applied::workloads(sizes.workloads_applied));
    }
    if runs("identities") {
        lines.extend(applied::identities(sizes.identities_applied));
    }
    if runs("flows") {
        lines.extend(flows::measure(
            sizes.flow_workloads,
            sizes.flows_per_workload,
        ));
    }
    if runs("events") {
        lines.extend(events::measure(sizes.denied_flows));
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## Scale\n");
    table::print(&lines);
    println!(
        "\nload average before: {}; after: {}",
        load_before.trim(),
        load_after.trim()
    );
    if quick {
        println!(
            "\n(quick mode: a tenth of the sizes, to keep the harness from rotting; the targets are for the full sizes)"
        );
    }
}
