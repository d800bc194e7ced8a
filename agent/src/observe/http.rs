//! The read-only HTTP endpoint: /metrics, /healthz, /readyz and /v1/events (what each
//! answers: `routes.rs`). HTTP/1.1 by hyper, with keep-alive, within bounds a client
//! cannot move: connections at once, time to send a request's header (and to send the
//! next one on a kept-alive connection), time a reader may leave a response unread.
//! Changes that act (quarantine, reload) never go through it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

pub use super::routes::State;
use super::{routes, write_timeout::WriteTimeout};

/// 127.0.0.1:9742: loopback, and a port no common exporter uses (not Prometheus's 9090,
/// node_exporter's 9100 or Cilium's 9962-9965).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9742";

/// Connections served at once; one more is closed as soon as it is accepted, so that
/// its descriptor is freed at once. Far below the usual 1,024 open files, so the agent's
/// own files, maps and watches always find descriptors.
pub const MAX_CONNECTIONS: usize = 512;
/// Time to send a request's whole header; hyper also starts it while a kept-alive
/// connection waits for its next request, so it is the idle timeout too. Longer than a
/// 1 s scrape interval, so a scraper's connection is kept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A reader (above all a follower of /v1/events) that takes nothing for this long is
/// dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers larger than this are refused (hyper's smallest allowed buffer).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Back-off after a failed accept (EMFILE, ENFILE, ENOBUFS): time for descriptors or
/// memory to be freed, growing while the failures go on.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// The endpoint's address could not be bound (in use, or not this host's).
#[derive(Debug, thiserror::Error)]
#[error("binding the metrics endpoint to {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves forever. A failed accept is logged and retried after a back-off: running out
/// of descriptors must not stop the endpoint, let alone the agent.
pub async fn serve(listener: TcpListener, state: Arc<State>) -> std::convert::Infallible {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let followers = Arc::new(Semaphore::new(routes::MAX_FOLLOWERS));
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            Err(e) => {
                log::warn!(
                    "metrics endpoint: accepting a connection: {e}; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            log::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open; closing {peer}'s");
            continue;
        };
        let state = state.clone();
        let followers = followers.clone();
        let service = service_fn(move |req| {
            let answer = routes::answer(&state, &followers, peer.ip(), &req);
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
        let io = TokioIo::new(WriteTimeout::new(stream, WRITE_TIMEOUT));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_buf_size(MAX_REQUEST_BYTES)
            .serve_connection(io, service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("metrics endpoint: connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}
