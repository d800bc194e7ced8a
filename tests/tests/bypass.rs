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
            // A packet the cgroup hook drops fails the send with EPERM, and where the
            // kernel runs BPF LSM an isolated cgroup workload is refused the packet
            // socket itself; what arrived is counted either way.
            assert!(
                said.starts_with("ok") || (!c.delivered && said.starts_with("eperm")),
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

/// Packet sockets where no interface backstops the cgroup hooks: a pod whose veth the
/// agent does not know (a bridged CNI) and a host process in the node's network namespace
/// (the hub here, sending out of the peer's veth). The kernel's socket_create LSM hook
/// refuses isolated and quarantined workloads the socket itself; audit mode only reports,
/// and a workload no policy isolates keeps its packet sockets.
#[test]
fn packet_sockets_are_refused_to_isolated_workloads_no_interface_backstops() {
    if !privileged() {
        return;
    }
    let bed = Testbed::new(&["bridged", "audited", "free", "peer"]).expect("creating the test bed");
    let host_cgroup = bed.make_cgroup("host-daemon").expect("a host cgroup");
    let host_cgroup_path = format!(
        "/{}",
        host_cgroup
            .strip_prefix(stagewall::datapath::host::cgroup2_mount().expect("cgroup2"))
            .expect("below cgroup2")
            .display()
    );
    let mut p = String::new();
    for name in ["bridged", "audited", "free"] {
        p += &bed.workload_yaml(name, "app", &format!("{{app: {name}}}"), false);
    }
    p += &format!(
        "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: host-daemon, namespace: node, labels: {{app: host-daemon}}}}\nspec:\n  cgroup: {host_cgroup_path}\n  addresses: [\"{}\"]\n---\n",
        stagewall_tests::HUB_GATEWAY
    );
    for (name, namespace, audit) in [
        ("bridged", "app", false),
        ("audited", "app", true),
        ("host-daemon", "node", false),
    ] {
        let annotations = if audit {
            "\n  annotations: {stagewall.io/mode: audit}"
        } else {
            ""
        };
        p += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}{annotations}\nspec:\n  podSelector: {{matchLabels: {{app: {name}}}}}\n  policyTypes: [Egress]\n"
        );
    }
    bed.write_policy("policy.yaml", &p).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    // The kernel is asked first, by itself: does it load LSM programs, and is bpf among
    // its active LSMs? Where it does not, the agent must say its guard is off (and it
    // goes on enforcing everything else: the other tests here).
    let guard = stagewall_tests::metric_sum(&agent.metrics(), "stagewall_packet_socket_guard", &[]);
    let bpf_lsm_active =
        stagewall_tests::lsm::bpf_lsm_active().expect("reading the kernel's active LSMs");
    match stagewall_tests::lsm::kernel_loads_lsm_programs() {
        Ok(()) if bpf_lsm_active => assert_eq!(
            guard,
            1.0,
            "the kernel loads and runs LSM programs: the guard must be on\n{}",
            agent.log()
        ),
        refused => {
            assert_eq!(
                guard, 0.0,
                "no BPF LSM here, yet the agent reports its guard on"
            );
            assert!(
                agent.log().contains("packet-socket guard off"),
                "the agent does not say that its guard is off:\n{}",
                agent.log()
            );
            eprintln!(
                "NOT RUN on this kernel: packet sockets refused through BPF LSM (the kernel: {:?}, bpf among the active LSMs: {bpf_lsm_active}); checked instead: the agent says its guard is off",
                refused.err()
            );
            return;
        }
    }

    let peer = bed.node("peer");
    let peer_if = peer.host_if.clone();
    let frame = |from: &str, src: Ipv4Addr, marker: u16| {
        let packet = ipv4(
            src,
            v4(peer.v4),
            PROTO_UDP,
            marker,
            &[],
            0,
            &udp(40000, 53, b"x"),
        );
        // The host process sends from no interface of a node: a locally administered MAC.
        let src_mac = if from == "host-daemon" {
            [0x02, 0, 0, 0, 0, 0x01]
        } else {
            bed.mac(from)
        };
        let frame = ethernet(bed.mac("peer"), src_mac, &packet);
        (raw::marker(&frame).expect("a marker"), hex(&frame))
    };
    let hub4 = stagewall_tests::HUB_GATEWAY.parse().expect("an address");
    // (what, sender, marker and frame, delivered, the probe's first word)
    let send_host = |frame: &str| {
        let out = bed
            .hub_command_in(&host_cgroup, stagewall_tests::probe_bin())
            .expect("a process in the host cgroup")
            .args(["raw-send", &peer_if, frame, frame, frame])
            .output()
            .expect("running the probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let send_pod = |from: &str, frame: &str| {
        bed.probe_output(from, &["raw-send", "eth0", frame, frame, frame])
    };
    let cases = [
        (
            "isolated, bridged pod (no backstop)",
            "bridged",
            frame("bridged", v4(bed.node("bridged").v4), 3001),
            0,
            "eperm",
        ),
        (
            "isolated, host process in the node's network",
            "host-daemon",
            frame("host-daemon", hub4, 3002),
            0,
            "eperm",
        ),
        (
            "isolated in audit mode",
            "audited",
            frame("audited", v4(bed.node("audited").v4), 3003),
            3,
            "ok",
        ),
        (
            "not isolated",
            "free",
            frame("free", v4(bed.node("free").v4), 3004),
            3,
            "ok",
        ),
    ];
    let markers: Vec<u32> = cases.iter().map(|c| c.2.0).collect();
    let said = std::sync::Mutex::new(Vec::new());
    let counts = bed.frames_delivered("peer", &markers, 2500, || {
        for (_, from, (_, frame), _, _) in &cases {
            let out = if *from == "host-daemon" {
                send_host(frame)
            } else {
                send_pod(from, frame)
            };
            said.lock().unwrap().push(out);
        }
    });
    let said = said.into_inner().unwrap();
    let mut wrong = Vec::new();
    for ((what, from, _, delivered, word), (n, out)) in cases.iter().zip(counts.iter().zip(&said)) {
        eprintln!("{what:<50} {n} of 3 delivered; the probe said {out:?}");
        if n != delivered || !out.starts_with(word) {
            wrong.push(format!(
                "{what} (from {from}): {n} of 3 delivered, probe said {out:?}; expected {delivered} and {word}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "packet sockets with the wrong verdict:\n{}",
        wrong.join("\n")
    );

    // Quarantine takes a workload's packet sockets away too.
    let (ok, out) = bed.control(&["quarantine", "app/free"]);
    assert!(ok, "quarantine app/free: {out}");
    let (_, free_frame) = frame("free", v4(bed.node("free").v4), 3005);
    let out = send_pod("free", &free_frame);
    assert!(
        out.starts_with("eperm"),
        "quarantined workload's packet socket: {out}"
    );

    // Each refusal is reported: the hook, the reason, the workload.
    let reported = |events: &[serde_json::Value], workload: &str, reason: &str, verdict: &str| {
        events.iter().any(|e| {
            e["hook"] == "socket_create"
                && e["workload"] == workload
                && e["reason"] == reason
                && e["verdict"] == verdict
        })
    };
    let expected = [
        ("app/bridged", "packet-socket", "dropped"),
        ("node/host-daemon", "packet-socket", "dropped"),
        ("app/audited", "packet-socket", "would-drop"),
        ("app/free", "quarantine", "dropped"),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let all =
        |events: &[serde_json::Value]| expected.iter().all(|(w, r, v)| reported(events, w, r, v));
    while !all(&agent.events()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = agent.events();
    for (w, r, v) in expected {
        assert!(
            reported(&events, w, r, v),
            "no {v} {r} event for {w}: {events:#?}"
        );
    }
}
