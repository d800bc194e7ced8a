//! Observability with real parts: a real Prometheus server scrapes the agent while a known
//! number of violations is sent, and PromQL returns exactly that count; the HTTP event
//! stream and `stagewall events` deliver one event per violation; a flood is accounted for
//! exactly (queued + suppressed + lost = denied) while the agent keeps up in bounded memory.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use stagewall::events::filter::percent_encode;
use stagewall_tests::{Agent, Testbed, metric_sum, privileged};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// server accepts TCP/UDP 80 from client; client may send only to server:80 and
/// its other egress is default-denied by a policy without rules.
fn policies(bed: &Testbed) -> String {
    let mut p = server_policy(bed);
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-lockdown, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n";
    p
}

/// server accepts TCP/UDP 80 from client, nothing else.
fn server_policy(bed: &Testbed) -> String {
    let mut p = bed.workload_yaml("client", "app", "{app: client, stage: training}", false);
    p += &bed.workload_yaml("server", "app", "{app: server, stage: serving}", false);
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n    - from: [{podSelector: {matchLabels: {app: client}}}]\n      ports: [{port: 80}, {port: 80, protocol: UDP}]\n---\n";
    p
}

fn setup() -> Testbed {
    let mut bed = Testbed::new(&["client", "server", "outside"]).expect("creating the test bed");
    bed.write_policy("policy.yaml", &policies(&bed)).unwrap();
    bed.serve("server", &[80, 81], &[80, 81]).unwrap();
    bed
}

/// A real Prometheus in the hub namespace scraping the agent every second, with the
/// project's alerting rules loaded. Killed on drop.
struct Prometheus(Child);

impl Prometheus {
    fn start(bed: &Testbed) -> Prometheus {
        let dir = bed.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: stagewall\n    static_configs: [{{targets: ['127.0.0.1:9742']}}]\n",
            repo("deploy/prometheus/stagewall-rules.yaml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut cmd = bed.hub_command("prometheus").unwrap();
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        Prometheus(
            cmd.spawn()
                .expect("starting prometheus (Debian package prometheus)"),
        )
    }

    /// The value of a PromQL query's single result (None while it has none).
    fn query(bed: &Testbed, promql: &str) -> Option<f64> {
        let body = bed.hub_get(
            "127.0.0.1:9090",
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn events_of(agent: &Agent, query: &str) -> Vec<serde_json::Value> {
    agent
        .get(&format!("/v1/events?{query}"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn prometheus_counts_exactly_the_violations_sent_and_the_stream_delivers_each() {
    if !privileged() {
        return;
    }
    let bed = setup();
    let agent = bed
        .start_agent(&["--node-name", "test-node"])
        .expect("starting the agent");
    let prometheus = Prometheus::start(&bed);
    let server = bed.node("server").v4;

    // 25 datagrams to a port the server's policy does not allow: 25 violations.
    const SENT: u32 = 25;
    assert!(bed.udp("outside", server, 81, SENT).is("timeout"));
    // One default-deny drop: the client's egress policy has no rule at all.
    assert!(bed.tcp("client", server, 81).is("eperm"));
    assert!(
        bed.tcp("client", server, 80).is("eperm"),
        "default deny covers every port"
    );

    // Port 81 is named by no policy: its label is "other" (item 11: bounded labels).
    let want = "sum(ml_network_violations_total{source=\"world\",destination=\"app/server\",port=\"other\"})";
    let start = Instant::now();
    let got = loop {
        let got = Prometheus::query(&bed, want);
        if got == Some(SENT as f64) || start.elapsed() > Duration::from_secs(40) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got, Some(SENT as f64), "PromQL {want}\n{}", agent.log());
    assert_eq!(
        Prometheus::query(
            &bed,
            "sum(ml_network_violations_total{source=\"app/client\"})"
        ),
        Some(2.0)
    );

    // The event stream: one event per violation, with everything an operator needs.
    let events = events_of(&agent, "workload=app/server&verdict=dropped");
    assert_eq!(events.len(), SENT as usize, "{events:#?}");
    for e in &events {
        assert_eq!(e["node"], "test-node");
        assert_eq!(e["namespace"], "app");
        assert_eq!(e["stage"], "serving");
        assert_eq!(e["reason"], "no-rule");
        assert_eq!(e["peer"], "world");
        assert_eq!(e["dst_port"], 81);
        assert_eq!(e["policies"], serde_json::json!(["app/server"]));
        assert_eq!(e["suppressed"], 0);
    }
    let client = events_of(&agent, "namespace=app&workload=client");
    assert_eq!(client.len(), 2, "{client:#?}");
    assert!(
        client
            .iter()
            .all(|e| e["reason"] == "default-deny" && e["stage"] == "training")
    );
    assert!(events_of(&agent, "verdict=would-drop").is_empty());

    // stagewall events: the same, as a table.
    let cli = bed
        .hub_command(stagewall_tests::agent_bin())
        .unwrap()
        .args(["events", "--workload", "app/server"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), SENT as usize, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains("dropped") && r.contains("app/server") && r.contains(" 81 ")),
        "{table}"
    );

    // --follow: what arrives after it started, live.
    let mut follow = bed
        .hub_command(stagewall_tests::agent_bin())
        .unwrap()
        .args([
            "events",
            "--follow",
            "--output",
            "json",
            "--workload",
            "server",
            "--verdict",
            "dropped",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    for _ in 0..SENT {
        lines.next().unwrap().unwrap(); // the recent ones first
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(bed.udp("outside", server, 81, 3).is("timeout"));
    for _ in 0..3 {
        let line = lines.next().expect("a live event").unwrap();
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["dst_port"], 81, "{line}");
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // Every dashboard query and every alerting rule evaluates against the real data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/stagewall-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$namespace", ".*")
                .replace("$stage", ".*");
            let body = bed
                .hub_get(
                    "127.0.0.1:9090",
                    &format!("/api/v1/query?query={}", percent_encode(&expr)),
                )
                .unwrap();
            assert!(body.contains("\"status\":\"success\""), "{expr}: {body}");
            queries += 1;
        }
    }
    assert!(queries >= 15);
    // What the dashboard's namespace and stage variables join on, and the process
    // metrics, in the real scrape.
    assert_eq!(
        Prometheus::query(
            &bed,
            r#"stagewall_workload_info{workload="app/server",namespace="app",stage="serving"}"#
        ),
        Some(1.0)
    );
    let resident = Prometheus::query(&bed, r#"process_resident_memory_bytes{job="stagewall"}"#);
    assert!(resident.is_some_and(|bytes| bytes > 1e6), "{resident:?}");
    // A per-workload panel's join, narrowed to one stage: the server's denied packets.
    let serving = Prometheus::query(
        &bed,
        r#"sum(stagewall_workload_packets_total{verdict="dropped"} * on (instance, workload) group_left (namespace, stage) stagewall_workload_info{stage="serving"})"#,
    );
    assert!(serving.is_some_and(|n| n >= f64::from(SENT)), "{serving:?}");
    let rules = bed.hub_get("127.0.0.1:9090", "/api/v1/rules").unwrap();
    for alert in [
        "StagewallViolationSpike",
        "StagewallEventsLost",
        "StagewallMapPressure",
        "StagewallAgentDown",
    ] {
        assert!(rules.contains(alert), "{alert} not loaded: {rules}");
    }
    assert!(!rules.contains("\"health\":\"err\""), "{rules}");
    drop(prometheus);
}

#[test]
fn a_flood_is_accounted_for_and_the_agent_keeps_up_in_bounded_memory() {
    if !privileged() {
        return;
    }
    let bed = setup();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let server = bed.node("server").v4;
    let rss_before = agent.rss_kib();

    // 2 seconds of UDP from 2048 source ports to a denied port: many flows, so the
    // per-flow rate limit lets up to 32 events a second through for each.
    let started = Instant::now();
    let out = bed.probe_output(
        "outside",
        &["flood", &server.to_string(), "81", "2000", "2048"],
    );
    let sent: u64 = out
        .trim()
        .strip_prefix("sent ")
        .and_then(|n| n.parse().ok())
        .expect("flood output");

    // Wait until the agent has delivered everything the kernel queued.
    let counters = |m: &str| {
        (
            metric_sum(
                m,
                "stagewall_packets_total",
                &[("direction", "ingress"), ("verdict", "dropped")],
            ) as u64,
            metric_sum(m, "stagewall_events_queued_total", &[]) as u64,
            metric_sum(m, "stagewall_events_suppressed_total", &[]) as u64,
            metric_sum(m, "stagewall_events_lost_total", &[]) as u64,
            metric_sum(m, "stagewall_events_delivered_total", &[]) as u64,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dropped, queued, suppressed, lost, delivered) = loop {
        let c = counters(&agent.metrics());
        if c.4 >= c.1 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = agent.rss_kib();
    eprintln!(
        "flood: {sent} datagrams sent, {dropped} dropped; events: {queued} queued, {delivered} delivered ({:.0}/s), {suppressed} suppressed, {lost} lost; agent RSS {rss_before} -> {rss_after} KiB",
        delivered as f64 / seconds
    );
    assert!(
        dropped > 10_000,
        "the flood did not reach the policy: {dropped}"
    );
    // Every denied packet is an event, a suppressed event or a lost event: none is silent.
    assert_eq!(queued + suppressed + lost, dropped);
    assert_eq!(delivered, queued, "the agent delivers every queued event");
    assert!(suppressed > 0, "the rate limit engaged");
    assert!(rss_after < 64 * 1024, "agent RSS {rss_after} KiB");
    // The violations metric counts the suppressed ones the events carried.
    let m = agent.metrics();
    // Port 81 is named by no policy: "other".
    let violations = metric_sum(&m, "ml_network_violations_total", &[("port", "other")]) as u64;
    assert!(
        violations >= delivered && violations <= dropped,
        "{violations} vs {delivered}..{dropped}"
    );
}

/// The event log is an output, never a condition of enforcement: with nobody reading the
/// agent's stdout every event printed fails (EPIPE), and the agent counts the failures and
/// the events lost, logs them now and then, goes on serving /metrics and enforcing.
#[test]
fn a_closed_stdout_loses_events_not_the_agent() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "outside"]).expect("creating the test bed");
    bed.write_policy("policy.yaml", &server_policy(&bed))
        .unwrap();
    bed.serve("server", &[80, 81], &[80, 81]).unwrap();
    let started = Instant::now();
    let mut agent = bed
        .start_agent_stdout_closed(&[])
        .expect("starting the agent");
    let server = bed.node("server").v4;

    // Two rounds of denials: the second comes after writes have already failed, so it
    // shows that a failure neither stops the agent nor the attempts to write.
    let (mut errors, mut delivered) = (0.0, 0.0);
    for round in 1..=2 {
        assert!(bed.udp("outside", server, 81, 5).is("timeout"));
        assert!(bed.tcp("client", server, 81).is("timeout"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = agent.exited() {
                panic!(
                    "round {round}: the agent exited ({status}) when its stdout was closed:\n{}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: output errors not counted:\n{}\n{}",
                agent.get("/metrics").unwrap_or_default(),
                agent.log()
            );
            // The agent may be between counting an event and writing it: until settled.
            if let Some(m) = agent.get("/metrics") {
                let now_errors = metric_sum(&m, "stagewall_events_output_errors_total", &[]);
                let lost = metric_sum(&m, "stagewall_events_output_lost_total", &[]);
                let now_delivered = metric_sum(&m, "stagewall_events_delivered_total", &[]);
                // Nothing reads the log: every event delivered to it is lost, and counted.
                if now_errors > errors && now_delivered > delivered && lost == now_delivered {
                    (errors, delivered) = (now_errors, now_delivered);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Verdicts are those of the policy, and the violations are still counted.
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("outside", server, 80).is("timeout"));
    let m = agent.metrics();
    assert!(
        // Port 81 is named by no policy: its violations count under "other" (the bound on
        // the port label).
        metric_sum(&m, "ml_network_violations_total", &[("port", "other")]) >= 10.0,
        "{m}"
    );
    // Logged, but not once per event: at most once every 10 s.
    let logged = agent.log().matches("writing events failed").count() as u64;
    let most = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=most).contains(&logged),
        "logged {logged} times:\n{}",
        agent.log()
    );
    agent.stop().expect("a clean stop");
}

/// Item 10: a one-off burst in one flow is counted whole, without the flow sending again.
/// The kernel lets EVENTS_PER_FLOW_WINDOW events of the burst through and suppresses the
/// rest; the agent reads the suppressed counts from the kernel's event limits.
#[test]
fn a_one_off_burst_is_counted_whole_within_seconds() {
    if !privileged() {
        return;
    }
    let bed = setup();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let prometheus = Prometheus::start(&bed);
    let server = bed.node("server").v4;

    // 400 datagrams from one socket, well within one rate-limit window: one flow.
    const SENT: u32 = 400;
    assert!(bed.udp("outside", server, 81, SENT).is("timeout"));

    let want = "sum(ml_network_violations_total{source=\"world\",destination=\"app/server\"})";
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = Prometheus::query(&bed, want);
        if got == Some(SENT as f64) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let m = agent.metrics();
    let suppressed = metric_sum(&m, "stagewall_events_suppressed_total", &[]);
    assert!(suppressed > 0.0, "the rate limit did not engage:\n{m}");
    assert_eq!(
        got,
        Some(SENT as f64),
        "PromQL {want}\n{m}\n{}",
        agent.log()
    );
    drop(prometheus);
}

/// Descriptors the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Whether `pid` still runs (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Raises this process's open-file limit to its hard limit: the test holds thousands of
/// sockets, more than the usual soft limit of 1,024.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Sets the open-file limit of another process (the agent).
fn set_nofile_of(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `new` (a null `new` only reads) and writes `old`.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
            0
        );
        let new = libc::rlimit {
            rlim_max: old.rlim_max,
            ..new
        };
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()),
            0
        );
    }
    old.rlim_cur
}

/// `n` connections to `addr` opened from inside the network namespace `netns` (the
/// sockets stay in it), each sent `request(i)` and then never read: what an abusive
/// client does. Connections the agent refuses or closes are kept as they are.
fn abusers(
    netns: &str,
    addr: &str,
    n: usize,
    request: fn(usize) -> String,
) -> Vec<std::net::TcpStream> {
    use std::io::Write as _;
    let ns = std::fs::File::open(format!("/run/netns/{netns}")).expect("the hub's netns");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            (0..n)
                .filter_map(|i| {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                    let _ = s.write_all(request(i).as_bytes());
                    Some(s)
                })
                .collect()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn abusive_clients_neither_stop_scrapes_nor_verdicts_nor_leak_descriptors() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let mut bed = setup();
    bed.serve("outside", &[80], &[]).unwrap();
    bed.give_hub_gateway().unwrap();
    // Bound to every address, as the DaemonSet does on the host network.
    let agent = bed
        .start_agent(&["--metrics-addr", "0.0.0.0:9742"])
        .expect("starting the agent");
    let pid = agent.pid();
    let prometheus = Prometheus::start(&bed);
    let server = bed.node("server").v4;
    let outside = bed.node("outside").v4;
    let verdicts_hold = || {
        assert!(
            bed.tcp("client", server, 80).is("eperm"),
            "denied stays denied\n{}",
            agent.log()
        );
        assert!(
            bed.tcp("server", outside, 80).is("ok"),
            "allowed stays allowed\n{}",
            agent.log()
        );
    };
    verdicts_hold();
    let up = "min_over_time(up{job=\"stagewall\"}[5s])";
    let start = Instant::now();
    while Prometheus::query(&bed, up) != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus never scraped the agent"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // From another host, the event stream is refused and says where to read it; the
    // metrics and health checks stay scrapable.
    let remote = format!("{}:9742", stagewall_tests::HUB_GATEWAY);
    let refused = bed.probe("outside", &["get", &remote, "/v1/events", "2000"]);
    assert!(refused.body.starts_with("HTTP/1.1 403"), "{}", refused.body);
    assert!(
        refused.body.contains("stagewall events"),
        "{}",
        refused.body
    );
    let metrics = bed.probe("outside", &["get", &remote, "/metrics", "2000"]);
    assert!(metrics.body.starts_with("HTTP/1.1 200"), "{}", metrics.body);

    // 2,000 abusive connections: headers that never end, followers that never read and
    // followers whose filter never matches, all held open.
    let fds_before = open_fds(pid);
    let held = abusers(&bed.hub, "127.0.0.1:9742", 2_000, |i| match i % 3 {
        0 => "GET /metrics HTTP/1.1\r\nHost: x\r\n".into(),
        1 => "GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        _ => "GET /v1/events?follow=true&namespace=nowhere HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    });
    eprintln!("abusers: {} connections open", held.len());
    let abuse = Instant::now();
    let mut peak = 0;
    while abuse.elapsed() < Duration::from_secs(15) {
        peak = peak.max(open_fds(pid));
        // Events for the followers that do match, so their unread streams fill up.
        assert!(bed.udp("outside", server, 81, 20).is("timeout"));
        verdicts_hold();
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("agent descriptors: {fds_before} before the abusers, {peak} at most with them");
    assert!(alive(pid), "{}", agent.log());
    assert!(
        peak <= fds_before + 512 + 32,
        "the agent held {peak} descriptors (from {fds_before}) for 2,000 abusers"
    );
    // Prometheus scraped through it all: up stayed 1 and a sample came every second.
    assert_eq!(
        Prometheus::query(&bed, "min_over_time(up{job=\"stagewall\"}[15s])"),
        Some(1.0),
        "{}",
        agent.log()
    );
    let samples =
        Prometheus::query(&bed, "count_over_time(up{job=\"stagewall\"}[15s])").unwrap_or(0.0);
    assert!(samples >= 12.0, "{samples} scrapes in 15 s");

    // Once the abusers go, so do their descriptors.
    drop(held);
    let settle = Instant::now();
    while open_fds(pid) > fds_before + 8 && settle.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        open_fds(pid) <= fds_before + 8,
        "{} descriptors open, {fds_before} before",
        open_fds(pid)
    );

    // Out of descriptors (EMFILE on accept): the agent logs, backs off and keeps
    // enforcing; it serves again once descriptors are free.
    let old = set_nofile_of(pid, (open_fds(pid) + 16) as u64);
    let held = abusers(&bed.hub, "127.0.0.1:9742", 200, |_| {
        "GET /healthz HTTP/1.1\r\nHost: x\r\n".into()
    });
    std::thread::sleep(Duration::from_secs(2));
    verdicts_hold();
    drop(held);
    set_nofile_of(pid, old);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alive(pid),
        "the agent exited when accept failed:\n{}",
        agent.log()
    );
    verdicts_hold();
    assert_eq!(
        agent.get("/healthz").as_deref(),
        Some("ok\n"),
        "{}",
        agent.log()
    );
    drop(prometheus);
}

/// Item 11: a scan of every port from one workload makes at most (named ports + 1)
/// series for the pair: the policies name port 80, so "80" and "other".
#[test]
fn a_port_scan_keeps_the_series_of_a_pair_bounded() {
    if !privileged() {
        return;
    }
    let bed = setup();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let server = bed.node("server").v4;
    let out = bed.probe_output("client", &["scan", &server.to_string(), "1", "65535"]);
    assert_eq!(out.trim(), "tried 65535", "{out}");

    // Wait until the agent has delivered everything the kernel queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        // None while /metrics does not answer (unbounded series make it too slow).
        let m = agent.get("/metrics");
        let done = m.as_deref().is_some_and(|m| {
            let queued = metric_sum(m, "stagewall_events_queued_total", &[]);
            queued > 0.0 && metric_sum(m, "stagewall_events_delivered_total", &[]) >= queued
        });
        if done || Instant::now() > deadline {
            break m.expect("/metrics answers within the deadline");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let pair = |l: &&str| {
        l.starts_with("ml_network_violations_total{")
            && l.contains("source=\"app/client\"")
            && l.contains("destination=\"app/server\"")
    };
    let series: Vec<&str> = m.lines().filter(pair).collect();
    let counted = metric_sum(
        &m,
        "ml_network_violations_total",
        &[("source", "app/client"), ("destination", "app/server")],
    );
    assert!(counted > 1000.0, "the scan did not reach the policy:\n{m}");
    assert!(
        series.len() <= 2,
        "{} series for one pair: {:?}",
        series.len(),
        &series[..series.len().min(5)]
    );
}

/// Every alert's runbook_url points at a section of docs/runbooks.md that exists, and the
/// dashboard has the namespace and stage variables its per-workload panels use. (No
/// privileges needed: read from the repository.)
#[test]
fn every_alert_has_a_runbook_section_and_the_dashboard_its_variables() {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/stagewall-rules.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(repo("docs/runbooks.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert_eq!(urls.len(), alerts.len(), "one runbook_url per alert");
    for (alert, url) in alerts.iter().zip(&urls) {
        let anchor = format!("docs/runbooks.md#{}\"", alert.to_lowercase());
        assert!(url.ends_with(&anchor), "{alert}: {url}");
        assert!(
            runbooks.contains(&format!("\n## {alert}\n")),
            "docs/runbooks.md has no section for {alert}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/stagewall-dashboard.json")).unwrap(),
    )
    .unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for variable in ["instance", "namespace", "stage"] {
        assert!(variables.contains(&variable), "{variables:?}");
    }
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("stagewall_workloads_quarantined")),
        "a quarantine panel"
    );
    assert!(
        exprs
            .iter()
            .filter(|e| e.contains("stage=~\"$stage\"") && e.contains("namespace=~\"$namespace\""))
            .count()
            >= 3,
        "the per-workload panels follow the variables: {exprs:#?}"
    );
}
