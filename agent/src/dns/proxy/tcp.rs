//! DNS over TCP (RFC 7766): messages with a 2-byte length, several per connection (taken
//! one at a time), each forwarded over the proxy's own connection to the resolver, which
//! is kept for the next one.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::timeout,
};

use super::{Protocol, Query, Reply, Shared, stats::inc, stopped};
use crate::dns::wire;

pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    upstream: SocketAddr,
    slots: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                log::debug!("DNS proxy: accepting for {upstream}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            inc(&shared.stats.tcp_refused);
            continue; // dropping the stream closes it
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = connection(&shared, stream, client, upstream) => {}
                () = stopped(stop) => {}
            }
            drop(permit);
        });
    }
}

/// Reads one length-prefixed message, waiting at most `wait`; None at the end of the
/// stream, on an error, an empty message or a timeout.
async fn read_message(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut msg = vec![0u8; wire::tcp_length(prefix)];
        stream.read_exact(&mut msg).await?;
        Ok::<_, io::Error>(msg)
    };
    timeout(wait, read).await.ok()?.ok()
}

async fn write_message(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let prefix = wire::tcp_prefix(msg).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&prefix);
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

async fn connection(
    shared: &Shared,
    mut stream: TcpStream,
    client: SocketAddr,
    upstream: SocketAddr,
) {
    let endpoint = shared.clients.endpoint_of(Protocol::Tcp, client);
    if endpoint.is_none() {
        inc(&shared.stats.unknown_clients);
    }
    let idle = shared.config.tcp_idle_timeout;
    let mut resolver: Option<TcpStream> = None;
    while let Some(query) = read_message(&mut stream, idle).await {
        let received = Instant::now();
        inc(&shared.stats.queries_tcp);
        if query.len() < wire::HEADER_LEN {
            inc(&shared.stats.dropped_malformed);
            return;
        }
        let parsed = Query::new(&query);
        let asked = Instant::now();
        let Some(mut raw) = exchange(shared, &mut resolver, upstream, &query).await else {
            return; // closing tells the workload to retry
        };
        let upstream_time = asked.elapsed();
        let reply = shared.check(&parsed, &raw);
        if let Reply::NotOurs = reply {
            // Over a connection of our own, a wrong reply means a confused resolver.
            inc(&shared.stats.mismatched_replies);
            return;
        }
        // Before the reply goes out, the kernel has what it teaches.
        shared.on_answer(endpoint, &reply, &mut raw);
        shared.record_latency(received, upstream_time);
        match timeout(idle, write_message(&mut stream, &raw)).await {
            Ok(Ok(())) => inc(&shared.stats.answers),
            _ => return,
        }
    }
}

/// Sends `query` over the connection to the resolver (made, or made again once if the
/// kept one failed) and reads its reply; None (counted) on a timeout or an error.
async fn exchange(
    shared: &Shared,
    resolver: &mut Option<TcpStream>,
    upstream: SocketAddr,
    query: &[u8],
) -> Option<Vec<u8>> {
    let attempt = async {
        let mut last = None;
        for _ in 0..2 {
            let reused = resolver.is_some();
            let conn = match resolver {
                Some(conn) => conn,
                None => resolver.insert(TcpStream::connect(upstream).await?),
            };
            let result = async {
                write_message(conn, query).await?;
                let mut prefix = [0u8; 2];
                conn.read_exact(&mut prefix).await?;
                let mut reply = vec![0u8; wire::tcp_length(prefix)];
                conn.read_exact(&mut reply).await?;
                Ok::<_, io::Error>(reply)
            }
            .await;
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    *resolver = None;
                    if !reused {
                        return Err(e);
                    }
                    // The resolver may have closed a kept connection: once more, afresh.
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt")))
    };
    match timeout(shared.config.upstream_timeout, attempt).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(e)) => {
            inc(&shared.stats.upstream_errors);
            log::debug!("DNS proxy: resolver {upstream} over TCP: {e}");
            None
        }
        Err(_) => {
            inc(&shared.stats.upstream_timeouts);
            None
        }
    }
}
