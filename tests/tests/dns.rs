//! Egress by name, with real parts only: a real DNS server (dnsmasq) in its own namespace
//! serving a test zone (CNAMEs, short TTLs, rotating answers, AAAA, TCP), workloads that
//! resolve through the system resolver (glibc getaddrinfo through /etc/resolv.conf, dig),
//! "outside" servers on several addresses, and the real agent with its DNS proxy: a
//! workload's queries to the resolver go to the proxy (cgroup socket hooks), which writes
//! what the answers gave for allowed names into the kernel before the workload gets them.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use stagewall_tests::{Testbed, dns::DnsServer, metric_sum, privileged, until};

/// The bed: a workload with name rules (training), one without (plain), the DNS server
/// (dns) and two outside hosts: `pypi` (203.0.113.10 and more) and `other` (203.0.113.20).
const NODES: [&str; 5] = ["training", "plain", "dns", "pypi", "other"];

const PYPI: &str = "203.0.113.10";
const WHEELS: &str = "203.0.113.11";
const BARE: &str = "203.0.113.12";
const VIA_TCP: &str = "203.0.113.13";
const OTHER: &str = "203.0.113.20";
/// Where the rotating name's answers come from: 40 addresses of the pypi host.
const ROTATING_FIRST: u8 = 100;
const ROTATING_COUNT: u8 = 40;

fn pipeline(resolver: IpAddr) -> String {
    format!(
        "apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {{name: names, namespace: ml}}
spec:
  stages:
    - name: training
      selector: {{matchLabels: {{stage: training}}}}
  flows:
    - from: {{stage: training}}
      to: {{cidr: {resolver}/32}}
      ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
    - from: {{stage: training}}
      to: {{fqdn: pypi.test}}
      ports: [{{protocol: TCP, port: 443}}]
    - from: {{stage: training}}
      to: {{fqdn: \"*.pythonhosted.test\"}}
      ports: [{{protocol: TCP, port: 443}}]
"
    )
}

struct Bed {
    bed: Testbed,
    dns: DnsServer,
}

/// The bed, dnsmasq answering with `ttl`, echo servers on port 443 of every outside
/// address, and the policy files; the agent is the test's to start.
fn bed(ttl: u32) -> Bed {
    let mut bed = Testbed::new(&NODES).expect("creating the test bed");
    bed.make_outside("pypi", PYPI).expect("pypi outside");
    bed.make_outside("other", OTHER).expect("other outside");
    let pypi_netns = bed.node("pypi").netns.clone();
    let mut extra: Vec<String> = [WHEELS, BARE, VIA_TCP]
        .iter()
        .map(|a| a.to_string())
        .collect();
    extra.extend((0..ROTATING_COUNT).map(|i| format!("203.0.113.{}", ROTATING_FIRST + i)));
    for addr in &extra {
        let status = std::process::Command::new("ip")
            .args([
                "-n",
                &pypi_netns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ])
            .status()
            .expect("ip");
        assert!(status.success(), "adding {addr}");
    }
    for node in ["pypi", "other"] {
        bed.serve(node, &[443], &[]).expect("echo server");
    }
    bed.give_hub_gateway().expect("hub address");
    let pypi_v6 = bed.node("pypi").v6;
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    let dns = DnsServer::start(
        &mut bed,
        "dns",
        ttl,
        &[
            ("pypi.test", ip(PYPI)),
            ("pypi.test", pypi_v6),
            ("a.files.pythonhosted.test", ip(WHEELS)),
            ("pythonhosted.test", ip(BARE)),
            ("tcp.pythonhosted.test", ip(VIA_TCP)),
            ("other.test", ip(OTHER)),
        ],
        &[("alias.test", "pypi.test")],
    )
    .expect("dnsmasq");
    let resolver = dns.addr;
    let mut policy = pipeline(resolver);
    policy.push_str("---\n");
    policy.push_str(&bed.workload_yaml("training", "ml", "{stage: training}", false));
    policy.push_str(&bed.workload_yaml("plain", "ml", "{app: plain}", false));
    bed.write_policy("names.yaml", &policy).expect("policy");
    Bed { bed, dns }
}

/// The agent's DNS proxy on the hub's address (where the agent runs), serving `resolver`.
fn dns_args(resolver: IpAddr) -> Vec<String> {
    vec![
        "--dns-proxy".into(),
        stagewall_tests::HUB_GATEWAY.into(),
        "--dns-resolver".into(),
        resolver.to_string(),
    ]
}

fn start(b: &Bed, extra: &[&str]) -> stagewall_tests::Agent {
    let mut args = dns_args(b.dns.addr);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    b.bed.start_agent(&args).expect("agent")
}

/// `resolve-connect` counts: (ok, eperm, unresolved, other).
fn loops(out: &str) -> (u32, u32, u32, u32) {
    let line = out
        .lines()
        .find(|l| l.starts_with("ok ") && l.contains("eperm"))
        .unwrap_or_else(|| panic!("no counts in {out:?}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .step_by(2)
        .map(|n| n.parse().expect("a count"))
        .collect();
    (n[0], n[1], n[2], n[3])
}

fn resolve_connect(b: &Bed, node: &str, name: &str, count: u32, family: Option<&str>) -> String {
    let count = count.to_string();
    let mut args = vec!["resolve-connect", name, "443", &count, "1000"];
    if let Some(f) = family {
        args.push(f);
    }
    b.bed.resolving_probe(node, b.dns.addr, &args)
}

#[test]
fn a_workload_reaches_the_addresses_its_answers_gave_for_allowed_names_and_nothing_else() {
    if !privileged() {
        return;
    }
    let b = bed(30);
    let agent = start(&b, &[]);
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    // Nothing learnt yet: the address itself is not allowed.
    assert_eq!(b.bed.tcp("training", ip(PYPI), 443).word, "eperm");

    let out = resolve_connect(&b, "training", "pypi.test", 50, Some("4"));
    assert_eq!(loops(&out), (50, 0, 0, 0), "pypi.test over IPv4: {out}");
    let out = resolve_connect(&b, "training", "pypi.test", 20, Some("6"));
    assert_eq!(
        loops(&out),
        (20, 0, 0, 0),
        "pypi.test over IPv6 (AAAA): {out}"
    );
    // A CNAME to an allowed name; a name below the wildcard (two labels deep).
    let out = resolve_connect(&b, "training", "alias.test", 10, Some("4"));
    assert_eq!(loops(&out), (10, 0, 0, 0), "alias.test -> pypi.test: {out}");
    let out = resolve_connect(&b, "training", "a.files.pythonhosted.test", 10, None);
    assert_eq!(loops(&out), (10, 0, 0, 0), "wildcard: {out}");
    // The wildcard's own parent, and a name no rule allows: refused with EPERM.
    let out = resolve_connect(&b, "training", "pythonhosted.test", 3, None);
    assert_eq!(loops(&out), (0, 3, 0, 0), "*.x does not allow x: {out}");
    let out = resolve_connect(&b, "training", "other.test", 3, None);
    assert_eq!(loops(&out), (0, 3, 0, 0), "other.test: {out}");
    // The allowed name's addresses, on a port no rule names: refused.
    assert_eq!(
        b.bed
            .resolving_probe(
                "training",
                b.dns.addr,
                &["resolve-connect", "pypi.test", "80", "1", "1000", "4"]
            )
            .lines()
            .nth(1)
            .map(|l| l.contains("eperm 1")),
        Some(true)
    );

    // Other clients of the system resolver: curl and Python.
    let curl = b
        .bed
        .resolving_command("training", b.dns.addr, "curl")
        .unwrap()
        .args([
            "-4",
            "-s",
            "--max-time",
            "3",
            "--http0.9",
            "-o",
            "/dev/null",
            "-w",
            "%{remote_ip}",
        ])
        .arg("http://a.files.pythonhosted.test:443/")
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        WHEELS,
        "curl: {curl:?}"
    );
    let python = |name: &str| {
        let out = b
            .bed
            .resolving_command("training", b.dns.addr, "python3")
            .unwrap()
            .arg("-c")
            .arg(format!(
                "import socket\ntry:\n    s = socket.create_connection(('{name}', 443), timeout=3)\n    s.sendall(b'x')\n    print(s.recv(1).decode())\nexcept PermissionError:\n    print('eperm')"
            ))
            .output()
            .expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(python("alias.test"), "x", "python through a CNAME");
    assert_eq!(
        python("other.test"),
        "eperm",
        "python to a name no rule allows"
    );

    // DNS over TCP: dig +tcp learns too.
    let dig = b
        .bed
        .resolving_command("training", b.dns.addr, "dig")
        .unwrap()
        .args(["+tcp", "+short", "tcp.pythonhosted.test"])
        .output()
        .expect("dig");
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        VIA_TCP,
        "{dig:?}"
    );
    assert_eq!(b.bed.tcp("training", ip(VIA_TCP), 443).word, "ok");

    // A workload without name rules resolves directly, unredirected, and is not isolated.
    let out = resolve_connect(&b, "plain", "other.test", 3, None);
    assert_eq!(loops(&out), (3, 0, 0, 0), "plain: {out}");

    // The denial names the name the address was learnt for.
    until(
        "an event naming other.test",
        || agent.log(),
        || {
            agent.events().iter().any(|e| {
                e["dst"] == OTHER && e["verdict"] == "dropped" && e["dst_name"] == "other.test"
            })
        },
    );
    // The proxy's metrics, published every second: pypi.test (both families), the wheel
    // host, the TCP name, and the names only kept to name denials.
    until(
        "the DNS metrics",
        || agent.metrics(),
        || {
            let m = agent.metrics();
            metric_sum(&m, "stagewall_dns_learnt_addresses", &[]) >= 4.0
                && metric_sum(&m, "stagewall_dns_queries_total", &[("protocol", "udp")]) >= 90.0
                && metric_sum(&m, "stagewall_dns_queries_total", &[("protocol", "tcp")]) >= 1.0
        },
    );
}

#[test]
fn ten_thousand_resolve_then_connect_loops_on_rotating_addresses_are_never_refused() {
    if !privileged() {
        return;
    }
    // Every answer names a new address, with a TTL of 1 s; the workload's learnt
    // addresses are bounded to 8, far fewer than the addresses it meets.
    let b = bed(1);
    let agent = start(&b, &["--dns-learnt-per-workload", "8"]);
    let stop = Arc::new(AtomicBool::new(false));
    let rotate = {
        let stop = stop.clone();
        let dir = b.dns.hosts_dir().to_path_buf();
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let addr = format!(
                    "203.0.113.{}",
                    ROTATING_FIRST + (i % ROTATING_COUNT as u32) as u8
                );
                let tmp = dir.join(".rotating.tmp");
                std::fs::write(&tmp, format!("{addr} rot.pythonhosted.test\n")).unwrap();
                std::fs::rename(&tmp, dir.join("rotating")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        })
    };
    let out = resolve_connect(&b, "training", "rot.pythonhosted.test", 10_000, Some("4"));
    stop.store(true, Ordering::Relaxed);
    let rotations = rotate.join().unwrap();
    let (ok, eperm, unresolved, other) = loops(&out);
    println!(
        "10,000 loops: ok {ok}, eperm {eperm}, unresolved {unresolved}, other {other}; {rotations} rotations"
    );
    assert_eq!((eperm, other), (0, 0), "refused: {out}");
    assert_eq!(ok + unresolved, 10_000);
    assert!(unresolved <= 10, "answers lost: {out}");
    let metrics = agent.metrics();
    let learnt = metric_sum(&metrics, "stagewall_dns_learnt_addresses", &[]);
    assert!(learnt <= 8.0, "bounded per workload: {learnt}");
    assert!(
        metric_sum(&metrics, "stagewall_dns_learnt_evictions_total", &[]) > 0.0,
        "{metrics}"
    );
}

#[test]
fn a_learnt_address_expires_for_new_connections_and_never_cuts_an_open_one() {
    if !privileged() {
        return;
    }
    let b = bed(2);
    let mut agent = start(&b, &["--dns-grace", "1s"]);
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    let out = resolve_connect(&b, "training", "pypi.test", 1, Some("4"));
    assert_eq!(loops(&out), (1, 0, 0, 0), "{out}");
    // An open connection, busy across the expiry and a policy change.
    let rr = {
        let cmd = b.bed.command("training", stagewall_tests::probe_bin());
        let mut cmd = cmd.expect("probe");
        cmd.args(["rr", PYPI, "443", "10000"]);
        std::thread::spawn(move || {
            String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(3_500));
    // TTL 2 s + grace 1 s have passed: a new connection is refused.
    assert_eq!(b.bed.tcp("training", ip(PYPI), 443).word, "eperm");
    // A policy change re-decides open flows; the open connection stays up.
    let mut policy = std::fs::read_to_string(b.bed.dir.join("names.yaml")).unwrap();
    policy.push_str(&b.bed.workload_yaml("other", "ml", "{app: extra}", false));
    b.bed.write_policy("names.yaml", &policy).unwrap();
    // The change in force while the connection is still busy: the kernel decides the
    // open flow again under the new policy, with its learnt address expired.
    until(
        "the policy change applied",
        || agent.log(),
        || metric_sum(&agent.metrics(), "stagewall_policy_generation", &[]) >= 2.0,
    );
    let rr = rr.join().unwrap();
    assert!(rr.starts_with("ok "), "the open connection was cut: {rr}");
    // The agent down: what it learnt stays in force (pinned) until its TTL; DNS keeps
    // being answered, for a workload with name rules too (after the proxy's liveness
    // runs out, its queries go to the resolver directly).
    let out = resolve_connect(&b, "training", "pypi.test", 1, Some("4"));
    assert_eq!(loops(&out), (1, 0, 0, 0), "{out}");
    agent.kill();
    assert_eq!(
        b.bed.tcp("training", ip(PYPI), 443).word,
        "ok",
        "learnt entries outlive the agent"
    );
    std::thread::sleep(Duration::from_secs(4));
    let dig = b
        .bed
        .resolving_command("training", b.dns.addr, "dig")
        .unwrap()
        .args(["+short", "+time=2", "+tries=1", "pypi.test", "A"])
        .output()
        .expect("dig");
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        PYPI,
        "DNS with the agent down"
    );
}

/// A bare-metal training job: a cgroup in the node's own network namespace (here the hub,
/// where the agent runs), resolving through a local resolver on 127.0.0.53 as
/// systemd-resolved serves one (a second dnsmasq there), with the agent's proxy on
/// 127.0.0.1. Every workload of the node shares its addresses: the proxy knows whose
/// query it holds from the kernel's record of the sending socket.
#[test]
fn a_job_in_the_nodes_network_namespace_reaches_an_allowed_name_through_the_local_resolver() {
    if !privileged() {
        return;
    }
    let mut b = bed(30);
    let local: IpAddr = "127.0.0.53".parse().unwrap();
    b.dns
        .start_local(&mut b.bed, local, 30)
        .expect("the local resolver");
    let hub = b.bed.hub.clone();
    // The job's node reaches the outside hosts on the bridge.
    let status = std::process::Command::new("ip")
        .args(["-n", &hub, "route", "add", "203.0.113.0/24", "dev", "br0"])
        .status()
        .unwrap();
    assert!(status.success());
    let job = b.bed.make_cgroup("job").unwrap();
    let root = stagewall::datapath::host::cgroup2_mount().unwrap();
    let job_path = format!("/{}", job.strip_prefix(&root).unwrap().display());
    let mut policy = pipeline(local);
    policy.push_str(&format!(
        "---\napiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: job, namespace: ml, labels: {{stage: training}}}}\nspec:\n  cgroup: {job_path}\n  addresses: [\"{}\"]\n",
        stagewall_tests::HUB_GATEWAY
    ));
    b.bed.write_policy("names.yaml", &policy).unwrap();
    let agent = b
        .bed
        .start_agent(&["--dns-proxy", "127.0.0.1", "--dns-resolver", "127.0.0.53"])
        .expect("agent");
    let run = |name: &str, count: &str| {
        let out = b
            .bed
            .resolving_command_in_hub(&job, local, stagewall_tests::probe_bin())
            .unwrap()
            .args(["resolve-connect", name, "443", count, "1000", "4"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run("pypi.test", "20");
    assert_eq!(
        loops(&out),
        (20, 0, 0, 0),
        "pypi.test from the job: {out}\n{}",
        agent.log()
    );
    let out = run("other.test", "2");
    assert_eq!(loops(&out), (0, 2, 0, 0), "other.test from the job: {out}");
    until(
        "the proxy's answers counted",
        || agent.metrics(),
        || metric_sum(&agent.metrics(), "stagewall_dns_answers_total", &[]) >= 40.0,
    );
}

/// The Kubernetes mode: pods resolve through the cluster DNS Service (its ClusterIP, which
/// the agent's socket hooks send to the proxy and the proxy calls through the real
/// kube-proxy), a Pipeline object with a name flow on the real API server.
#[test]
fn a_pod_reaches_an_allowed_name_resolved_through_the_cluster_dns_service() {
    use stagewall_tests::cluster::Cluster;
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "dns", "pypi", "other"]).expect("creating the test bed");
    bed.make_outside("pypi", PYPI).expect("pypi outside");
    bed.make_outside("other", OTHER).expect("other outside");
    for node in ["pypi", "other"] {
        bed.serve(node, &[443], &[]).expect("echo server");
    }
    let base = bed.cgroup_base_path();
    let mut cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster.agent_kubeconfig().expect("deploy/kubernetes");
    cluster
        .start_kube_proxy(&bed, "node-a")
        .expect("starting kube-proxy");
    cluster.create_namespace("ml").expect("namespace");
    for (name, labels) in [
        ("client", "{stage: training}"),
        ("dns", "{k8s-app: kube-dns}"),
    ] {
        cluster.run_bed_pod(&mut bed, &base, name, "node-a", labels);
    }
    let objects = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: ml}
spec:
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: 53}
  - {name: dns-tcp, protocol: TCP, port: 53, targetPort: 53}
---
apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {name: names, namespace: ml}
spec:
  stages:
    - name: training
      selector: {matchLabels: {stage: training}}
  flows:
    - from: {stage: training}
      to: {workloads: {podSelector: {matchLabels: {k8s-app: kube-dns}}}}
      ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
    - from: {stage: training}
      to: {fqdn: pypi.test}
      ports: [{protocol: TCP, port: 443}]
";
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], objects)
        .expect("the Service and the Pipeline");
    let dns_vip: IpAddr = cluster
        .kubectl(&[
            "get",
            "service",
            "dns",
            "-n",
            "ml",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("the ClusterIP")
        .parse()
        .expect("an address");
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    let dns = DnsServer::start(
        &mut bed,
        "dns",
        30,
        &[("pypi.test", ip(PYPI)), ("other.test", ip(OTHER))],
        &[],
    )
    .expect("dnsmasq");
    bed.give_hub_gateway().expect("the node's address");
    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &[
                "--node-name",
                "node-a",
                "--pods-cgroup-base",
                &base,
                "--dns-proxy",
                stagewall_tests::HUB_GATEWAY,
                "--dns-resolver",
                &dns_vip.to_string(),
            ],
        )
        .expect("starting the agent");
    let log = || format!("{}\n{}", agent.log(), cluster.log("kube-proxy"));
    until(
        "the pods enforced and the DNS Service's backend known",
        log,
        || {
            let m = agent.metrics();
            metric_sum(&m, "stagewall_workloads_enforced", &[]) == 2.0
                && metric_sum(&m, "stagewall_map_entries", &[("map", "services")]) >= 3.0
        },
    );
    // Nothing learnt: refused. Resolved through the DNS Service: allowed, every time.
    assert_eq!(bed.tcp("client", ip(PYPI), 443).word, "eperm");
    let out = bed.resolving_probe(
        "client",
        dns_vip,
        &["resolve-connect", "pypi.test", "443", "50", "1000", "4"],
    );
    assert_eq!(
        loops(&out),
        (50, 0, 0, 0),
        "pypi.test through the DNS Service: {out}\n{}",
        log()
    );
    let out = bed.resolving_probe(
        "client",
        dns_vip,
        &["resolve-connect", "other.test", "443", "2", "1000", "4"],
    );
    assert_eq!(loops(&out), (0, 2, 0, 0), "other.test: {out}");
    drop(dns);
}
