//! The benchmark harness (`cargo xtask bench [--quick]`, as root): one run on one machine,
//! every configuration side by side, absolute figures and ratios to the no-policy
//! baseline, printed as Markdown tables. `stagewall-bench --rules N` measures one rule
//! count; `--control-plane` only the control-plane and event figures.
//!
//! A client and a server namespace (the server a cgroup workload) joined by the test bed's
//! bridge. Configurations: no program attached (baseline); stagewall with N ingress rules
//! at the server over 1,000 CIDR identities, the measured flow matching the last rule;
//! stagewall in audit mode; iptables with the same rules as a linear INPUT chain; nftables
//! with one concatenated set. Firewall rules go into the server's namespace only.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use stagewall_tests::{
    Agent, Testbed,
    bench::{
        ECHO_PORT, IPERF_PORT, UDP_PORT, USER_HZ, cidr, cpu_ticks, logged_millis, median,
        rule_change_latencies, rule_port, stagewall_policy,
    },
    metric_sum, privileged, probe_bin,
};

/// Rule changes timed by the control-plane measurement.
const RULE_CHANGES: usize = 10;
/// A port no rule allows: the event flood goes there.
const DENIED_PORT: u16 = 5999;

struct Settings {
    quick: bool,
    runs: usize,
    seconds: u64,
    rule_counts: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Baseline,
    Stagewall {
        rules: usize,
        audit: bool,
    },
    /// The NetworkPolicy of `rules` rules behind ClusterNetworkPolicy guardrails that
    /// hold both workloads: every new flow reads the Admin tier first.
    Tiered {
        rules: usize,
    },
    Iptables {
        rules: usize,
    },
    Nftables {
        rules: usize,
    },
}

impl Config {
    fn name(&self) -> String {
        match self {
            Config::Baseline => "no program (baseline)".into(),
            Config::Stagewall {
                rules,
                audit: false,
            } => format!("stagewall, {rules} rules"),
            Config::Stagewall { rules, audit: true } => format!("stagewall audit, {rules} rules"),
            Config::Tiered { rules } => format!(
                "stagewall, {rules} rules + {} ClusterNetworkPolicies",
                TENANTS + 1
            ),
            Config::Iptables { rules } => format!("iptables linear chain, {rules} rules"),
            Config::Nftables { rules } => format!("nftables set, {rules} rules"),
        }
    }
}

/// Tenant-isolation guardrails in the Tiered configuration, one per tenant.
const TENANTS: usize = 20;

/// `stagewall_policy` behind guardrails: the bench namespace is tenant t0's, every tenant
/// has its isolation policy (Admin: Pass inside the tenant, Deny to other tenants), and
/// the example block list applies to every workload. The measured flows come from outside
/// every tenant, so the Admin tier reads and passes on, and the NetworkPolicy decides.
fn tiered_policy(bed: &Testbed, rules: usize) -> String {
    let mut p = stagewall_policy(bed, rules);
    p += "---
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {tenant: t0}}
";
    for t in 0..TENANTS {
        p += &format!(
            "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: t{t}-isolation}}
spec:
  tier: Admin
  priority: {}
  subject: {{namespaces: {{matchLabels: {{tenant: t{t}}}}}}}
  ingress:
    - {{name: same-tenant, action: Pass, from: [{{namespaces: {{matchLabels: {{tenant: t{t}}}}}}}]}}
    - {{name: other-tenants, action: Deny, from: [{{namespaces: {{matchExpressions: [{{key: tenant, operator: Exists}}]}}}}]}}
  egress:
    - {{name: same-tenant, action: Pass, to: [{{namespaces: {{matchLabels: {{tenant: t{t}}}}}}}]}}
    - {{name: other-tenants, action: Deny, to: [{{namespaces: {{matchExpressions: [{{key: tenant, operator: Exists}}]}}}}]}}
",
            20 + t
        );
    }
    p += "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: blocked-addresses}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
    - {name: block-list, action: Deny, to: [{networks: [192.0.2.0/24, 198.51.100.0/24]}]}
";
    p
}

fn iptables_rules(client: IpAddr, rules: usize) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..rules.saturating_sub(1) {
        r += &format!(
            "-A INPUT -s {} -p tcp --dport {} -j ACCEPT\n",
            cidr(i),
            rule_port(i)
        );
    }
    r += &format!(
        "-A INPUT -s {client}/32 -p tcp -m multiport --dports {IPERF_PORT},{ECHO_PORT} -j ACCEPT\n"
    );
    r += &format!("-A INPUT -s {client}/32 -p udp --dport {UDP_PORT} -j ACCEPT\n");
    r += "-A INPUT -j DROP\nCOMMIT\n";
    r
}

fn nftables_rules(client: IpAddr, rules: usize) -> String {
    let mut elements: Vec<String> = (0..rules.saturating_sub(1))
        .map(|i| format!("{} . tcp . {}", cidr(i), rule_port(i)))
        .collect();
    elements.push(format!("{client} . tcp . {IPERF_PORT}"));
    elements.push(format!("{client} . tcp . {ECHO_PORT}"));
    elements.push(format!("{client} . udp . {UDP_PORT}"));
    format!(
        "table inet bench {{\n  set allowed {{\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain input {{\n    type filter hook input priority 0; policy drop;\n    ip saddr . meta l4proto . th dport @allowed accept\n  }}\n}}\n",
        elements.join(",\n      ")
    )
}

/// Runs a firewall tool inside the server's namespace with `input` on stdin.
fn firewall(bed: &Testbed, program: &str, args: &[&str], input: &str) {
    let mut cmd = bed.command("server", program).unwrap();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn flush_firewalls(bed: &Testbed) {
    firewall(
        bed,
        "iptables-restore",
        &[],
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    );
    firewall(bed, "nft", &["-f", "-"], "flush ruleset\n");
}

/// One measurement of each data-path workload.
#[derive(Default, Clone)]
struct Sample {
    gbps: f64,
    tps: f64,
    p50_us: f64,
    p99_us: f64,
    cps: f64,
    pps: f64,
}

fn measure(bed: &Testbed, seconds: u64) -> Sample {
    let server = bed.node("server").v4.to_string();
    let ms = (seconds * 1000).to_string();
    // TCP stream.
    let out = bed
        .command("client", "iperf3")
        .unwrap()
        .args([
            "-c",
            &server,
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    // Request/response.
    let rr = bed.probe_output("client", &["rr", &server, &ECHO_PORT.to_string(), &ms]);
    let nums: Vec<f64> = rr
        .lines()
        .nth(1)
        .unwrap_or("0 0 0")
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    // New connections.
    let crr = bed.probe_output("client", &["crr", &server, &ECHO_PORT.to_string(), &ms]);
    let cps: f64 = crr
        .lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0);
    // Small UDP packets: what the server receives while the client floods from 8 ports.
    let mut sink = bed.command("server", probe_bin()).unwrap();
    let mut sink = sink
        .args([
            "udp-sink",
            &UDP_PORT.to_string(),
            &(seconds * 1000 + 500).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    lines.next();
    bed.probe_output(
        "client",
        &["flood", &server, &UDP_PORT.to_string(), &ms, "8"],
    );
    let received: f64 = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("received ").and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    let _ = sink.wait();
    Sample {
        gbps,
        tps: nums.first().copied().unwrap_or(0.0),
        p50_us: nums.get(1).copied().unwrap_or(0.0),
        p99_us: nums.get(2).copied().unwrap_or(0.0),
        cps,
        pps: received / seconds as f64,
    }
}

/// "median (min-max)" of one metric over the runs.
fn stat(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    let m = median(&mut v);
    (m, v[0], v[v.len() - 1])
}

fn main() {
    if !privileged() {
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut settings = if quick {
        Settings {
            quick,
            runs: 1,
            seconds: 1,
            rule_counts: vec![1_000],
        }
    } else {
        Settings {
            quick,
            runs: 3,
            seconds: 3,
            rule_counts: vec![100, 1_000, 10_000],
        }
    };
    // `--rules N`: only this rule count (to look at one size quickly).
    if let Some(n) = args
        .iter()
        .position(|a| a == "--rules")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        settings.rule_counts = vec![n];
    }
    // First, while this process is small: a child's peak memory as the kernel counts it
    // starts from its parent's at the spawn.
    let compile_scale = compile_scale();
    let mut bed = Testbed::new(&["client", "server", "ctl"]).expect("creating the test bed");
    // A UDP socket on the denied port: cgroup ingress programs see packets that reach a
    // socket, so the event flood needs one.
    bed.serve("server", &[ECHO_PORT], &[DENIED_PORT]).unwrap();
    bed.spawn("server", "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client = bed.node("client").v4;
    let largest = *settings.rule_counts.last().unwrap();

    // `--control-plane`: only the control-plane and event figures (no data-path runs).
    let control_plane_only = args.iter().any(|a| a == "--control-plane");
    if control_plane_only {
        settings.runs = 0;
    }
    let mut configs = vec![Config::Baseline];
    for &rules in &settings.rule_counts {
        configs.push(Config::Stagewall {
            rules,
            audit: false,
        });
    }
    configs.push(Config::Stagewall {
        rules: largest,
        audit: true,
    });
    configs.push(Config::Tiered { rules: largest });
    for &rules in &settings.rule_counts {
        configs.push(Config::Iptables { rules });
    }
    for &rules in &settings.rule_counts {
        configs.push(Config::Nftables { rules });
    }
    if control_plane_only {
        configs = vec![Config::Stagewall {
            rules: largest,
            audit: false,
        }];
    }

    let mut rows: Vec<(Config, Vec<Sample>)> = Vec::new();
    let mut control = Vec::new();
    for config in &configs {
        let mut agent: Option<Agent> = None;
        match *config {
            Config::Baseline => {}
            Config::Stagewall { rules, audit } => {
                bed.write_policy("bench.yaml", &stagewall_policy(&bed, rules))
                    .unwrap();
                let mode = if audit { "audit" } else { "enforce" };
                agent = Some(
                    bed.start_agent(&["--mode", mode])
                        .expect("starting the agent"),
                );
            }
            Config::Tiered { rules } => {
                bed.write_policy("bench.yaml", &tiered_policy(&bed, rules))
                    .unwrap();
                agent = Some(bed.start_agent(&[]).expect("starting the agent"));
            }
            Config::Iptables { rules } => firewall(
                &bed,
                "iptables-restore",
                &[],
                &iptables_rules(client, rules),
            ),
            Config::Nftables { rules } => {
                firewall(&bed, "nft", &["-f", "-"], &nftables_rules(client, rules))
            }
        }
        let cpu_before = agent.as_ref().map(|a| cpu_ticks(a.pid()));
        let started = Instant::now();
        let samples: Vec<Sample> = (0..settings.runs)
            .map(|_| measure(&bed, settings.seconds))
            .collect();
        if let (Some(a), Some(before)) = (&agent, cpu_before) {
            let cpu =
                (cpu_ticks(a.pid()) - before) as f64 / USER_HZ / started.elapsed().as_secs_f64()
                    * 100.0;
            if matches!(*config, Config::Stagewall { audit: false, rules } if rules == largest) {
                control.push(format!("agent CPU while the data-path workloads ran ({largest} rules): {cpu:.1} % of one core"));
                control.push(format!(
                    "agent resident memory at {largest} rules: {:.1} MiB",
                    a.rss_kib() as f64 / 1024.0
                ));
            }
        }
        if let (
            Some(a),
            Config::Stagewall {
                rules,
                audit: false,
            },
        ) = (&agent, *config)
            && rules == largest
        {
            control.extend(control_plane(&bed, a, rules));
            control.push(event_flood(&bed, a));
        }
        if let Some(mut a) = agent {
            a.stop().expect("stopping the agent");
            // Its programs stay attached until uninstalled.
            bed.uninstall().expect("uninstalling the agent");
        }
        flush_firewalls(&bed);
        eprintln!("measured: {}", config.name());
        rows.push((*config, samples));
    }
    print_report(&settings, &rows, &control);
    println!("{compile_scale}");
}

/// Time to compile and apply the largest rule set, and for one rule change to take
/// effect (file written -> a connection's verdict changes).
fn control_plane(bed: &Testbed, agent: &Agent, rules: usize) -> Vec<String> {
    let mut out = Vec::new();
    let check_started = Instant::now();
    let ok = std::process::Command::new(stagewall_tests::agent_bin())
        .arg("check")
        .arg(&bed.dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    out.push(format!(
        "parse + compile {rules} rules (`stagewall check`, whole process): {:.0} ms",
        check_started.elapsed().as_secs_f64() * 1000.0
    ));
    let log = agent.log();
    if let Some(applied) = log.lines().find(|l| l.contains("policy 1 applied in")) {
        out.push(format!(
            "apply {rules} rules to the kernel (agent log): {}",
            applied
                .split("applied in ")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
        ));
    }
    let m = agent.metrics();
    let apply_sum = metric_sum(&m, "stagewall_policy_apply_duration_seconds_sum", &[]);
    out.push(format!(
        "apply duration histogram sum after start: {:.1} ms",
        apply_sum * 1000.0
    ));
    let mut latencies = rule_change_latencies(
        bed,
        "bench.yaml",
        &stagewall_policy(bed, rules),
        RULE_CHANGES,
    );
    if !latencies.is_empty() {
        let med = median(&mut latencies);
        out.push(format!(
            "one rule change, file written -> verdict changed ({} changes of a {rules}-rule policy): median {med:.1} ms, max {:.1} ms",
            latencies.len(),
            latencies[latencies.len() - 1]
        ));
    }
    // The agent's own split of those changes (its log): reading and compiling, then
    // writing the kernel maps.
    let log = agent.log();
    let mut compile = logged_millis(&log, "read and compiled in ");
    // The first apply is the start (the whole policy into empty maps).
    let mut apply: Vec<f64> = logged_millis(&log, " applied in ")
        .into_iter()
        .skip(1)
        .collect();
    if !compile.is_empty() && !apply.is_empty() {
        out.push(format!(
            "  of which, in the agent: read + parse + compile median {:.1} ms, kernel maps written median {:.1} ms",
            median(&mut compile),
            median(&mut apply)
        ));
    }
    out
}

/// Violation events delivered per second under a flood, and lost.
fn event_flood(bed: &Testbed, agent: &Agent) -> String {
    let before = agent.metrics();
    let server = bed.node("server").v4.to_string();
    let started = Instant::now();
    bed.probe_output(
        "client",
        &["flood", &server, &DENIED_PORT.to_string(), "2000", "2048"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = agent.metrics();
    let delta = |name: &str| metric_sum(&after, name, &[]) - metric_sum(&before, name, &[]);
    let seconds = started.elapsed().as_secs_f64();
    format!(
        "event flood (2 s of UDP from 2,048 ports to a denied port): {:.0} denied packets, {:.0} events delivered ({:.0}/s), {:.0} suppressed by the per-flow limit, {:.0} lost (ring buffer full)",
        delta("stagewall_packets_total")
            - (metric_sum(&after, "stagewall_packets_total", &[("verdict", "allowed")])
                - metric_sum(
                    &before,
                    "stagewall_packets_total",
                    &[("verdict", "allowed")]
                )),
        delta("stagewall_events_delivered_total"),
        delta("stagewall_events_delivered_total") / seconds,
        delta("stagewall_events_suppressed_total"),
        delta("stagewall_events_lost_total"),
    )
}

/// Compiling a policy of many ipBlocks with `except` around many pods (`stagewall check`,
/// a whole process each): the ipBlocks all share `10.0.0.0/8` and except a different /24
/// each, so every pod address lies in nearly all of them, the case that once made compile
/// memory grow with ipBlocks times addresses (16,000 ipBlocks and 1,000 pods: 2 GB, 60 s,
/// against the DaemonSet's 256 MiB). Peak memory is the kernel's count for the process
/// (wait4's ru_maxrss; it includes the few MiB this process had when it spawned it); the
/// baseline is the same pods with a one-rule policy. Returns the table.
fn compile_scale() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    const PODS: usize = 1_000;
    let dir = std::env::temp_dir().join(format!("stagewall-compile-scale-{}", std::process::id()));
    writeln!(
        out,
        "\n## Compile: ipBlocks with except x {PODS} pods (`stagewall check`, one process each)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| ipBlocks | policy file | wall ms | peak memory MiB | memory vs baseline |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    let mut baseline_kib = 0;
    for blocks in [0, 1_000, 4_000, 16_000] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut workloads = String::new();
        for i in 0..PODS {
            // A node's share of the pods is local, the rest are peers.
            let cgroup = if i < 100 {
                format!("  cgroup: /bench/pod-{i}\n")
            } else {
                String::new()
            };
            workloads += &format!(
                "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: pod-{i}, namespace: ml, labels: {{app: a{}}}}}\nspec:\n{cgroup}  addresses: [10.244.{}.{}]\n---\n",
                i % 50,
                i / 250,
                i % 250 + 1
            );
        }
        let mut policy = String::from(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: ml}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n",
        );
        if blocks == 0 {
            policy += "    - ipBlock: {cidr: 10.0.0.0/8}\n";
        }
        for j in 0..blocks {
            policy += &format!(
                "    - ipBlock: {{cidr: 10.0.0.0/8, except: [10.{}.{}.0/24]}}\n",
                j / 256,
                j % 256
            );
        }
        std::fs::write(dir.join("workloads.yaml"), workloads).unwrap();
        std::fs::write(dir.join("policy.yaml"), &policy).unwrap();
        let started = Instant::now();
        // Waited for below with wait4 (for its resource usage), not Child::wait.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(stagewall_tests::agent_bin())
            .arg("check")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("stagewall check");
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = child.id() as libc::pid_t;
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = started.elapsed();
        assert_eq!(waited, pid, "wait4");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "stagewall check refused {blocks} ipBlocks"
        );
        let kib = usage.ru_maxrss as u64;
        if blocks == 0 {
            baseline_kib = kib;
        }
        writeln!(
            out,
            "| {blocks} | {:.2} MB | {:.0} | {:.1} | {:.2}x |",
            policy.len() as f64 / 1e6,
            wall.as_secs_f64() * 1000.0,
            kib as f64 / 1024.0,
            kib as f64 / baseline_kib.max(1) as f64
        )
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn print_report(settings: &Settings, rows: &[(Config, Vec<Sample>)], control: &[String]) {
    if settings.runs > 0 {
        print_data_path(settings, rows);
    }
    println!("\n## Control plane and events\n");
    for line in control {
        println!("- {line}");
    }
    if settings.quick {
        println!(
            "\n(quick mode: one short run per configuration, to keep the harness from rotting; not for comparison)"
        );
    }
}

fn print_data_path(settings: &Settings, rows: &[(Config, Vec<Sample>)]) {
    let base = &rows[0].1;
    let b = |f: &dyn Fn(&Sample) -> f64| stat(base, f).0;
    println!(
        "## Data path ({} run(s) of {} s each; median (min-max); ratio to the baseline)\n",
        settings.runs, settings.seconds
    );
    println!(
        "| configuration | TCP stream Gbit/s | RR transactions/s | RR p50 µs | RR p99 µs | new connections/s | UDP packets/s received |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (config, samples) in rows {
        let cell = |f: &dyn Fn(&Sample) -> f64, digits: usize| {
            let (m, lo, hi) = stat(samples, f);
            let base = b(f);
            let ratio = if base > 0.0 { m / base } else { 0.0 };
            format!(
                "{m:.digits$} ({lo:.digits$}-{hi:.digits$}) {:.1}%",
                ratio * 100.0
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            config.name(),
            cell(&|s| s.gbps, 2),
            cell(&|s| s.tps, 0),
            cell(&|s| s.p50_us, 1),
            cell(&|s| s.p99_us, 1),
            cell(&|s| s.cps, 0),
            cell(&|s| s.pps, 0),
        );
    }
}
