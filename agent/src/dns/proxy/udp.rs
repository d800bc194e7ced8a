//! DNS over UDP: each query forwarded from a fresh socket (a random source port, so a
//! spoofed reply must guess it and the ID), its reply checked, learnt from, and sent back
//! from the listening socket.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

use super::{Protocol, Query, Reply, Shared, stats::inc, stopped};
use crate::dns::wire;

/// The largest UDP payload.
const UDP_MAX: usize = 65_535;

pub(super) async fn serve(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    slots: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; UDP_MAX];
    let per_client: PerClient = Arc::new(std::sync::Mutex::new(HashMap::new()));
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; nothing to do but
                // go on (briefly pausing, so a persistent error cannot spin).
                log::debug!("DNS proxy: receiving on the socket for {upstream}: {e}");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let received = Instant::now();
        inc(&shared.stats.queries_udp);
        if n < wire::HEADER_LEN {
            inc(&shared.stats.dropped_malformed);
            continue;
        }
        let Some(client_slot) = ClientSlot::take(
            &per_client,
            client.ip(),
            shared.config.udp_in_flight_per_client,
        ) else {
            inc(&shared.stats.dropped_in_flight);
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            inc(&shared.stats.dropped_in_flight);
            continue;
        };
        let query = buf[..n].to_vec();
        let (shared, socket, stop) = (shared.clone(), socket.clone(), stop.clone());
        tokio::spawn(async move {
            let _client_slot = client_slot;
            tokio::select! {
                () = one_query(&shared, &socket, upstream, client, query, received, permit) => {}
                () = stopped(stop) => {}
            }
        });
    }
}

/// Queries in flight per client address.
type PerClient = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One query's place among its client's in flight, given back when dropped.
struct ClientSlot {
    per_client: PerClient,
    client: IpAddr,
}

impl ClientSlot {
    fn take(per_client: &PerClient, client: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut counts = per_client.lock().expect("per-client lock");
        let count = counts.entry(client).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            per_client: per_client.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.per_client.lock().expect("per-client lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

async fn one_query(
    shared: &Shared,
    socket: &UdpSocket,
    upstream: SocketAddr,
    client: SocketAddr,
    query: Vec<u8>,
    received: Instant,
    _permit: OwnedSemaphorePermit,
) {
    let endpoint = shared.clients.endpoint_of(Protocol::Udp, client);
    if endpoint.is_none() {
        inc(&shared.stats.unknown_clients);
    }
    let parsed = Query::new(&query);
    let asked = Instant::now();
    let Some((mut raw, reply)) = exchange(shared, upstream, &query, &parsed).await else {
        return;
    };
    let upstream_time = asked.elapsed();
    // Before the reply goes out, the kernel has what it teaches.
    shared.on_answer(endpoint, &reply, &mut raw);
    shared.record_latency(received, upstream_time);
    match socket.send_to(&raw, client).await {
        Ok(_) => inc(&shared.stats.answers),
        Err(e) => log::debug!("DNS proxy: replying to {client}: {e}"),
    }
}

/// Sends `query` to `upstream` and waits for the first reply with its ID and question
/// (others are counted and dropped); None (counted) on a timeout or a socket error.
async fn exchange(
    shared: &Shared,
    upstream: SocketAddr,
    query: &[u8],
    parsed: &Query,
) -> Option<(Vec<u8>, Reply)> {
    let any = match upstream {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let deadline = tokio::time::Instant::now() + shared.config.upstream_timeout;
    let attempt = async {
        // Connected: the kernel passes on only datagrams from the resolver's address.
        let sock = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        sock.connect(upstream).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; UDP_MAX];
        loop {
            let n = sock.recv(&mut buf).await?;
            match shared.check(parsed, &buf[..n]) {
                Reply::NotOurs => inc(&shared.stats.mismatched_replies),
                reply => {
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>((buf, reply));
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(e)) => {
            inc(&shared.stats.upstream_errors);
            log::debug!("DNS proxy: resolver {upstream}: {e}");
            None
        }
        Err(_) => {
            inc(&shared.stats.upstream_timeouts);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One client's queries in flight are bounded on their own; another's are not
    /// touched, and a finished query gives its place back.
    #[test]
    fn a_client_has_its_own_bound_of_queries_in_flight() {
        let per_client: PerClient = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let mut held: Vec<ClientSlot> = (0..3)
            .map(|_| ClientSlot::take(&per_client, a, 3).expect("within the bound"))
            .collect();
        assert!(ClientSlot::take(&per_client, a, 3).is_none(), "a's fourth");
        assert!(ClientSlot::take(&per_client, b, 3).is_some(), "b is not a");
        held.pop();
        assert!(
            ClientSlot::take(&per_client, a, 3).is_some(),
            "a place given back"
        );
        drop(held);
        assert!(per_client.lock().unwrap().is_empty(), "nothing left behind");
    }
}
