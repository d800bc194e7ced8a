//! The flow table is shared, its share per workload is not: one workload opening flows as
//! fast as it can (here 600,000 new UDP flows from an AF_PACKET socket, more than the
//! table's 262,144 entries) must not push another workload's flow out of it, or that
//! workload's replies would be denied (and, with auto-quarantine, count against it).

use stagewall_tests::{
    Testbed, metric_sum, privileged,
    raw::{PROTO_UDP, ethernet, hex, ipv4, udp, v4},
};

const FLOOD: u32 = 600_000;

#[test]
fn one_workload_flooding_new_flows_does_not_evict_anothers() {
    if !privileged() {
        return;
    }
    let bed =
        Testbed::new(&["victim", "attacker", "server", "sink"]).expect("creating the test bed");
    let (server, sink) = (v4(bed.node("server").v4), v4(bed.node("sink").v4));
    let (victim, attacker) = (v4(bed.node("victim").v4), v4(bed.node("attacker").v4));
    // The victim may only send UDP 5353 to the server and receive its replies; the
    // attacker may send any UDP to the sink.
    let mut p = bed.workload_yaml("victim", "app", "{app: victim}", true);
    p += &bed.workload_yaml("attacker", "app", "{app: attacker}", true);
    p += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: victim, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: victim}}}}\n  policyTypes: [Ingress, Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {server}/32}}}}], ports: [{{port: 5353, protocol: UDP}}]}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: attacker, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: attacker}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {sink}/32}}}}], ports: [{{protocol: UDP}}]}}]\n"
    );
    bed.write_policy("policy.yaml", &p).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");

    let frame =
        |from: &str, to: &str, packet: Vec<u8>| hex(&ethernet(bed.mac(to), bed.mac(from), &packet));
    // The victim's flows: UDP 40000 and 40001 -> server:5353. The server answers the
    // second at once (replies pass); the first stays idle until after the flood, as a
    // quiet long-lived flow would.
    let reply = |port: u16, marker: u16| {
        let reply = frame(
            "server",
            "victim",
            ipv4(
                server,
                victim,
                PROTO_UDP,
                marker,
                &[],
                0,
                &udp(5353, port, b"a"),
            ),
        );
        let counts = bed.frames_delivered("victim", &[u32::from(marker)], 1500, || {
            let said = bed.probe_output("server", &["raw-send", "eth0", &reply, &reply, &reply]);
            assert!(said.starts_with("ok"), "{said}");
        });
        counts[0]
    };
    for port in [40000, 40001] {
        let request = frame(
            "victim",
            "server",
            ipv4(victim, server, PROTO_UDP, 1, &[], 0, &udp(port, 5353, b"q")),
        );
        let said = bed.probe_output("victim", &["raw-send", "eth0", &request]);
        assert!(said.starts_with("ok"), "{said}");
    }
    assert_eq!(
        reply(40001, 5001),
        3,
        "the server's replies reach the victim"
    );

    let flood = frame(
        "attacker",
        "sink",
        ipv4(attacker, sink, PROTO_UDP, 2, &[], 0, &udp(1024, 1024, b"f")),
    );
    let said = bed.probe_output(
        "attacker",
        &["raw-flood", "eth0", &flood, &FLOOD.to_string()],
    );
    assert!(said.starts_with("ok"), "{said}");

    assert_eq!(
        reply(40000, 5002),
        3,
        "after {FLOOD} new flows of another workload, the server's replies must still reach the victim"
    );
    let refused = metric_sum(&agent.metrics(), "stagewall_flow_track_failures_total", &[]);
    assert!(
        refused > 0.0,
        "the attacker's flows over its share are counted"
    );
}
