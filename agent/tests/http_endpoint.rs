//! The read-only HTTP endpoint served in-process on 127.0.0.1: what a reader can do to it
//! without root. (Abuse at scale, non-loopback peers and running out of descriptors are
//! in tests/tests/observability.rs, against the real agent.)

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use stagewall::{
    events::{VerdictEvent, hub::Hub},
    observe::{http, metrics::Metrics},
};

fn event(namespace: &str) -> VerdictEvent {
    serde_json::from_value(serde_json::json!({
        "time": "2025-01-01T00:00:00Z", "node": "n", "verdict": "dropped", "reason": "no-rule",
        "direction": "ingress", "protocol": "udp", "src": null, "src_port": null,
        "dst": "10.0.0.1", "dst_port": 81, "namespace": namespace,
        "workload": format!("{namespace}/server"), "stage": null, "peer": "world",
        "policies": [], "hook": "cgroup_skb", "suppressed": 0,
    }))
    .expect("a verdict event")
}

async fn endpoint() -> (SocketAddr, Arc<Hub>) {
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Arc::new(Hub::default());
    let state = Arc::new(http::State {
        metrics: Arc::new(Metrics::new()),
        events: hub.clone(),
        ready: AtomicBool::new(true),
    });
    tokio::spawn(http::serve(listener, state));
    (addr, hub)
}

/// The whole answer to one request sent with `Connection: close`.
fn get(addr: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_a_broken_escape_before_a_multibyte_character_is_answered() {
    let (addr, hub) = endpoint().await;
    hub.publish(&event("caf\u{e9}"));
    let answer = tokio::task::spawn_blocking(move || get(addr, "/v1/events?namespace=%a\u{e9}"))
        .await
        .unwrap();
    // Answered, whatever the answer (a raw non-ASCII target may be refused as a bad
    // request): the connection is not dropped by a panic.
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
    // After it, the endpoint still answers.
    let health = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
        .await
        .unwrap();
    assert!(health.ends_with("ok\n"), "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_is_dropped_and_others_keep_receiving() {
    let (addr, hub) = endpoint().await;
    let follow = |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s
    };
    let mut stalled = follow(addr);
    let mut reader = follow(addr);
    // The diligent reader counts what it gets, on a thread of its own.
    let received = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        reader
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    // Events faster than the stalled follower's socket buffers can take: its writes
    // block. Publishing never waits for it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(25) {
        for _ in 0..500 {
            hub.publish(&event("app"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The agent gave up on the stalled follower: what it buffered ends, then EOF.
    let ended = tokio::task::spawn_blocking(move || {
        stalled
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the stalled follower is still being served: {ended:?}"
    );
    let received = received.await.unwrap();
    assert!(
        received > 1 << 20,
        "the reading follower got only {received} bytes"
    );
}
