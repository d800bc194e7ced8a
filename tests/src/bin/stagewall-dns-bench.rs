//! The DNS proxy's benchmark (`cargo xtask bench [--quick]` runs it after stagewall-bench;
//! as root): what egress by name adds to a workload's DNS lookups, printed as Markdown
//! tables.
//!
//! One test bed: dnsmasq in a node of its own answering from a hosts file, and two
//! identical egress-isolated workloads allowed DNS to it: `named` also has a name rule
//! (`*.pythonhosted.test`), so its queries are redirected to the agent's proxy, which
//! forwards them, writes the answers' addresses into the kernel and then answers;
//! `direct` has no name rule, so its queries go to dnsmasq directly. One agent, started
//! with `--dns-proxy`, serves both; the two are measured alternately, pair after pair.
//!
//! 1. Lookup latency: `stagewall-probe dns-rr` (sequential A queries on one socket).
//! 2. Lookups per second: `stagewall-probe dns-load` with 1 and 32 queries in flight.
//! 3. Memory: the named workload resolves N distinct names (100,000; 10,000 with
//!    `--quick`), each to its own address; the agent's resident memory and the kernel
//!    map's (DNS_LEARNT's memlock, as the kernel reports it) before and after.
//!
//! Nothing is asserted about the figures (a noisy machine must not fail the run); a
//! benchmark that cannot run at all fails.

use std::{
    collections::HashMap,
    ffi::CString,
    net::{IpAddr, Ipv4Addr},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    time::{Duration, Instant},
};

use stagewall_tests::{Agent, Testbed, dns::DnsServer, metric_sum, privileged, probe_bin};

/// The name the latency and throughput queries ask (allowed for the named workload).
const NAME: &str = "files.pythonhosted.test";
const NAME_ADDR: &str = "203.0.113.10";

struct Settings {
    /// Pairs of (direct, through the agent) measurements, alternating which goes first.
    pairs: usize,
    /// Sequential queries per latency measurement.
    queries: usize,
    /// Seconds per throughput measurement.
    load_seconds: f64,
    /// Throughput pairs (per concurrency).
    load_pairs: usize,
    /// Distinct names learnt for the memory figures.
    names: usize,
}

/// The i-th of the many names, and its address (100.64.0.0/10: nothing there, nothing
/// connects; the addresses are only learnt).
fn many(i: usize) -> (String, IpAddr) {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    (
        format!("n{i:06}.pythonhosted.test"),
        IpAddr::V4(Ipv4Addr::from(base + i as u32)),
    )
}

fn policy(bed: &Testbed, resolver: IpAddr) -> String {
    let mut p = format!(
        "apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {{name: dns-bench, namespace: bench}}
spec:
  stages:
    - name: named
      selector: {{matchLabels: {{bench: named}}}}
    - name: direct
      selector: {{matchLabels: {{bench: direct}}}}
  flows:
    - from: {{stage: named}}
      to: {{cidr: {resolver}/32}}
      ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
    - from: {{stage: direct}}
      to: {{cidr: {resolver}/32}}
      ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
    - from: {{stage: named}}
      to: {{fqdn: \"*.pythonhosted.test\"}}
      ports: [{{protocol: TCP, port: 443}}]
---
"
    );
    p += &bed.workload_yaml("named", "bench", "{bench: named}", false);
    p += &bed.workload_yaml("direct", "bench", "{bench: direct}", false);
    p
}

/// Runs the probe in `node`; the `key value` pairs of its result line.
fn probe(bed: &Testbed, node: &str, args: &[&str]) -> HashMap<String, f64> {
    let out = bed
        .command(node, probe_bin())
        .expect("probe command")
        .args(args)
        .output()
        .expect("running the probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("answered "))
        .unwrap_or_else(|| {
            panic!(
                "stagewall-probe {} in {node}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(2)
        .filter_map(|kv| Some((kv[0].to_string(), kv.get(1)?.parse().ok()?)))
        .collect()
}

/// Median (of an even count, the mean of the middle two), min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

fn cell(values: &[f64], decimals: usize) -> String {
    let (median, min, max) = spread(values);
    format!("{median:.decimals$} ({min:.decimals$}-{max:.decimals$})")
}

fn median(values: &[f64]) -> f64 {
    spread(values).0
}

/// The two configurations, alternating which goes first: pair i runs `direct` first when
/// i is even.
fn pairs(
    count: usize,
    mut measure: impl FnMut(&str) -> HashMap<String, f64>,
) -> [Vec<HashMap<String, f64>>; 2] {
    let (mut direct, mut named) = (Vec::new(), Vec::new());
    for i in 0..count {
        if i.is_multiple_of(2) {
            direct.push(measure("direct"));
            named.push(measure("named"));
        } else {
            named.push(measure("named"));
            direct.push(measure("direct"));
        }
    }
    [direct, named]
}

fn column(runs: &[HashMap<String, f64>], key: &str) -> Vec<f64> {
    runs.iter().map(|r| r[key]).collect()
}

/// DNS_LEARNT's memory as the kernel accounts it (`memlock` in the fdinfo of a descriptor
/// of the pinned map; for a map without preallocation, what its entries and buckets use).
fn learnt_map_memlock(bpffs: &Path) -> Option<u64> {
    let pin = bpffs
        .join(format!("v{}/maps", stagewall_common::MAP_LAYOUT_VERSION))
        .join(stagewall_common::MAP_DNS_LEARNT);
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = CString::new(pin.as_os_str().as_bytes()).ok()?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: `attr` is the BPF_OBJ_GET prefix of union bpf_attr, alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        eprintln!(
            "opening {}: {}",
            pin.display(),
            std::io::Error::last_os_error()
        );
        return None;
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok();
    // SAFETY: the descriptor BPF_OBJ_GET returned, ours to close.
    unsafe { libc::close(fd as i32) };
    info?
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

fn learnt(agent: &Agent) -> f64 {
    metric_sum(&agent.metrics(), "stagewall_dns_learnt_addresses", &[])
}

fn main() {
    if !privileged() {
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            pairs: 2,
            queries: 1_000,
            load_seconds: 1.0,
            load_pairs: 1,
            names: 10_000,
        }
    } else {
        Settings {
            pairs: 7,
            queries: 10_000,
            load_seconds: 3.0,
            load_pairs: 5,
            names: 100_000,
        }
    };
    let started = Instant::now();
    let mut bed = Testbed::new(&["named", "direct", "dns"]).expect("creating the test bed");
    bed.give_hub_gateway().expect("the hub's address");
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    // The many names: a hosts file dnsmasq reads at its start, and a file for the probe.
    let names: Vec<(String, IpAddr)> = (0..s.names).map(many).collect();
    let records: Vec<(&str, IpAddr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let dns = DnsServer::start_with_hosts(
        &mut bed,
        "dns",
        3_600,
        &[(NAME, ip(NAME_ADDR))],
        &[],
        &[("many", &records)],
    )
    .expect("dnsmasq");
    let resolver = dns.addr.to_string();
    let names_file = bed.dir.join("names.txt");
    let list: String = names.iter().map(|(n, _)| format!("{n}\n")).collect();
    std::fs::write(&names_file, list).expect("the names file");
    bed.write_policy("dns-bench.yaml", &policy(&bed, dns.addr))
        .expect("policy");
    let cap = s.names.to_string();
    let agent = bed
        .start_agent(&[
            "--dns-proxy",
            stagewall_tests::HUB_GATEWAY,
            "--dns-resolver",
            &resolver,
            "--dns-learnt-max",
            &cap,
            "--dns-learnt-per-workload",
            &cap,
        ])
        .expect("starting the agent");
    // dnsmasq has read the many names when it answers the last one.
    let last = &names[s.names - 1].0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&bed, "direct", &["dns-rr", &resolver, last, "1"])["answered"] != 1.0 {
        assert!(Instant::now() < deadline, "dnsmasq does not answer {last}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm up both paths; the named workload's queries must go through the proxy.
    let before = metric_sum(&agent.metrics(), "stagewall_dns_queries_total", &[]);
    for node in ["direct", "named"] {
        let r = probe(&bed, node, &["dns-rr", &resolver, NAME, "200"]);
        assert!(r["answered"] > 0.0, "{node}: no answers to {NAME}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&agent.metrics(), "stagewall_dns_queries_total", &[]) < before + 200.0 {
        assert!(
            Instant::now() < deadline,
            "the named workload's queries did not go through the proxy\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. Latency.
    let queries = s.queries.to_string();
    let [direct, named] = pairs(s.pairs, |node| {
        probe(&bed, node, &["dns-rr", &resolver, NAME, &queries])
    });
    println!(
        "\n## DNS lookup latency ({} pairs of {} sequential A queries; median (min-max) over the pairs)\n",
        s.pairs, s.queries
    );
    println!("| path | p50 µs | p99 µs | max µs | lost |");
    println!("|---|---|---|---|---|");
    for (label, runs) in [
        ("direct (no name rules)", &direct),
        ("through the agent's proxy", &named),
    ] {
        println!(
            "| {label} | {} | {} | {} | {} |",
            cell(&column(runs, "p50_us"), 1),
            cell(&column(runs, "p99_us"), 1),
            cell(&column(runs, "max_us"), 1),
            column(runs, "lost").iter().sum::<f64>()
        );
    }
    let added = |key: &str| median(&column(&named, key)) - median(&column(&direct, key));
    println!(
        "| added by the agent (difference of the medians) | {:.1} | {:.1} | | |",
        added("p50_us"),
        added("p99_us")
    );

    // 2. Throughput.
    println!(
        "\n## DNS lookups per second ({} pair(s) of {} s per concurrency; median (min-max))\n",
        s.load_pairs, s.load_seconds
    );
    println!(
        "| queries in flight | direct answers/s | through the agent answers/s | ratio | lost (direct / agent) |"
    );
    println!("|---|---|---|---|---|");
    let seconds = s.load_seconds.to_string();
    for concurrency in [1, 32] {
        let c = concurrency.to_string();
        let [direct, named] = pairs(s.load_pairs, |node| {
            probe(&bed, node, &["dns-load", &resolver, NAME, &seconds, &c])
        });
        let (d, n) = (column(&direct, "per_second"), column(&named, "per_second"));
        println!(
            "| {concurrency} | {} | {} | {:.1}% | {} / {} |",
            cell(&d, 0),
            cell(&n, 0),
            100.0 * median(&n) / median(&d).max(1.0),
            column(&direct, "lost").iter().sum::<f64>(),
            column(&named, "lost").iter().sum::<f64>()
        );
    }

    // 3. Memory at N learnt addresses.
    let rss_before = agent.rss_kib();
    let learnt_before = learnt(&agent);
    let map_before = learnt_map_memlock(&bed.bpffs);
    let names_arg = format!("@{}", names_file.display());
    let load = probe(
        &bed,
        "named",
        &["dns-load", &resolver, &names_arg, "all", "32"],
    );
    // The gauge is published every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut learnt_after = learnt(&agent);
    while learnt_after < s.names as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        learnt_after = learnt(&agent);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = agent.rss_kib();
    let map_after = learnt_map_memlock(&bed.bpffs);
    let added = (learnt_after - learnt_before).max(1.0);
    println!(
        "\n## Memory at {} learnt addresses (the named workload resolved {} distinct names)\n",
        s.names, s.names
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| names resolved | {} answered, {} lost, in {:.1} s ({} /s, 32 in flight) |",
        load["answered"], load["lost"], load["seconds"], load["per_second"]
    );
    println!(
        "| addresses learnt (`stagewall_dns_learnt_addresses`) | {learnt_before} before, {learnt_after} after |"
    );
    println!(
        "| agent resident memory (VmRSS) | {:.1} MiB before, {:.1} MiB after: {:.0} bytes per address |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) * 1024.0 / added
    );
    let entry =
        size_of::<stagewall_common::DnsLearntKey>() + size_of::<stagewall_common::DnsLearntValue>();
    match (map_before, map_after) {
        (Some(b), Some(a)) => println!(
            "| kernel map DNS_LEARNT (memlock in fdinfo) | {:.1} MiB before, {:.1} MiB after: {:.0} bytes per address ({entry} of them key and value) |",
            b as f64 / 1_048_576.0,
            a as f64 / 1_048_576.0,
            (a as f64 - b as f64) / added
        ),
        _ => println!(
            "| kernel map DNS_LEARNT | not readable; key and value: {entry} bytes per address, {:.1} MiB for {} |",
            (entry * s.names) as f64 / 1_048_576.0,
            s.names
        ),
    }
    if quick {
        println!(
            "\n(quick mode: fewer and shorter runs, 10,000 names, to keep the harness from rotting; not for comparison)"
        );
    }
    println!(
        "\n(the DNS benchmark took {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    drop(agent);
    drop(dns);
}
