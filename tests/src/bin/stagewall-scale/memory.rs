//! The agent's memory as the kernel counts it: resident and peak (/proc/<pid>/status)
//! and its BPF maps' locked kernel memory (fdinfo memlock), the largest maps named.

use stagewall_tests::{
    Agent,
    bench::{map_memlock, status_kib},
};

use crate::table::{Line, mib};

/// Maps named in the memory line, largest first.
const NAMED_MAPS: usize = 4;

pub fn of_agent(agent: &Agent, what: &str) -> Vec<Line> {
    let pid = agent.pid();
    let rss = status_kib(pid, "VmRSS");
    let peak = status_kib(pid, "VmHWM");
    let mut maps = map_memlock(pid);
    maps.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let total: u64 = maps.iter().map(|(_, bytes)| bytes).sum();
    let largest: Vec<String> = maps
        .iter()
        .take(NAMED_MAPS)
        .map(|(name, bytes)| format!("{name} {}", mib(*bytes)))
        .collect();
    vec![
        Line::held_to(
            format!("{what}: agent resident memory (VmRSS; peak VmHWM)"),
            format!(
                "{:.1} MiB; peak {:.1} MiB",
                rss as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            "under 256 MiB",
            peak < 256 * 1024,
        ),
        Line::figure(
            format!("{what}: kernel maps' memory (memlock, {} maps)", maps.len()),
            format!("{} ({})", mib(total), largest.join(", ")),
        ),
    ]
}
