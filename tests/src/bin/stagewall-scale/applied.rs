//! The workload and identity scales on a running agent, at the largest size the kernel
//! maps take: each local workload a real cgroup of its own (`mkdir` below the test bed's
//! cgroup, nothing running in it), attached to as any workload is.

use stagewall_tests::{Agent, Testbed, bench::logged_millis};

use crate::{memory, policies, table::Line};

/// Starts the agent on `files` (written into a fresh bed's policy directory) and gives
/// the lines of its first apply and its memory.
fn apply(what: &str, bed: &Testbed, files: &[(String, String)]) -> Vec<Line> {
    for (name, yaml) in files {
        bed.write_policy(name, yaml).unwrap();
    }
    let agent: Agent = bed.start_agent(&[]).expect("starting the agent");
    let log = agent.log();
    let apply = logged_millis(&log, " applied in ")
        .first()
        .copied()
        .unwrap_or(f64::NAN);
    let summary = log
        .lines()
        .find_map(|l| l.split(" mode): ").nth(1))
        .and_then(|s| s.split(" policy entries").next())
        .map(|s| format!("{s} policy entries"))
        .unwrap_or_default();
    let mut lines = vec![Line::figure(
        format!("{what}: first apply to the kernel (agent log, policy 1)"),
        format!("{apply:.0} ms ({summary})"),
    )];
    lines.extend(memory::of_agent(&agent, what));
    lines
}

pub fn workloads(count: usize) -> Vec<Line> {
    let bed = Testbed::new(&[]).expect("creating the test bed");
    for i in 0..count {
        bed.make_cgroup(&format!("w{i}")).unwrap();
    }
    let base = bed.cgroup_base_path();
    let files = policies::workloads(count, |i| format!("{base}/w{i}"));
    apply(
        &format!("{count} local workloads (real cgroups)"),
        &bed,
        &files,
    )
}

pub fn identities(count: usize) -> Vec<Line> {
    let bed = Testbed::new(&[]).expect("creating the test bed");
    bed.make_cgroup("server").unwrap();
    let files = policies::identities(count, &format!("{}/server", bed.cgroup_base_path()));
    apply(&format!("{count} CIDR identities"), &bed, &files)
}
