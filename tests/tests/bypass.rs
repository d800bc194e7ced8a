//! No bypass by writing one's own headers: a workload with CAP_NET_RAW (containerd and
//! Docker grant it by default) sends hand-made packets through raw IP sockets (IP_HDRINCL,
//! seen by the cgroup hooks) and AF_PACKET sockets (which the cgroup hooks never see: TC on
//! the host side of its interface decides them, as the backstop of a cgroup-enforced
//! workload). Each is counted where it would arrive, on the peer's interface, before any
//! check of the peer's own.
//!
//! - the addresses in a header do not make a packet "self traffic": a packet whose source
//!   and destination are both the peer's leaves neither a quarantined nor an isolated
//!   workload;
//! - link control (IGMP, neighbor discovery) passes only in the form that cannot leave the
//!   link: an IGMP report or a neighbor solicitation to a routable unicast address, with a
//!   TTL or hop limit a router would forward, is decided by policy;
//! - a workload whose fail mode is open still drops everything when quarantined, truncated
//!   headers included;
//! - frames that are not IP (VLAN in VLAN) do not pass an isolated workload's interface,
//!   and are reported.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use stagewall_tests::{
    Testbed, privileged,
    raw::{
        self, PROTO_ICMPV6, PROTO_IGMP, PROTO_UDP, ethernet, hex, igmp_report, ipv4, ipv6,
        neighbor_solicitation, qinq, set_hop_limit, udp, v4, v6,
    },
};

/// One hand-made packet: who sends it how, and whether it may arrive.
struct Case {
    what: &'static str,
    from: &'static str,
    /// Through a raw IP socket (the cgroup hooks see it) rather than AF_PACKET (TC does).
    ip_socket: bool,
    /// The IP packet; its marker is the IPv4 identification or IPv6 flow label.
    packet: Vec<u8>,
    /// Frames only: VLAN-in-VLAN tags around it.
    double_tagged: bool,
    delivered: bool,
}

#[test]
fn hand_made_headers_never_bypass_quarantine_or_policy() {
    if !privileged() {
        return;
    }
    let bed =
        Testbed::new(&["raw", "rawiso", "lenient", "iso", "peer"]).expect("creating the test bed");
    // raw and rawiso are enforced by cgroup (with TC on their interface as the backstop
    // for AF_PACKET), lenient and iso at their interface. raw and lenient (whose fail mode
    // is open) are quarantined below; rawiso and iso may send nothing at all.
    let mut p = bed.backstopped_workload_yaml("raw", "app", "{app: raw}");
    p += &bed.backstopped_workload_yaml("rawiso", "app", "{app: rawiso}");
    p += &bed
        .workload_yaml("lenient", "app", "{app: lenient}", true)
        .replace("spec:\n", "spec:\n  failMode: open\n");
    p += &bed.workload_yaml("iso", "app", "{app: iso}", true);
    for name in ["rawiso", "iso"] {
        p += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: {name}}}}}\n  policyTypes: [Egress]\n"
        );
    }
    bed.write_policy("policy.yaml", &p).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    for workload in ["app/raw", "app/lenient"] {
        let (ok, said) = bed.control(&["quarantine", workload]);
        assert!(ok, "quarantine {workload}: {said}");
    }

    let peer = bed.node("peer");
    let (peer4, peer6) = (v4(peer.v4), v6(peer.v6));
    let addr4 = |node: &str| v4(bed.node(node).v4);
    let addr6 = |node: &str| v6(bed.node(node).v6);
    let spoofed_self = |marker: u16| {
        ipv4(
            peer4,
            peer4,
            PROTO_UDP,
            marker,
            &[],
            0,
            &udp(40000, 53, b"x"),
        )
    };
    let with_hops = |mut packet: Vec<u8>, hops: u8| {
        set_hop_limit(&mut packet, hops);
        packet
    };
    let group = Ipv4Addr::new(224, 0, 0, 22);
    let cases: Vec<(u32, Case)> = vec![
        Case {
            what: "quarantined, raw IP socket: source and destination both the peer's",
            from: "raw",
            ip_socket: true,
            packet: spoofed_self(2001),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "isolated, raw IP socket: source and destination both the peer's",
            from: "rawiso",
            ip_socket: true,
            packet: spoofed_self(2002),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "quarantined, cgroup-enforced, AF_PACKET: UDP to the peer",
            from: "raw",
            ip_socket: false,
            packet: ipv4(
                addr4("raw"),
                peer4,
                PROTO_UDP,
                2010,
                &[],
                0,
                &udp(40000, 53, b"x"),
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "isolated, cgroup-enforced, AF_PACKET: UDP to the peer",
            from: "rawiso",
            ip_socket: false,
            packet: ipv4(
                addr4("rawiso"),
                peer4,
                PROTO_UDP,
                2011,
                &[],
                0,
                &udp(40000, 53, b"x"),
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "quarantined, raw IP socket: IGMP to the peer's unicast address, TTL 64",
            from: "raw",
            ip_socket: true,
            packet: ipv4(
                addr4("raw"),
                peer4,
                PROTO_IGMP,
                2003,
                &[],
                0,
                &igmp_report(group),
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "quarantined, fail mode open: a truncated UDP header",
            from: "lenient",
            ip_socket: false,
            packet: ipv4(
                addr4("lenient"),
                peer4,
                PROTO_UDP,
                2004,
                &[],
                0,
                &[0x9c, 0x40],
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "isolated: UDP inside VLAN-in-VLAN tags",
            from: "iso",
            ip_socket: false,
            packet: ipv4(
                addr4("iso"),
                peer4,
                PROTO_UDP,
                2005,
                &[],
                0,
                &udp(40000, 53, b"x"),
            ),
            double_tagged: true,
            delivered: false,
        },
        Case {
            what: "isolated: IGMP to the peer's unicast address, TTL 64",
            from: "iso",
            ip_socket: false,
            packet: ipv4(
                addr4("iso"),
                peer4,
                PROTO_IGMP,
                2006,
                &[],
                0,
                &igmp_report(group),
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "isolated: neighbor solicitation to the peer, hop limit 64",
            from: "iso",
            ip_socket: false,
            packet: ipv6(
                addr6("iso"),
                peer6,
                PROTO_ICMPV6,
                2007,
                &neighbor_solicitation(peer6),
            ),
            double_tagged: false,
            delivered: false,
        },
        Case {
            what: "isolated: neighbor solicitation to the peer, hop limit 255 (link control)",
            from: "iso",
            ip_socket: false,
            packet: with_hops(
                ipv6(
                    addr6("iso"),
                    peer6,
                    PROTO_ICMPV6,
                    2008,
                    &neighbor_solicitation(peer6),
                ),
                255,
            ),
            double_tagged: false,
            delivered: true,
        },
        Case {
            what: "isolated: IGMP report to its group, TTL 1 (link control)",
            from: "iso",
            ip_socket: false,
            packet: with_hops(
                ipv4(
                    addr4("iso"),
                    group,
                    PROTO_IGMP,
                    2009,
                    &[],
                    0,
                    &igmp_report(group),
                ),
                1,
            ),
            double_tagged: false,
            delivered: true,
        },
    ]
    .into_iter()
    .map(|c| {
        let marker = raw::marker(&ethernet([0; 6], [0; 6], &c.packet)).expect("a marker");
        (marker, c)
    })
    .collect();
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        cases.iter().all(|(m, _)| seen.insert(*m)),
        "each case has a marker of its own"
    );

    const COPIES: usize = 3;
    let markers: Vec<u32> = cases.iter().map(|(m, _)| *m).collect();
    let counts = bed.frames_delivered("peer", &markers, 2500, || {
        for (_, c) in &cases {
            let said = if c.ip_socket {
                let packets = vec![hex(&c.packet); COPIES];
                let mut args = vec!["ip-send"];
                args.extend(packets.iter().map(String::as_str));
                bed.probe_output(c.from, &args)
            } else {
                let mut frame = ethernet(bed.mac("peer"), bed.mac(c.from), &c.packet);
                if c.double_tagged {
                    frame = qinq(&frame, 100, 200);
                }
                let frames = vec![hex(&frame); COPIES];
                let mut args = vec!["raw-send", "eth0"];
                args.extend(frames.iter().map(String::as_str));
                bed.probe_output(c.from, &args)
            };
            // A packet the cgroup hook drops fails the send with EPERM; what arrived is
            // counted either way.
            assert!(
                said.starts_with("ok") || (c.ip_socket && said.starts_with("eperm")),
                "{} from {}: {said}",
                c.what,
                c.from
            );
        }
    });
    let mut wrong = Vec::new();
    for ((_, c), n) in cases.iter().zip(counts) {
        let expected = if c.delivered { COPIES } else { 0 };
        eprintln!("{:<80} {n} of {COPIES} delivered", c.what);
        if n != expected {
            wrong.push(format!(
                "{} (from {}): {n} of {COPIES} delivered, expected {expected}",
                c.what, c.from
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "hand-made packets with the wrong verdict:\n{}",
        wrong.join("\n")
    );
    // What is not IP is reported as such, with the workload that sent it.
    let not_ip = |events: &[serde_json::Value]| {
        events
            .iter()
            .any(|e| e["reason"] == "not-ip" && e["workload"] == "app/iso")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !not_ip(&agent.events()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = agent.events();
    assert!(not_ip(&events), "no not-ip event for app/iso: {events:#?}");
}
