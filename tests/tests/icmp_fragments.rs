//! What belongs to an allowed flow passes where the kernel programs see the interface
//! (TC): the ICMP errors about it (an IPv4 "fragmentation needed", an IPv6 "packet too
//! big": without them path MTU discovery black-holes the flow) and the later fragments of
//! its datagrams (which carry no ports). Errors about no tracked flow, and fragments whose
//! first fragment did not pass, are still denied. And a workload enforced by cgroup with
//! TC as its backstop keeps its allowed traffic and loses what its policy denies.
//!
//! Hand-made packets through AF_PACKET sockets, counted on the receiver's interface.

use stagewall_tests::{
    Testbed, privileged,
    raw::{self, PROTO_ICMPV6, PROTO_UDP, ethernet, hex, ipv4, ipv6, ipv6_fragment, udp, v4, v6},
};

const PROTO_ICMP: u8 = 1;
const COPIES: usize = 3;

/// An ICMP "fragmentation needed" (type 3, code 4, next-hop MTU 1400) about `about`.
fn frag_needed(about: &[u8]) -> Vec<u8> {
    let mut m = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    m.extend_from_slice(&about[..28]);
    m
}

/// An ICMPv6 "packet too big" (type 2, MTU 1280) about `about`.
fn packet_too_big(about: &[u8]) -> Vec<u8> {
    let mut m = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    m.extend_from_slice(about);
    m
}

/// Sends the IP packets from `from` to `to` (each COPIES times) while `receiver` counts
/// what arrives per marker; returns (what, delivered, expected) of each case that is
/// wrong.
fn deliveries(
    bed: &Testbed,
    from: &str,
    to: &str,
    cases: &[(&'static str, Vec<Vec<u8>>, usize)],
) -> Vec<String> {
    let marker = |packet: &[u8]| raw::marker(&ethernet([0; 6], [0; 6], packet)).expect("a marker");
    let markers: Vec<u32> = cases.iter().map(|(_, p, _)| marker(&p[0])).collect();
    let counts = bed.frames_delivered(to, &markers, 2500, || {
        for (what, packets, _) in cases {
            let frames: Vec<String> = packets
                .iter()
                .flat_map(|p| vec![hex(&ethernet(bed.mac(to), bed.mac(from), p)); COPIES])
                .collect();
            let mut args = vec!["raw-send", "eth0"];
            args.extend(frames.iter().map(String::as_str));
            let said = bed.probe_output(from, &args);
            assert!(said.starts_with("ok"), "{what}: {said}");
        }
    });
    let mut wrong = Vec::new();
    for ((what, _, expected), n) in cases.iter().zip(counts) {
        let expected = expected * COPIES;
        eprintln!("{what:<72} {n} of {expected} expected delivered");
        if n != expected {
            wrong.push(format!("{what}: {n} delivered, expected {expected}"));
        }
    }
    wrong
}

#[test]
fn icmp_errors_and_fragments_of_allowed_flows_pass_and_nothing_else() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["tc", "bs", "peer"]).expect("creating the test bed");
    let peer = bed.node("peer");
    let (peer4, peer6) = (v4(peer.v4), v6(peer.v6));
    // Both may send UDP 53 and TCP 80 to the peer only, and receive nothing but replies.
    let mut p = bed.workload_yaml("tc", "app", "{app: tc}", true);
    p += &bed.backstopped_workload_yaml("bs", "app", "{app: bs}");
    for name in ["tc", "bs"] {
        p += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: {name}}}}}\n  policyTypes: [Ingress, Egress]\n  egress:\n    - to: [{{ipBlock: {{cidr: {peer4}/32}}}}, {{ipBlock: {{cidr: {peer6}/128}}}}]\n      ports: [{{port: 53, protocol: UDP}}, {{port: 80, protocol: TCP}}]\n"
        );
    }
    bed.write_policy("policy.yaml", &p).unwrap();
    let _agent = bed.start_agent(&[]).expect("starting the agent");
    let mut wrong = Vec::new();

    for from in ["tc", "bs"] {
        let (me4, me6) = (v4(bed.node(from).v4), v6(bed.node(from).v6));
        let base: u16 = if from == "tc" { 3000 } else { 3100 };
        let udp4 = |id: u16, sport: u16, dport: u16| {
            ipv4(
                me4,
                peer4,
                PROTO_UDP,
                id,
                &[],
                0,
                &udp(sport, dport, b"stagewall"),
            )
        };
        let udp6 = |label: u32, sport: u16, dport: u16| {
            ipv6(
                me6,
                peer6,
                PROTO_UDP,
                label,
                &udp(sport, dport, b"stagewall"),
            )
        };
        // Outward: an allowed datagram (which the errors below are about), fragments.
        let fragment4 = |id: u16, offset_and_flags: u16, payload: &[u8]| {
            ipv4(me4, peer4, PROTO_UDP, id, &[], offset_and_flags, payload)
        };
        let first_half = udp(40000, 53, &[7; 16]);
        let denied_half = udp(40000, 54, &[7; 16]);
        let outward = vec![
            (
                "allowed UDP 53 (the flow the errors are about)",
                vec![
                    udp4(base + 1, 40000, 53),
                    udp6(u32::from(base) + 1, 40000, 53),
                ],
                2,
            ),
            (
                "a datagram to an allowed port in two fragments: both",
                vec![
                    fragment4(base + 2, 0x2000, &first_half),
                    fragment4(base + 2, 3, &[8; 16]),
                ],
                2,
            ),
            (
                "a later fragment whose first was never sent",
                vec![fragment4(base + 3, 3, &[8; 16])],
                0,
            ),
            (
                "a datagram to a denied port in two fragments: neither",
                vec![
                    fragment4(base + 4, 0x2000, &denied_half),
                    fragment4(base + 4, 3, &[8; 16]),
                ],
                0,
            ),
            (
                "an IPv6 datagram to an allowed port in two fragments: both",
                vec![
                    ipv6(
                        me6,
                        peer6,
                        raw::IPV6_FRAGMENT,
                        u32::from(base) + 5,
                        &ipv6_fragment(PROTO_UDP, 0, true, 77, &first_half),
                    ),
                    ipv6(
                        me6,
                        peer6,
                        raw::IPV6_FRAGMENT,
                        u32::from(base) + 5,
                        &ipv6_fragment(PROTO_UDP, 3, false, 77, &[8; 16]),
                    ),
                ],
                2,
            ),
        ];
        wrong.extend(deliveries(&bed, from, "peer", &outward));

        // Inward: errors about that flow pass; errors about no tracked flow do not.
        let inward = vec![
            (
                "ICMP fragmentation needed about the allowed flow",
                vec![ipv4(
                    peer4,
                    me4,
                    PROTO_ICMP,
                    base + 11,
                    &[],
                    0,
                    &frag_needed(&udp4(1, 40000, 53)),
                )],
                1,
            ),
            (
                "ICMP fragmentation needed about no tracked flow",
                vec![ipv4(
                    peer4,
                    me4,
                    PROTO_ICMP,
                    base + 12,
                    &[],
                    0,
                    &frag_needed(&udp4(1, 40001, 53)),
                )],
                0,
            ),
            (
                "ICMPv6 packet too big about the allowed flow",
                vec![ipv6(
                    peer6,
                    me6,
                    PROTO_ICMPV6,
                    u32::from(base) + 13,
                    &packet_too_big(&udp6(1, 40000, 53)),
                )],
                1,
            ),
            (
                "ICMPv6 packet too big about no tracked flow",
                vec![ipv6(
                    peer6,
                    me6,
                    PROTO_ICMPV6,
                    u32::from(base) + 14,
                    &packet_too_big(&udp6(1, 40002, 53)),
                )],
                0,
            ),
        ];
        wrong.extend(deliveries(&bed, "peer", from, &inward));
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));

    // The backstopped workload's sockets: what its policy allows still works through
    // both hooks, what it denies is still refused at connect.
    bed.serve("peer", &[80], &[53]).unwrap();
    let peer_addr = bed.node("peer").v4;
    assert!(bed.tcp("bs", peer_addr, 80).is("ok"), "allowed TCP");
    assert!(bed.udp("bs", peer_addr, 53, 3).is("ok"), "allowed UDP");
    assert!(bed.tcp("bs", peer_addr, 81).is("eperm"), "denied TCP");
}
