//! New UDP flows from workloads attached by interface (TC sees every frame, no socket
//! needed at the receiver): each sends `raw-flood` frames, every one a flow of its own.

use std::time::{Duration, Instant};

use stagewall_tests::{
    Testbed, probe_bin,
    raw::{PROTO_UDP, ethernet, hex, ipv4, udp, v4},
};

/// Sends `flows` new flows from each of `senders` to `to`, all senders at once; gives
/// how long the slowest took.
pub fn flows(bed: &Testbed, senders: &[String], to: &str, flows: u32) -> Duration {
    let started = Instant::now();
    let children: Vec<_> = senders
        .iter()
        .map(|from| {
            let packet = ipv4(
                v4(bed.node(from).v4),
                v4(bed.node(to).v4),
                PROTO_UDP,
                1,
                &[],
                0,
                &udp(1024, 1024, b"f"),
            );
            let frame = hex(&ethernet(bed.mac(to), bed.mac(from), &packet));
            bed.command(from, probe_bin())
                .unwrap()
                .args(["raw-flood", "eth0", &frame, &flows.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("starting a flood")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("a flood");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("ok"), "raw-flood: {said}");
    }
    started.elapsed()
}
