//! Hostile packets must not bypass policy: hand-made frames (IPv4 options and fragments,
//! IPv6 extension headers and fragments, truncated headers, unknown protocols) sent from
//! test namespaces with raw sockets to a workload enforced at its interface (TC), and
//! counted where they would arrive.
//!
//! The rules: the client may reach the server on UDP 53 only, the friend may reach it
//! with anything; the server may reach the client on UDP 53 only. A fragment other than
//! the first carries no ports, so only a rule without ports (the friend's) can allow it;
//! a packet whose headers end too early is dropped whoever sends it — unless the workload's
//! fail mode is open, when it passes; either way it is counted.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    process::Stdio,
};

use stagewall_tests::{
    Testbed, metric_sum, privileged, probe_bin,
    raw::{
        IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HOPOPTS, PROTO_UDP, ethernet, ipv4, ipv6, ipv6_fragment,
        ipv6_options, udp, v4, v6,
    },
};

/// Copies of each frame sent.
const COPIES: usize = 3;
const UNKNOWN_PROTOCOL: u8 = 253;
/// IPv4 options: four NOPs and an end of list (a 24-byte header).
const OPTIONS: &[u8] = &[1, 1, 1, 1];

/// Builds a case's IP packet from its ends.
type PacketFn = Box<dyn Fn(&Ends) -> Vec<u8>>;

struct Case {
    what: &'static str,
    from: &'static str,
    to: &'static str,
    /// The IP packet (the Ethernet header is added per sender and receiver).
    packet: PacketFn,
    delivered: bool,
}

/// Addresses of a case's two ends, and its marker.
struct Ends {
    src4: Ipv4Addr,
    dst4: Ipv4Addr,
    src6: Ipv6Addr,
    dst6: Ipv6Addr,
    marker: u16,
}

fn case(
    what: &'static str,
    from: &'static str,
    to: &'static str,
    delivered: bool,
    packet: impl Fn(&Ends) -> Vec<u8> + 'static,
) -> Case {
    Case {
        what,
        from,
        to,
        packet: Box::new(packet),
        delivered,
    }
}

fn udp4(e: &Ends, options: &[u8], fragment: u16, dport: u16) -> Vec<u8> {
    ipv4(
        e.src4,
        e.dst4,
        PROTO_UDP,
        e.marker,
        options,
        fragment,
        &udp(40000, dport, b"stagewall"),
    )
}

/// IPv4 that says UDP but ends two bytes into the UDP header.
fn truncated_udp4(e: &Ends) -> Vec<u8> {
    ipv4(e.src4, e.dst4, PROTO_UDP, e.marker, &[], 0, &[0x9c, 0x40])
}

/// IPv4 of a protocol no rule names.
fn unknown_protocol4(e: &Ends) -> Vec<u8> {
    ipv4(
        e.src4,
        e.dst4,
        UNKNOWN_PROTOCOL,
        e.marker,
        &[],
        0,
        b"stagewall",
    )
}

fn cases() -> Vec<Case> {
    let v6 = |e: &Ends, next: u8, payload: &[u8]| {
        ipv6(e.src6, e.dst6, next, u32::from(e.marker), payload)
    };
    // Five extension headers: one more than the kernel program walks.
    let five_headers = |dport: u16| {
        let mut p = udp(40000, dport, b"stagewall");
        for _ in 0..4 {
            p = ipv6_options(IPV6_DSTOPTS, &p);
        }
        ipv6_options(PROTO_UDP, &p)
    };
    vec![
        case("UDP to an allowed port", "client", "server", true, |e| {
            udp4(e, &[], 0, 53)
        }),
        case("UDP to a denied port", "client", "server", false, |e| {
            udp4(e, &[], 0, 54)
        }),
        case(
            "IPv4 options, allowed port",
            "client",
            "server",
            true,
            |e| udp4(e, OPTIONS, 0, 53),
        ),
        case(
            "IPv4 options, denied port",
            "client",
            "server",
            false,
            |e| udp4(e, OPTIONS, 0, 54),
        ),
        case(
            "IPv4 first fragment, allowed port",
            "client",
            "server",
            true,
            |e| udp4(e, &[], 0x2000, 53),
        ),
        case(
            "IPv4 first fragment, denied port",
            "client",
            "server",
            false,
            |e| udp4(e, &[], 0x2000, 54),
        ),
        // Its first bytes look like a UDP header to the allowed port: they are data.
        case(
            "IPv4 later fragment, port-limited peer",
            "client",
            "server",
            false,
            |e| udp4(e, &[], 100, 53),
        ),
        case(
            "IPv4 later fragment, peer allowed everything",
            "friend",
            "server",
            true,
            |e| udp4(e, &[], 100, 53),
        ),
        case(
            "IPv4 truncated UDP header",
            "friend",
            "server",
            false,
            truncated_udp4,
        ),
        case(
            "IPv4 truncated UDP header, fail-open workload",
            "friend",
            "lenient",
            true,
            truncated_udp4,
        ),
        case(
            "IPv4 header length below 20 bytes",
            "friend",
            "server",
            false,
            |e| {
                let mut p = udp4(e, &[], 0, 53);
                p[0] = 0x44;
                p
            },
        ),
        case(
            "IPv4 options longer than the packet",
            "friend",
            "server",
            false,
            |e| {
                let mut p = truncated_udp4(e);
                p[0] = 0x4f; // 60-byte header in a 22-byte packet
                p
            },
        ),
        case(
            "unknown protocol, port-limited peer",
            "client",
            "server",
            false,
            unknown_protocol4,
        ),
        case(
            "unknown protocol, peer allowed everything",
            "friend",
            "server",
            true,
            unknown_protocol4,
        ),
        case(
            "IPv6 hop-by-hop and destination options, allowed port",
            "client",
            "server",
            true,
            move |e| {
                let p = ipv6_options(PROTO_UDP, &udp(40000, 53, b"stagewall"));
                v6(e, IPV6_HOPOPTS, &ipv6_options(IPV6_DSTOPTS, &p))
            },
        ),
        case(
            "IPv6 hop-by-hop and destination options, denied port",
            "client",
            "server",
            false,
            move |e| {
                let p = ipv6_options(PROTO_UDP, &udp(40000, 54, b"stagewall"));
                v6(e, IPV6_HOPOPTS, &ipv6_options(IPV6_DSTOPTS, &p))
            },
        ),
        case(
            "IPv6 first fragment, denied port",
            "client",
            "server",
            false,
            move |e| {
                v6(
                    e,
                    IPV6_FRAGMENT,
                    &ipv6_fragment(PROTO_UDP, 0, true, 7, &udp(40000, 54, b"x")),
                )
            },
        ),
        case(
            "IPv6 later fragment, port-limited peer",
            "client",
            "server",
            false,
            move |e| {
                v6(
                    e,
                    IPV6_FRAGMENT,
                    &ipv6_fragment(PROTO_UDP, 100, false, 7, &udp(40000, 53, b"x")),
                )
            },
        ),
        case(
            "IPv6 later fragment, peer allowed everything",
            "friend",
            "server",
            true,
            move |e| {
                v6(
                    e,
                    IPV6_FRAGMENT,
                    &ipv6_fragment(PROTO_UDP, 100, false, 7, &udp(40000, 53, b"x")),
                )
            },
        ),
        // Past the headers the program walks, the packet is of an unknown protocol:
        // never allowed by a port rule.
        case(
            "IPv6 five extension headers, allowed port",
            "client",
            "server",
            false,
            move |e| v6(e, IPV6_DSTOPTS, &five_headers(53)),
        ),
        case(
            "IPv6 truncated extension header",
            "friend",
            "server",
            false,
            move |e| v6(e, IPV6_DSTOPTS, &[PROTO_UDP]),
        ),
        // The workload's own egress (TC ingress on the host side).
        case(
            "egress: IPv4 options, allowed port",
            "server",
            "client",
            true,
            |e| udp4(e, OPTIONS, 0, 53),
        ),
        case(
            "egress: IPv4 options, denied port",
            "server",
            "client",
            false,
            |e| udp4(e, OPTIONS, 0, 54),
        ),
        case(
            "egress: IPv4 later fragment",
            "server",
            "client",
            false,
            |e| udp4(e, &[], 100, 53),
        ),
        case(
            "egress: IPv6 extension headers, denied port",
            "server",
            "client",
            false,
            move |e| {
                v6(
                    e,
                    IPV6_HOPOPTS,
                    &ipv6_options(PROTO_UDP, &udp(40000, 54, b"x")),
                )
            },
        ),
    ]
}

#[test]
fn hostile_packets_never_bypass_policy() {
    if !privileged() {
        return;
    }
    let bed =
        Testbed::new(&["client", "friend", "server", "lenient"]).expect("creating the test bed");
    let (client, friend) = (bed.node("client"), bed.node("friend"));
    let mut p = bed.workload_yaml("server", "app", "{app: server}", true);
    // A workload whose fail mode is open: what cannot be parsed passes (counted).
    p += &bed
        .workload_yaml("lenient", "app", "{app: lenient}", true)
        .replace("spec:\n", "spec:\n  failMode: open\n");
    p += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - from: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: {}/128}}}}]\n      ports: [{{port: 53, protocol: UDP}}]\n    - from: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: {}/128}}}}]\n  egress:\n    - to: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: {}/128}}}}]\n      ports: [{{port: 53, protocol: UDP}}]\n",
        client.v4, client.v6, friend.v4, friend.v6, client.v4, client.v6
    );
    bed.write_policy("policy.yaml", &p).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");

    let cases = cases();
    let marker = |i: usize| 1000 + i as u16;
    // One counter per receiving namespace, started before anything is sent.
    let mut counters = Vec::new();
    for receiver in ["server", "client", "lenient"] {
        let markers: Vec<String> = (0..cases.len())
            .filter(|&i| cases[i].to == receiver)
            .map(|i| marker(i).to_string())
            .collect();
        let mut cmd = bed.command(receiver, probe_bin()).unwrap();
        cmd.args(["raw-count", "eth0", "2000"])
            .args(&markers)
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "raw counter in {receiver}");
        counters.push((receiver, markers, child, out));
    }
    for sender in ["client", "friend", "server"] {
        let frames: Vec<String> = (0..cases.len())
            .filter(|&i| cases[i].from == sender)
            .flat_map(|i| {
                let c = &cases[i];
                let (s, d) = (bed.node(c.from), bed.node(c.to));
                let ends = Ends {
                    src4: v4(s.v4),
                    dst4: v4(d.v4),
                    src6: v6(s.v6),
                    dst6: v6(d.v6),
                    marker: marker(i),
                };
                let frame = ethernet(bed.mac(c.to), bed.mac(c.from), &(c.packet)(&ends));
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                std::iter::repeat_n(hex, COPIES)
            })
            .collect();
        let mut args = vec!["raw-send", "eth0"];
        args.extend(frames.iter().map(String::as_str));
        let said = bed.probe_output(sender, &args);
        assert!(said.starts_with("ok"), "raw-send from {sender}: {said}");
    }
    let mut wrong = Vec::new();
    for (receiver, markers, mut child, mut out) in counters {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let _ = child.wait();
        let counts: Vec<usize> = line
            .trim()
            .strip_prefix("counts")
            .unwrap_or_else(|| panic!("raw counter in {receiver}: {line:?}"))
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(counts.len(), markers.len());
        for (m, n) in markers.iter().zip(counts) {
            let i = m.parse::<usize>().unwrap() - 1000;
            let c = &cases[i];
            let expected = if c.delivered { COPIES } else { 0 };
            eprintln!(
                "{:<58} {} -> {}: {n} of {COPIES} delivered",
                c.what, c.from, c.to
            );
            if n != expected {
                wrong.push(format!(
                    "{} ({} -> {}): {n} of {COPIES} delivered, expected {expected}",
                    c.what, c.from, c.to
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "hostile packets with the wrong verdict:\n{}",
        wrong.join("\n")
    );
    // Headers that end too early are counted and reported, not silently dropped.
    let truncated = cases
        .iter()
        .filter(|c| {
            c.what.contains("truncated")
                || c.what.contains("below 20")
                || c.what.contains("longer than the packet")
        })
        .count();
    let malformed = metric_sum(&agent.metrics(), "stagewall_malformed_packets_total", &[]);
    assert_eq!(
        malformed as usize,
        truncated * COPIES,
        "malformed packets counted"
    );
}
