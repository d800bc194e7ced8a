//! The API server's pod watch load per agent, measured two ways:
//!
//! - watches opened here as the agent's watcher opens its pod watch (every pod, JSON, with
//!   bookmarks, from the current resourceVersion), read byte for byte: what one agent is
//!   sent; beside it a watch of this node's pods only (`fieldSelector=spec.nodeName=`),
//!   what a per-node view would be sent, and the same events cut down to what a peer's
//!   identity needs (name, namespace, labels, node, addresses);
//! - the API server's own counters (`apiserver_watch_events_total` and
//!   `apiserver_watch_events_sizes`, for pods, over every pod watcher: the agent, the
//!   controller manager, these watches), before and after.

use std::time::Duration;

use futures_util::AsyncBufReadExt as _;
use kube::Client;
use serde_json::{Value, json};

/// What one watch was sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub events: u64,
    pub bytes: u64,
    /// Of those, events about pods on this node.
    pub this_node_events: u64,
    pub this_node_bytes: u64,
    /// The events cut down to a peer's identity.
    pub slim_bytes: u64,
}

pub struct Watches {
    stop: tokio::sync::watch::Sender<bool>,
    every_pod: tokio::task::JoinHandle<anyhow::Result<Counts>>,
    this_node: tokio::task::JoinHandle<anyhow::Result<Counts>>,
}

/// The two watches' counts.
pub struct Load {
    pub every_pod: Counts,
    pub this_node: Counts,
}

/// A pod watch event cut down to what makes a peer's identity.
fn slim(event: &Value) -> Value {
    let pod = &event["object"];
    json!({
        "type": event["type"],
        "object": {
            "metadata": {
                "name": pod["metadata"]["name"],
                "namespace": pod["metadata"]["namespace"],
                "labels": pod["metadata"]["labels"],
                "resourceVersion": pod["metadata"]["resourceVersion"],
            },
            "spec": {"nodeName": pod["spec"]["nodeName"]},
            "status": {"podIPs": pod["status"]["podIPs"]},
        },
    })
}

/// Reads a watch's events until told to stop.
async fn count(
    client: Client,
    path: String,
    node: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Counts> {
    let request = http::Request::get(path).body(Vec::new())?;
    let mut stream = Box::pin(client.request_stream(request).await?);
    let mut counts = Counts::default();
    let mut line = String::new();
    loop {
        line.clear();
        tokio::select! {
            read = stream.read_line(&mut line) => {
                if read? == 0 {
                    anyhow::bail!("the API server ended the watch");
                }
            }
            _ = stop.changed() => return Ok(counts),
        }
        let event: Value = serde_json::from_str(&line)?;
        if event["type"] == "BOOKMARK" {
            continue;
        }
        let bytes = line.len() as u64;
        counts.events += 1;
        counts.bytes += bytes;
        counts.slim_bytes += serde_json::to_vec(&slim(&event))?.len() as u64 + 1;
        if event["object"]["spec"]["nodeName"] == node.as_str() {
            counts.this_node_events += 1;
            counts.this_node_bytes += bytes;
        }
    }
}

impl Watches {
    /// Opens both watches from the pods' current resourceVersion.
    pub async fn open(client: Client, node: String) -> anyhow::Result<Watches> {
        let list = http::Request::get("/api/v1/pods?limit=1").body(Vec::new())?;
        let list: Value = serde_json::from_str(&client.request_text(list).await?)?;
        let version = list["metadata"]["resourceVersion"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("a pod list without a resourceVersion"))?
            .to_string();
        let every_pod = format!(
            "/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={version}&timeoutSeconds=3600"
        );
        let this_node = format!("{every_pod}&fieldSelector=spec.nodeName%3D{node}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        Ok(Watches {
            every_pod: tokio::spawn(count(
                client.clone(),
                every_pod,
                node.clone(),
                stopped.clone(),
            )),
            this_node: tokio::spawn(count(client, this_node, node, stopped)),
            stop,
        })
    }

    pub async fn close(self) -> anyhow::Result<Load> {
        self.stop.send(true)?;
        Ok(Load {
            every_pod: self.every_pod.await??,
            this_node: self.this_node.await??,
        })
    }
}

/// The API server's pod watch counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiServerWatches {
    pub events: f64,
    pub bytes: f64,
    /// Pod watches open (a gauge: the later reading's).
    pub open: f64,
}

impl ApiServerWatches {
    pub fn since(&self, before: &ApiServerWatches) -> ApiServerWatches {
        ApiServerWatches {
            events: self.events - before.events,
            bytes: self.bytes - before.bytes,
            open: self.open,
        }
    }
}

/// Sums the samples of `name` whose labels include every one of `labels`.
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Reads the API server's /metrics.
pub async fn apiserver_pod_watches(client: Client) -> anyhow::Result<ApiServerWatches> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let metrics = client.request_text(request).await?;
    let pods = r#"resource="pods""#;
    Ok(ApiServerWatches {
        events: sum(&metrics, "apiserver_watch_events_total", &[pods]),
        bytes: sum(&metrics, "apiserver_watch_events_sizes_sum", &[pods]),
        open: sum(
            &metrics,
            "apiserver_longrunning_requests",
            &[pods, r#"verb="WATCH""#, r#"subresource="""#],
        ),
    })
}

impl Load {
    pub fn print(&self, period: Duration, apiserver: &ApiServerWatches) {
        let seconds = period.as_secs_f64();
        let share = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
        let row = |what: &str, events: u64, bytes: u64| {
            println!(
                "| {what} | {events} | {:.1} | {:.0} KiB | {:.1} KiB/s | {:.1}% |",
                events as f64 / seconds,
                bytes as f64 / 1024.0,
                bytes as f64 / 1024.0 / seconds,
                share(bytes, self.every_pod.bytes)
            );
        };
        let all = &self.every_pod;
        println!(
            "\n| Pod watch of one agent during the churn | events | events/s | bytes | bytes/s | of today's bytes |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        row(
            "every pod (what each agent watches today)",
            all.events,
            all.bytes,
        );
        row(
            "of which pods on this node",
            all.this_node_events,
            all.this_node_bytes,
        );
        row(
            "this node's pods only (fieldSelector spec.nodeName)",
            self.this_node.events,
            self.this_node.bytes,
        );
        row(
            "every pod, cut to name, labels, node and addresses",
            all.events,
            all.slim_bytes,
        );
        println!(
            "\nThe API server's own counters over the churn, every pod watch together (the agent's, the controller manager's and the two above; apiserver_longrunning_requests for pod watches: {:.0}): {:.0} events, {:.0} KiB; watchers of every pod implied by the events: {:.1}.",
            apiserver.open,
            apiserver.events,
            apiserver.bytes / 1024.0,
            (apiserver.events - self.this_node.events as f64) / all.events.max(1) as f64
        );
    }
}
