//! The read-only HTTP endpoint: /metrics, /healthz, /readyz and /v1/events. A deliberately
//! small HTTP/1.1 server: GET only, one request per connection, bounded request size and
//! time. Changes that act (quarantine, reload) never go through it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::broadcast::error::RecvError,
};

use crate::{
    events::{filter::Filter, hub::Hub},
    observe::metrics::Metrics,
};

/// 127.0.0.1:9742: loopback, and a port no common exporter uses (not Prometheus's 9090,
/// node_exporter's 9100 or Cilium's 9962-9965).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9742";

const MAX_REQUEST_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct State {
    pub metrics: Arc<Metrics>,
    pub events: Arc<Hub>,
    /// Set once the first policy is in force.
    pub ready: AtomicBool,
}

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

/// Serves until accepting a connection fails.
pub async fn serve(listener: TcpListener, state: Arc<State>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &state).await {
                log::debug!("http connection: {e}");
            }
        });
    }
}

/// Reads the request line of a GET: (path, query).
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, String, String)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some((method, path.to_string(), query.to_string())))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let Ok(request) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await else {
        return Ok(());
    };
    let Some((method, path, query)) = request? else {
        return Ok(());
    };
    let text = "text/plain; charset=utf-8";
    match (method.as_str(), path.as_str()) {
        ("GET", "/metrics") => {
            let body = state.metrics.render();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/healthz") => respond(&mut stream, "200 OK", text, "ok\n").await,
        ("GET", "/readyz") if state.ready.load(Ordering::Relaxed) => {
            respond(&mut stream, "200 OK", text, "ready\n").await
        }
        ("GET", "/readyz") => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                text,
                "no policy applied yet\n",
            )
            .await
        }
        ("GET", "/v1/events") => events(stream, state, &query).await,
        ("GET", _) => respond(&mut stream, "404 Not Found", text, "not found\n").await,
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                text,
                "read-only endpoint: GET only\n",
            )
            .await
        }
    }
}

/// `GET /v1/events?namespace=&workload=&verdict=&follow=true`: newline-delimited JSON,
/// the recent events first; with follow, every new one until the reader goes away.
async fn events(mut stream: TcpStream, state: &State, query: &str) -> std::io::Result<()> {
    let filter = Filter::from_query(query);
    let follow = query
        .split('&')
        .any(|p| p == "follow=true" || p == "follow=1");
    // Subscribe before taking the recent ones, so nothing falls in between.
    let mut live = state.events.follow();
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
    );
    for e in state.events.recent(&filter) {
        head.push_str(&serde_json::to_string(&e).unwrap_or_default());
        head.push('\n');
    }
    stream.write_all(head.as_bytes()).await?;
    if !follow {
        return stream.shutdown().await;
    }
    loop {
        let line = match live.recv().await {
            Ok(e) if filter.matches(&e) => serde_json::to_string(&e).unwrap_or_default(),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => format!(
                "{{\"lagged\":{n},\"note\":\"this reader fell behind; {n} events were skipped\"}}"
            ),
            Err(RecvError::Closed) => return Ok(()),
        };
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(b"\n").await?;
    }
}
