//! The SNI check (`--dns-sni-check`, ebpf/stagewall-ebpf/src/sni.rs) with real packets: a
//! workload connects to port 443 of an outside host that only a name rule allows, sends
//! a ClientHello (stagewall-probe's `hello`: a minimal one with the server name given),
//! and the echo server there answers only what reached it.
//!
//! Real parts: a Pipeline allows `index.test` and `*.wheels.test` on 443, a real dnsmasq
//! answers them (and `other.test`, on the same address: the shared-address case the
//! check exists for), the workload resolves them through the agent's DNS proxy (dig),
//! which teaches the kernel the address with the names' identities; then the ClientHello
//! decides.
//!
//! `cost` measures the egress program's run time per packet (kernel.bpf_stats_enabled)
//! with the check off and on and prints a table.

use std::{net::IpAddr, time::Duration};

use stagewall_tests::{Testbed, dns::DnsServer, privileged, until};

const SERVER: &str = "203.0.113.10";

/// The client may reach the outside server on 443 only through the names its DNS answers
/// gave (and DNS itself); the resolver answers every name with the server's address.
fn bed() -> (Testbed, DnsServer) {
    let mut bed = Testbed::new(&["client", "server", "dns"]).expect("creating the test bed");
    bed.make_outside("server", SERVER).expect("outside server");
    bed.serve("server", &[443], &[]).expect("echo server");
    bed.give_hub_gateway()
        .expect("the hub's address, where the proxy listens");
    let server: IpAddr = SERVER.parse().unwrap();
    let dns = DnsServer::start(
        &mut bed,
        "dns",
        300,
        &[
            ("index.test", server),
            ("a.files.wheels.test", server),
            ("other.test", server),
        ],
        &[],
    )
    .expect("dnsmasq");
    let mut policy = format!(
        "apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {{name: sni, namespace: ml}}
spec:
  stages:
    - name: client
      selector: {{matchLabels: {{app: client}}}}
  flows:
    - from: {{stage: client}}
      to: {{cidr: {}/32}}
      ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
    - from: {{stage: client}}
      to: {{fqdn: index.test}}
      ports: [{{protocol: TCP, port: 443}}]
    - from: {{stage: client}}
      to: {{fqdn: \"*.wheels.test\"}}
      ports: [{{protocol: TCP, port: 443}}]
---
",
        dns.addr
    );
    policy.push_str(&bed.workload_yaml("client", "ml", "{app: client}", false));
    bed.write_policy("sni.yaml", &policy).expect("policy");
    (bed, dns)
}

/// The agent with its DNS proxy serving the bed's resolver, and `extra` arguments.
fn start(bed: &Testbed, dns: &DnsServer, extra: &[&str]) -> stagewall_tests::Agent {
    let resolver = dns.addr.to_string();
    let mut args = vec![
        "--dns-proxy",
        stagewall_tests::HUB_GATEWAY,
        "--dns-resolver",
        &resolver,
    ];
    args.extend_from_slice(extra);
    bed.start_agent(&args).expect("starting the agent")
}

/// The client looks the names up through its resolver (redirected to the agent's proxy):
/// the server's address is learnt for the allowed ones.
fn resolve_names(bed: &Testbed, dns: &DnsServer) {
    for name in ["index.test", "a.files.wheels.test", "other.test"] {
        let out = bed
            .resolving_command("client", dns.addr, "dig")
            .unwrap()
            .args(["+short", "+time=2", "+tries=1", name])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            SERVER,
            "{name}"
        );
    }
}

fn hello(bed: &Testbed, sni: &str) -> String {
    bed.probe("client", &["hello", SERVER, "443", "1000", sni])
        .word
}

#[test]
fn a_tls_flow_only_a_name_allowed_must_name_a_learnt_host() {
    if !privileged() {
        return;
    }
    let (bed, dns) = bed();
    let server: IpAddr = SERVER.parse().unwrap();
    let agent = start(&bed, &dns, &["--dns-sni-check"]);
    let before = bed.tcp("client", server, 443);
    assert!(
        before.is("eperm"),
        "no name taught yet: the address alone allows nothing on 443: {before:?}\n{}",
        agent.log()
    );
    resolve_names(&bed, &dns);
    assert_eq!(hello(&bed, "index.test"), "ok", "the exact name");
    assert_eq!(
        hello(&bed, "Index.Test"),
        "ok",
        "names are compared lower-cased"
    );
    assert_eq!(
        hello(&bed, "a.files.wheels.test"),
        "ok",
        "a wildcard's suffix"
    );
    for (sni, why) in [
        ("other.test", "another host on the same address"),
        ("wheels.test", "a wildcard does not name its own suffix"),
        (
            "evil.index.test.example",
            "a name that merely contains an allowed one",
        ),
        ("*.wheels.test", "a pattern is no host name"),
        ("none", "a ClientHello without a server name"),
        ("plain", "a first payload that is no TLS at all"),
    ] {
        assert_eq!(hello(&bed, sni), "timeout", "{sni}: {why}");
    }
    until(
        "an sni-mismatch event",
        || format!("{:#?}", agent.events()),
        || {
            agent.events().iter().any(|e| {
                e["reason"] == "sni-mismatch"
                    && e["verdict"] == "dropped"
                    && e["dst"] == SERVER
                    && e["dst_port"] == 443
            })
        },
    );
}

#[test]
fn without_the_check_any_name_passes() {
    if !privileged() {
        return;
    }
    let (bed, dns) = bed();
    let _agent = start(&bed, &dns, &[]);
    resolve_names(&bed, &dns);
    for sni in ["index.test", "other.test", "none", "plain"] {
        assert_eq!(hello(&bed, sni), "ok", "{sni}: the check is off");
    }
}

/// The egress program's average run time, in ns per run, over `connections` hellos.
fn egress_ns_per_run(bed: &Testbed, sni: &str, connections: u32) -> (f64, u64, String) {
    let prog = egress_program_id(bed);
    let before = program_stats(prog);
    let out = bed.probe_output(
        "client",
        &["hellos", SERVER, "443", sni, &connections.to_string()],
    );
    let after = program_stats(prog);
    let runs = after.1 - before.1;
    let ns = (after.0 - before.0).as_nanos() as f64 / runs.max(1) as f64;
    (ns, runs, out.trim().to_string())
}

fn program_stats(id: u32) -> (Duration, u64) {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("the egress program");
    (info.run_time(), info.run_count())
}

/// The id of the cgroup_skb egress program the agent attached (its pinned link).
fn egress_program_id(bed: &Testbed) -> u32 {
    let links = stagewall_tests::pinned_links(&bed.bpffs);
    let link = std::fs::read_dir(&links)
        .expect("pinned links")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("cgroup_egress"))
        .expect("a pinned cgroup_egress link");
    let link = aya::programs::links::PinnedLink::from_pin(&link).expect("the link");
    let fd: aya::programs::links::FdLink = link.into();
    fd.info().expect("link info").program_id()
}

/// The cost of the check: the egress program's ns per run, check off and on, over the
/// same connections (each a handshake, a ClientHello, the echo, the close). Printed;
/// asserts only that both runs passed everything.
#[test]
fn cost() {
    if !privileged() {
        return;
    }
    const CONNECTIONS: u32 = 2000;
    const ROUNDS: u32 = 3;
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(sysctl).unwrap_or_default();
    std::fs::write(sysctl, "1").expect("enabling bpf stats");
    // Rounds alternate off and on: a busy machine's drift lands on both.
    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        for (label, check) in [("off", false), ("on", true)] {
            let (bed, dns) = bed();
            let args: &[&str] = if check { &["--dns-sni-check"] } else { &[] };
            let _agent = start(&bed, &dns, args);
            resolve_names(&bed, &dns);
            // Warm up, then measure.
            assert_eq!(hello(&bed, "index.test"), "ok");
            let (ns, runs, out) = egress_ns_per_run(&bed, "index.test", CONNECTIONS);
            assert_eq!(
                out,
                format!("ok {CONNECTIONS} of {CONNECTIONS}"),
                "check {label}"
            );
            rows.push((round, label, ns, runs));
        }
    }
    let _ = std::fs::write(sysctl, was.trim());
    println!("SNI check cost: cgroup_skb egress, {CONNECTIONS} connections with a ClientHello");
    println!(
        "{:<6} {:<6} {:>12} {:>10}",
        "round", "check", "ns per run", "runs"
    );
    for (round, label, ns, runs) in &rows {
        println!("{round:<6} {label:<6} {ns:>12.1} {runs:>10}");
    }
    for label in ["off", "on"] {
        let mut ns: Vec<f64> = rows.iter().filter(|r| r.1 == label).map(|r| r.2).collect();
        ns.sort_by(f64::total_cmp);
        println!("median {label:<6} {:>12.1}", ns[ns.len() / 2]);
    }
}
