//! The cost per packet, as the kernel counts it (`cargo xtask bench` runs it after
//! `stagewall-bench`; `stagewall-cost [--quick]`, as root). Two tables:
//!
//! 1. Real traffic: with `kernel.bpf_stats_enabled=1`, each of the agent's programs' run
//!    time and run count (from the kernel's program info) before and after each workload;
//!    the delta's ns per run. The server is a workload enforced by cgroup and by TC on its
//!    host-side interface; the client is no workload, so every figure is the server's: its
//!    ingress program sees requests (established), new connections, denied packets; its
//!    egress program the replies.
//! 2. `BPF_PROG_TEST_RUN`: one crafted frame per path run `repeat` times by the kernel,
//!    beside an empty program of the same type measured the same way (the floor). The
//!    runs happen in a child of this binary (`stagewall-cost test-run ...`) started in the
//!    server's network namespace and cgroup (cgroup programs) or in the hub (TC), because
//!    the kernel gives a test-run packet a socket of the caller's cgroup and a device of
//!    the caller's namespace: so the program finds the server's endpoint and decides, as
//!    for a real packet (the verdicts printed prove it: a denial returns drop).
//!
//! 3. Interleaved throughput (`interleaved.rs`): baseline and stagewall alternating.
//!
//! `--cost` runs only tables 1 and 2, `--throughput` only table 3; `--rules 100,10000`
//! and `--workloads 10` pick the sizes of tables 1 and 2, `--throughput-rules 100` and
//! `--pairs 20` those of table 3.
//!
//! Tables 1 and 2 at each rule count (ingress rules at the server over 1,000 CIDRs, plus the rule
//! the measured flows match) and each workload count (the server and idle cgroup
//! workloads beside it, each with its programs attached and its endpoint entry).

use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::OwnedFd, process::Stdio, time::Instant};

mod interleaved;

use stagewall_tests::{
    Testbed,
    bpf_stats::{self, Runs, StatsSwitch},
    pinned_links, privileged,
};

pub(crate) const IPERF_PORT: u16 = 5201;
pub(crate) const ECHO_PORT: u16 = 5202;
const UDP_PORT: u16 = 5203;
const DENIED_PORT: u16 = 5999;
const CIDRS: usize = 1_000;
/// Rules per NetworkPolicy document.
const RULES_PER_POLICY: usize = 10_000;

struct Settings {
    quick: bool,
    seconds: u64,
    workload_counts: Vec<usize>,
    rule_counts: Vec<usize>,
    /// Repetitions of each test-run path.
    repeat: u32,
    /// First packets per test-run (each a new flow, run once).
    first_packets: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "test-run") {
        test_run_child(&args[2..]);
        return;
    }
    if !privileged() {
        std::process::exit(1);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            quick,
            seconds: 1,
            workload_counts: vec![10],
            rule_counts: vec![100],
            repeat: 100_000,
            first_packets: 2_000,
        }
    } else {
        Settings {
            quick,
            seconds: 3,
            workload_counts: vec![10, 1_000],
            rule_counts: vec![0, 100, 1_000, 10_000, 100_000],
            repeat: 1_000_000,
            first_packets: 20_000,
        }
    };
    // `--rules N,M` and `--workloads N,M`: only these sizes.
    let sizes = |flag: &str| -> Option<Vec<usize>> {
        let list = args.get(args.iter().position(|a| a == flag)? + 1)?;
        Some(
            list.split(',')
                .map(|n| {
                    n.parse()
                        .unwrap_or_else(|_| panic!("{flag} {list}: expected numbers like 100,1000"))
                })
                .collect(),
        )
    };
    let mut settings = settings;
    if let Some(rules) = sizes("--rules") {
        settings.rule_counts = rules;
    }
    if let Some(workloads) = sizes("--workloads") {
        settings.workload_counts = workloads;
    }
    let settings = settings;
    let only_cost = args.iter().any(|a| a == "--cost");
    let only_throughput = args.iter().any(|a| a == "--throughput");
    if !only_throughput {
        cost_tables(&settings);
    }
    if !only_cost {
        let plan = if quick {
            interleaved::Plan {
                pairs: 6,
                millis: 500,
                rule_counts: vec![100],
            }
        } else {
            interleaved::Plan {
                pairs: 20,
                millis: 1_000,
                rule_counts: vec![100, 10_000],
            }
        };
        let plan = interleaved::Plan {
            rule_counts: sizes("--throughput-rules").unwrap_or(plan.rule_counts),
            pairs: sizes("--pairs").map_or(plan.pairs, |p| p[0]),
            ..plan
        };
        println!("{}", interleaved::run(&plan));
    }
}

/// Tables 1 and 2, printed.
fn cost_tables(settings: &Settings) {
    let _stats = StatsSwitch::on().expect("turning kernel.bpf_stats_enabled on");
    let mut traffic_rows = Vec::new();
    let mut test_run_rows = Vec::new();
    for &workloads in &settings.workload_counts {
        let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
        bed.serve("server", &[ECHO_PORT], &[UDP_PORT, DENIED_PORT])
            .unwrap();
        let idle = idle_workloads(&bed, workloads - 1);
        for &rules in &settings.rule_counts {
            bed.write_policy("cost.yaml", &(policy(&bed, rules, true) + &idle))
                .unwrap();
            let started = Instant::now();
            let mut agent = bed.start_agent(&[]).expect("starting the agent");
            eprintln!(
                "{workloads} workloads, {rules} rules: agent ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let programs = bpf_stats::pinned_programs(&pinned_links(&bed.bpffs))
                .expect("reading the agent's pinned links");
            // Each row on stderr too as it comes: a long run stopped halfway keeps them.
            for (name, runs) in traffic(&bed, &programs, settings.seconds) {
                eprintln!("| {workloads} | {rules} | {name} | {runs:?}");
                traffic_rows.push((workloads, rules, name, runs));
            }
            for line in test_runs(&bed, &programs, settings) {
                eprintln!("| {workloads} | {rules} {line}");
                test_run_rows.push((workloads, rules, line));
            }
            agent.stop().expect("stopping the agent");
            bed.uninstall().expect("uninstalling the agent");
        }
    }
    print_report(settings, &traffic_rows, &test_run_rows);
}

/// The i-th CIDR of the rule set (never the client's address).
fn cidr(i: usize) -> String {
    let i = i % CIDRS;
    format!("10.{}.{}.0/24", i / 250, i % 250)
}

/// The server's ingress: `rules` rules that no measured packet matches, then the one the
/// measured flows match (TCP to iperf3's and the echo port, UDP to the UDP port; nothing allows the
/// denied port). `backstop`: enforced by TC on its host-side interface too.
pub(crate) fn policy(bed: &Testbed, rules: usize, backstop: bool) -> String {
    let mut p = if backstop {
        bed.backstopped_workload_yaml("server", "cost", "{app: server}")
    } else {
        bed.workload_yaml("server", "cost", "{app: server}", false)
    };
    let header = |name: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: cost}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n"
        )
    };
    p += &header("cost");
    for i in 0..rules {
        // A document of its own every RULES_PER_POLICY rules: the agent caps one YAML
        // document's size; policies that select the same workload add up.
        if i > 0 && i % RULES_PER_POLICY == 0 {
            p += "---\n";
            p += &header(&format!("cost-{}", i / RULES_PER_POLICY));
        }
        p += &format!(
            "    - from: [{{ipBlock: {{cidr: {}}}}}]\n      ports: [{{port: {}}}]\n",
            cidr(i),
            10_000 + (i % 50_000)
        );
    }
    p += &format!(
        "    - from: [{{ipBlock: {{cidr: {}/32}}}}]\n      ports: [{{port: {IPERF_PORT}}}, {{port: {ECHO_PORT}}}, {{port: {UDP_PORT}, protocol: UDP}}]\n---\n",
        bed.node("client").v4
    );
    p
}

/// `count` workloads beside the server, each an empty cgroup of its own (its programs
/// attached, its endpoint entry written) with an address of its own.
fn idle_workloads(bed: &Testbed, count: usize) -> String {
    let base = bed.cgroup_base_path();
    let mut p = String::new();
    for i in 0..count {
        bed.make_cgroup(&format!("idle-{i}")).unwrap();
        p += &format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: idle-{i}, namespace: cost, labels: {{app: idle}}}}\nspec:\n  cgroup: {base}/idle-{i}\n  addresses: [\"172.20.{}.{}\"]\n---\n",
            i / 250,
            i % 250 + 1
        );
    }
    p
}

/// Every program's figures now.
fn snapshot(fds: &BTreeMap<String, OwnedFd>) -> BTreeMap<String, Runs> {
    fds.iter()
        .map(|(name, fd)| (name.clone(), bpf_stats::runs(fd).expect("program info")))
        .collect()
}

/// Runs each workload and gives what each program ran during it.
fn traffic(bed: &Testbed, programs: &BTreeMap<String, u32>, seconds: u64) -> Vec<(String, Runs)> {
    let fds: BTreeMap<String, OwnedFd> = programs
        .iter()
        .map(|(name, &id)| (name.clone(), bpf_stats::program_fd(id).unwrap()))
        .collect();
    let server = bed.node("server").v4.to_string();
    let ms = (seconds * 1000).to_string();
    let workloads: [(&str, Vec<String>); 4] = [
        (
            "TCP request/response (one connection)",
            vec![
                "rr".into(),
                server.clone(),
                ECHO_PORT.to_string(),
                ms.clone(),
            ],
        ),
        (
            "UDP flood, 8 flows (allowed)",
            vec![
                "flood".into(),
                server.clone(),
                UDP_PORT.to_string(),
                ms.clone(),
                "8".into(),
            ],
        ),
        (
            "TCP new connections (connect, 1 byte each way, close)",
            vec![
                "crr".into(),
                server.clone(),
                ECHO_PORT.to_string(),
                ms.clone(),
            ],
        ),
        (
            "UDP flood, 64 flows (denied)",
            vec![
                "flood".into(),
                server.clone(),
                DENIED_PORT.to_string(),
                ms.clone(),
                "64".into(),
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (workload, args) in workloads {
        let before = snapshot(&fds);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bed.probe_output("client", &args);
        let after = snapshot(&fds);
        for (name, runs) in &after {
            let delta = runs.since(before[name]);
            if delta.run_cnt > 0 {
                rows.push((format!("{workload} | {name}"), delta));
            }
        }
    }
    rows
}

/// The test-run table's lines for one configuration: the cgroup programs from inside the
/// server, the TC programs from the hub on the server's host-side interface.
fn test_runs(bed: &Testbed, programs: &BTreeMap<String, u32>, settings: &Settings) -> Vec<String> {
    let client = bed.node("client").v4.to_string();
    let server = bed.node("server").v4.to_string();
    let host_if = bed.node("server").host_if.clone();
    let id = |name: &str| {
        programs
            .get(name)
            .unwrap_or_else(|| panic!("the agent attached no {name}"))
            .to_string()
    };
    let runs = [
        (
            "cgroup_skb",
            "eth0".to_string(),
            id("stagewall_cgroup_ingress"),
            id("stagewall_cgroup_egress"),
            20_000u16,
        ),
        (
            "tc",
            host_if,
            id("stagewall_tc_to_workload"),
            id("stagewall_tc_from_workload"),
            40_000u16,
        ),
    ];
    let mut lines = Vec::new();
    for (kind, ifname, to_workload, from_workload, first_port) in runs {
        let args = [
            "test-run".to_string(),
            kind.to_string(),
            ifname,
            client.clone(),
            server.clone(),
            to_workload,
            from_workload,
            settings.repeat.to_string(),
            settings.first_packets.to_string(),
            first_port.to_string(),
        ];
        let exe = std::env::current_exe().unwrap();
        let mut cmd = if kind == "tc" {
            bed.hub_command(&exe).unwrap()
        } else {
            bed.command("server", &exe).unwrap()
        };
        let out = cmd.args(&args).stderr(Stdio::inherit()).output().unwrap();
        assert!(
            out.status.success(),
            "stagewall-cost test-run {kind} failed"
        );
        lines.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    lines
}

/// `test-run KIND IFNAME CLIENT SERVER TO_WORKLOAD_ID FROM_WORKLOAD_ID REPEAT FIRST FIRST_PORT`,
/// in the server's cgroup and namespace (cgroup_skb) or the hub (tc): prints one
/// Markdown row per path, `| kind | path | verdict | ns/run | floor ns/run | above floor |`.
fn test_run_child(args: &[String]) {
    let [
        kind,
        ifname,
        client,
        server,
        to_id,
        from_id,
        repeat,
        first,
        first_port,
    ] = args
    else {
        panic!("test-run: expected 9 arguments, got {args:?}");
    };
    let client: Ipv4Addr = client.parse().expect("client address");
    let server: Ipv4Addr = server.parse().expect("server address");
    let repeat: u32 = repeat.parse().expect("repeat");
    let first: u32 = first.parse().expect("first packets");
    let first_port: u16 = first_port.parse().expect("first port");
    let c = std::ffi::CString::new(ifname.as_str()).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(ifindex > 0, "no interface {ifname} here");
    let to_workload = bpf_stats::program_fd(to_id.parse().unwrap()).unwrap();
    let from_workload = bpf_stats::program_fd(from_id.parse().unwrap()).unwrap();
    let empty = bpf_stats::load_empty(if kind == "tc" {
        bpf_stats::PROG_TYPE_SCHED_CLS
    } else {
        bpf_stats::PROG_TYPE_CGROUP_SKB
    })
    .expect("loading the empty program");
    let request = bpf_stats::udp_frame(client, 10_001, server, UDP_PORT);
    let reply = bpf_stats::udp_frame(server, UDP_PORT, client, 10_001);
    let denied = bpf_stats::udp_frame(client, 10_002, server, DENIED_PORT);
    // Repeated: the first run makes the flow, the rest are established.
    let repeated = |prog: &OwnedFd, frame: &[u8]| {
        bpf_stats::test_run(prog, frame, ifindex, 1).unwrap();
        bpf_stats::test_run(prog, frame, ifindex, repeat).unwrap()
    };
    // First packets: a new source port each run, one run per call.
    let firsts = |prog: &OwnedFd| {
        let mut total = 0u64;
        let mut verdict = 0;
        for i in 0..first {
            let port = first_port + (i % 20_000) as u16;
            let frame = bpf_stats::udp_frame(client, port, server, UDP_PORT);
            let (v, ns) = bpf_stats::test_run(prog, &frame, ifindex, 1).unwrap();
            total += ns as u64;
            verdict = v;
        }
        (verdict, (total / first as u64) as u32)
    };
    let floor_repeated = repeated(&empty, &request).1;
    let floor_first = firsts(&empty).1;
    let paths = [
        (
            "established (request, repeated)",
            repeated(&to_workload, &request),
            floor_repeated,
        ),
        (
            "reply (repeated)",
            repeated(&from_workload, &reply),
            floor_repeated,
        ),
        (
            "first packet (new flow, one run per call)",
            firsts(&to_workload),
            floor_first,
        ),
        (
            "denied (repeated)",
            repeated(&to_workload, &denied),
            floor_repeated,
        ),
    ];
    for (path, (verdict, ns), floor) in paths {
        println!(
            "| {kind} | {path} | {} | {ns} | {floor} | {} |",
            verdict_name(kind, verdict),
            ns as i64 - floor as i64
        );
    }
}

fn verdict_name(kind: &str, retval: u32) -> &'static str {
    match (kind, retval) {
        ("tc", 0) => "pass (TC_ACT_OK)",
        ("tc", 2) => "drop (TC_ACT_SHOT)",
        (_, 1) => "pass",
        (_, 0) => "drop",
        _ => "other",
    }
}

fn print_report(
    settings: &Settings,
    traffic: &[(usize, usize, String, Runs)],
    test_runs: &[(usize, usize, String)],
) {
    println!(
        "\n## Cost per packet: the programs' own ns per run (kernel.bpf_stats_enabled, {} s per workload)\n",
        settings.seconds
    );
    println!("| workloads | rules | traffic | program | runs | ns per run |");
    println!("|---|---|---|---|---|---|");
    for (workloads, rules, name, runs) in traffic {
        println!(
            "| {workloads} | {rules} | {name} | {} | {:.0} |",
            runs.run_cnt,
            runs.ns_per_run().unwrap_or(0.0)
        );
    }
    println!(
        "\n## Cost per packet: BPF_PROG_TEST_RUN ({} repetitions; first packets {} calls of one run), beside an empty program of the same type\n",
        settings.repeat, settings.first_packets
    );
    println!(
        "| workloads | rules | program type | path | verdict | ns per run | empty program ns per run | above the empty program |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (workloads, rules, line) in test_runs {
        println!("| {workloads} | {rules} {line}");
    }
    if settings.quick {
        println!("\n(quick mode: one size, short runs, to keep the harness from rotting)");
    }
}
