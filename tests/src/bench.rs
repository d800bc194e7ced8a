//! What the benchmark binaries (`stagewall-bench`, `stagewall-scale`) share: the measured
//! policy (N ingress rules at the server over 1,000 CIDR identities, and the ctl
//! workload's egress rule that the rule-change measurement flips), the one-rule-change
//! measurement itself (file written -> a connection's verdict changed), and what the
//! kernel counts of the agent: CPU time, resident memory, its maps' locked memory.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{Testbed, probe_bin};

pub const IPERF_PORT: u16 = 5201;
pub const ECHO_PORT: u16 = 5202;
pub const UDP_PORT: u16 = 5203;
/// Distinct CIDRs the measured policy's rules draw from (each a CIDR identity).
pub const CIDRS: usize = 1_000;
/// Rules of one NetworkPolicy of the measured policy: the YAML reader takes at most
/// 250,000 nodes a document (about 38,000 rules of this shape), so 100,000 rules are
/// ten NetworkPolicies, as a real cluster would have them.
const RULES_PER_POLICY: usize = 10_000;
/// Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ).
pub const USER_HZ: f64 = 100.0;

/// The i-th CIDR of the rule set (never the client's address).
pub fn cidr(i: usize) -> String {
    let i = i % CIDRS;
    format!("10.{}.{}.0/24", i / 250, i % 250)
}

pub fn rule_port(i: usize) -> u16 {
    10_000 + (i % 50_000) as u16
}

/// The server workload with `rules` ingress rules, RULES_PER_POLICY a NetworkPolicy (the
/// last rule lets the client and ctl in on the measured ports), and the ctl workload, whose egress to the server's echo
/// port is the rule [`rule_change_latencies`] flips.
pub fn stagewall_policy(bed: &Testbed, rules: usize) -> String {
    let mut p = bed.workload_yaml("server", "bench", "{app: server}", false);
    let header = |name: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
        )
    };
    p += &header("bench");
    for i in 0..rules.saturating_sub(1) {
        if i > 0 && i % RULES_PER_POLICY == 0 {
            p += &format!(
                "---\n{}",
                header(&format!("bench-{}", i / RULES_PER_POLICY))
            );
        }
        p += &format!(
            "    - from: [{{ipBlock: {{cidr: {}}}}}]\n      ports: [{{port: {}}}]\n",
            cidr(i),
            rule_port(i)
        );
    }
    // The last rule: the measured flows (and ctl's, so that the rule change below flips
    // between an immediate EPERM and an immediate answer, never a timeout).
    p += &format!(
        "    - from: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: {}/32}}}}]\n      ports: [{{port: {IPERF_PORT}}}, {{port: {ECHO_PORT}}}, {{port: {UDP_PORT}, protocol: UDP}}]\n",
        bed.node("client").v4,
        bed.node("ctl").v4
    );
    // The rule the control-plane measurement changes: the ctl workload's egress to the
    // echo port (denied at connect(), so the verdict shows at once either way).
    p += "---\n";
    p += &bed.workload_yaml("ctl", "bench", "{app: ctl}", false);
    p += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: ctl, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: ctl}}}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{{ipBlock: {{cidr: {}/32}}}}]\n      ports: [{{port: {ECHO_PORT}}}]\n",
        bed.node("server").v4
    );
    p
}

/// One rule change at a time, `changes` times, with the agent running on `full` (a
/// [`stagewall_policy`]) in the bed's policy file `file`: ctl's egress rule loses the echo
/// port (for another port each time, so every change differs from both policies the
/// agent holds), then gets it back. Milliseconds from the file's rename to the first
/// connection from ctl whose verdict changed.
pub fn rule_change_latencies(bed: &Testbed, file: &str, full: &str, changes: usize) -> Vec<f64> {
    let server = bed.node("server").v4.to_string();
    let mut latencies = Vec::new();
    for round in 0..changes {
        let without = full.replace(
            &format!("      ports: [{{port: {ECHO_PORT}}}]\n"),
            &format!("      ports: [{{port: {}}}]\n", 1 + round),
        );
        assert_ne!(full, without, "the policy has no ctl egress rule to change");
        let policy = if round % 2 == 0 { &without } else { full };
        let mut watch = bed.command("ctl", probe_bin()).unwrap();
        let mut watch = watch
            .args(["watch-verdict", &server, &ECHO_PORT.to_string(), "5000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
        lines.next();
        let written = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        bed.write_policy(file, policy).unwrap();
        let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let _ = watch.wait();
        if let Some(ns) = line
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u128>().ok())
        {
            latencies.push((ns.saturating_sub(written)) as f64 / 1e6);
        }
    }
    latencies
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The process's CPU time (user + system) in clock ticks ([`USER_HZ`]).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// A /proc/<pid>/status figure in KiB ("VmRSS", "VmHWM").
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The kernel memory (memlock, bytes) of every BPF map the process holds open, by map
/// name, each map once: what `fdinfo` says the kernel charged for it.
pub fn map_memlock(pid: u32) -> Vec<(String, u64)> {
    let mut maps: std::collections::BTreeMap<u32, (String, u64)> = Default::default();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    for fd in fds.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let value = |key: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        let (Some(id), Some(memlock)) = (value("map_id:"), value("memlock:")) else {
            continue;
        };
        let id = id as u32;
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map {id}"));
        maps.insert(id, (name, memlock));
    }
    maps.into_values().collect()
}

/// Milliseconds of a duration as Rust's Debug prints it ("3.2ms", "850.1µs", "1.2s").
pub fn millis(debug: &str) -> Option<f64> {
    for (unit, scale) in [("ms", 1.0), ("µs", 1e-3), ("ns", 1e-6), ("s", 1e3)] {
        if let Some(n) = debug.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

/// The durations (ms) the agent's log gives after `marker` ("read and compiled in ",
/// " applied in "), in the order logged.
pub fn logged_millis(log: &str, marker: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split(marker).nth(1)?.split_whitespace().next())
        .filter_map(|d| millis(d.trim_end_matches(':')))
        .collect()
}
