//! What the read-only endpoint answers: /metrics, /healthz and /readyz to anyone the
//! address lets in; /v1/events, which names every namespace's workloads and peers, only
//! to peers on this host's loopback (`stagewall events` on the node).

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::stream;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Frame},
    header,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast::error::RecvError};

use crate::{
    events::{VerdictEvent, filter::Filter, hub::Hub},
    observe::metrics::Metrics,
};

/// Followers served at once: each holds a connection for as long as its reader stays, so
/// they get a share of the connection limit of their own, never all of it.
pub const MAX_FOLLOWERS: usize = 64;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub struct State {
    pub metrics: Arc<Metrics>,
    pub events: Arc<Hub>,
    /// Set once the first policy is in force.
    pub ready: AtomicBool,
}

/// Whether `peer` may read the event stream: an address of this host's loopback. An
/// IPv4 peer of a socket bound to [::] arrives as ::ffff:127.x.y.z, hence the canonical
/// form.
pub fn may_read_events(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to `req` from `peer`; a follower of the event stream takes one of
/// `followers`' permits for as long as it stays.
pub fn answer<B>(
    state: &State,
    followers: &Arc<Semaphore>,
    peer: IpAddr,
    req: &Request<B>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only endpoint: GET only\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r =
                Response::new(Full::new(Bytes::from(state.metrics.render())).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "no policy applied yet\n"),
        "/v1/events" if !may_read_events(peer) => text(
            StatusCode::FORBIDDEN,
            "the event stream is served to this host's loopback only: run `stagewall events` on the node (kubectl exec into the agent's pod)\n",
        ),
        "/v1/events" => events(state, followers, req.uri().query().unwrap_or_default()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json_line(e: &VerdictEvent) -> String {
    let mut line = serde_json::to_string(e).unwrap_or_default();
    line.push('\n');
    line
}

/// `GET /v1/events?namespace=&workload=&verdict=&follow=true`: newline-delimited JSON,
/// the recent events first; with follow, every new one until the reader goes away.
fn events(state: &State, followers: &Arc<Semaphore>, query: &str) -> Response<Body> {
    let filter = Filter::from_query(query);
    let follow = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "follow" && (v == "true" || v == "1"));
    let permit = match follow {
        false => None,
        true => match followers.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many readers are following the event stream; try again later\n",
                );
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                return r;
            }
        },
    };
    // Subscribe before taking the recent ones, so nothing falls in between.
    let live = state.events.follow();
    let recent: String = state.events.recent(&filter).iter().map(json_line).collect();
    let body = match permit {
        None => Full::new(Bytes::from(recent)).boxed_unsync(),
        Some(permit) => {
            let first = stream::iter([Ok(Frame::data(Bytes::from(recent)))]);
            let rest = stream::unfold((live, filter, permit), next_line);
            StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed_unsync()
        }
    };
    let mut r = Response::new(body);
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

type Following = (
    tokio::sync::broadcast::Receiver<VerdictEvent>,
    Filter,
    OwnedSemaphorePermit,
);

/// The next line for a follower. The hub's broadcast is bounded and never waits for a
/// reader: one that falls behind skips the oldest events and is told how many.
async fn next_line(
    (mut live, filter, permit): Following,
) -> Option<(Result<Frame<Bytes>, Infallible>, Following)> {
    let line = loop {
        match live.recv().await {
            Ok(e) if filter.matches(&e) => break json_line(&e),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => {
                break format!(
                    "{{\"lagged\":{n},\"note\":\"this reader fell behind; {n} events were skipped\"}}\n"
                );
            }
            Err(RecvError::Closed) => return None,
        }
    };
    Some((Ok(Frame::data(Bytes::from(line))), (live, filter, permit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_may_read_the_event_stream() {
        for peer in ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"] {
            assert!(may_read_events(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.0.0.7",
            "198.18.0.1",
            "::ffff:10.0.0.7",
            "fd00::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!may_read_events(peer.parse().unwrap()), "{peer}");
        }
    }
}
