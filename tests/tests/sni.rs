//! The SNI check (`--dns-sni-check`, ebpf/stagewall-ebpf/src/sni.rs) with real packets: a
//! workload connects to port 443 of an outside host that only a name rule allows, sends
//! a ClientHello (stagewall-probe's `hello`: a minimal one with the server name given),
//! and the echo server there answers only what reached it.
//!
//! Hacky on purpose, for this branch: neither the Pipeline's `to: {fqdn: ...}` (the
//! compiler's name rules, EP_NAME_RULES) nor the DNS proxy (which writes DNS_LEARNT) exist
//! here yet, so the test writes into the pinned maps what they would have: the workload's
//! ENDPOINTS entry gets EP_NAME_RULES (and EP_SNI_CHECK, which the agent's
//! `--dns-sni-check` sets only on endpoints with EP_NAME_RULES), its egress policy a
//! POLICY entry for the name identities, and DNS_LEARNT the destination learnt for them,
//! as the proxy would after answering the names. Once the compiler and the proxy land,
//! this test should use a Pipeline and a real resolver instead.
//!
//! `cost` measures the egress program's run time per packet (kernel.bpf_stats_enabled)
//! with the check off and on and prints a table.

use std::{net::IpAddr, path::Path, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use stagewall_common::{
    Config, DIR_EGRESS, DNS_LEARNT_IDENTITIES, DnsLearntKey, DnsLearntValue, ENDPOINT_KIND_CGROUP,
    EP_NAME_RULES, EP_SNI_CHECK, EndpointInfo, EndpointKey, FAMILY_V4, IDENTITY_NAME_FIRST,
    MAP_LAYOUT_VERSION, POLICY_ALLOW, POLICY_PREFIX_FULL_BITS, PROTO_TCP, PolicyKey,
};
use stagewall_tests::{Testbed, privileged, until};

const SERVER: &str = "203.0.113.10";

/// What the agent's `DomainPattern::identity()` gives a pattern's canonical text.
fn name_identity(pattern: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in pattern.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h | IDENTITY_NAME_FIRST
}

const PATTERNS: [&str; 2] = ["index.test", "*.wheels.test"];

/// The client may reach 198.51.100.0/24:80 by address (so its egress has a policy); the
/// server, on 443, only through the names the test adds.
fn bed() -> Testbed {
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    bed.make_outside("server", SERVER).expect("outside server");
    bed.serve("server", &[443], &[]).expect("echo server");
    let mut policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{ipBlock: {cidr: 198.51.100.0/24}}]\n      ports: [{protocol: TCP, port: 80}]\n---\n".to_string();
    policy.push_str(&bed.workload_yaml("client", "ml", "{app: client}", false));
    bed.write_policy("sni.yaml", &policy).expect("policy");
    bed
}

fn map(bed: &Testbed, name: &str) -> Map {
    let path = bed.bpffs.join(format!("v{MAP_LAYOUT_VERSION}/maps/{name}"));
    MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes what the compiler's name rules and the DNS proxy would have (see the module
/// doc) for the client, in the slot in force; `sni_check`: EP_SNI_CHECK too.
fn teach_names(bed: &Testbed, sni_check: bool) {
    let cgroup_id = inode(&bed.node("client").cgroup);
    let config: Array<_, Config> = Array::try_from(map(bed, "CONFIG")).unwrap();
    let active = config.get(&0, 0).unwrap().active_slot;
    let mut endpoints: HashMap<_, EndpointKey, EndpointInfo> =
        HashMap::try_from(map(bed, "ENDPOINTS")).unwrap();
    let entries: Vec<(EndpointKey, EndpointInfo)> = endpoints
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.slot == active && k.kind == ENDPOINT_KIND_CGROUP && k.id == cgroup_id)
        .collect();
    assert!(!entries.is_empty(), "no ENDPOINTS entry for the client");
    let mut policy: LpmTrie<_, PolicyKey, u32> = LpmTrie::try_from(map(bed, "POLICY")).unwrap();
    let mut learnt: HashMap<_, DnsLearntKey, DnsLearntValue> =
        HashMap::try_from(map(bed, "DNS_LEARNT")).unwrap();
    for (key, mut info) in entries {
        assert_ne!(info.egress_policy, 0, "the client has an egress policy");
        info.flags |= EP_NAME_RULES | if sni_check { EP_SNI_CHECK } else { 0 };
        endpoints.insert(key, info, 0).unwrap();
        for pattern in PATTERNS {
            let data = PolicyKey {
                policy_be: info.egress_policy.to_be(),
                identity_be: name_identity(pattern).to_be(),
                direction: DIR_EGRESS,
                protocol: PROTO_TCP,
                port_be: 443u16.to_be(),
            };
            policy
                .insert(&Key::new(POLICY_PREFIX_FULL_BITS, data), POLICY_ALLOW, 0)
                .unwrap();
        }
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&SERVER.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let mut identities = [0u32; DNS_LEARNT_IDENTITIES];
        for (i, pattern) in PATTERNS.iter().enumerate() {
            identities[i] = name_identity(pattern);
        }
        let key = DnsLearntKey {
            endpoint_id: info.endpoint_id,
            family: FAMILY_V4,
            _pad: [0; 3],
            addr,
        };
        let value = DnsLearntValue {
            expires_ns: u64::MAX,
            identities,
        };
        learnt.insert(key, value, 0).unwrap();
    }
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("cgroup dir").ino()
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
    let bed = bed();
    let server: IpAddr = SERVER.parse().unwrap();
    let agent = bed
        .start_agent(&["--dns-sni-check"])
        .expect("starting the agent");
    let before = bed.tcp("client", server, 443);
    assert!(
        before.is("eperm"),
        "no name taught yet: the address alone allows nothing on 443: {before:?}\n{}",
        agent.log()
    );
    teach_names(&bed, true);
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
    let bed = bed();
    let _agent = bed.start_agent(&[]).expect("starting the agent");
    teach_names(&bed, false);
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
            let bed = bed();
            let args: &[&str] = if check { &["--dns-sni-check"] } else { &[] };
            let _agent = bed.start_agent(args).expect("starting the agent");
            teach_names(&bed, check);
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
