//! A stand-in for kube-apiserver that speaks its list and watch protocol over HTTP with
//! API JSON: lists with resourceVersion, limit and continue; watches from a
//! resourceVersion (`?watch=true`) as a chunked stream of events with BOOKMARKs;
//! `410 Gone` (an ERROR event with an Expired Status) for a resourceVersion older than the
//! last compaction, after which a client must list again. Nothing else (no auth, no
//! writes over HTTP): the test changes objects through its methods, as other clients of
//! a real API server would.
//!
//! It listens on 127.0.0.1 inside a network namespace (the test bed's hub, where the
//! agent runs).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

/// The resources served: path prefix, plural, apiVersion, kind.
const RESOURCES: [(&str, &str, &str, &str); 5] = [
    ("/api/v1", "pods", "v1", "Pod"),
    ("/api/v1", "namespaces", "v1", "Namespace"),
    (
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicy",
    ),
    (
        "/apis/stagewall.io/v1alpha1",
        "pipelines",
        "stagewall.io/v1alpha1",
        "Pipeline",
    ),
    (
        "/apis/stagewall.io/v1alpha1",
        "workloads",
        "stagewall.io/v1alpha1",
        "Workload",
    ),
];

/// How often an idle watch gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Store {
    /// The last resourceVersion handed out.
    version: u64,
    /// Watches from a resourceVersion before this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch (as an API server restart or a load balancer does).
    epoch: u64,
    /// Objects by plural, then (namespace, name).
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// Every change: (resourceVersion, plural, type, object).
    log: Vec<(u64, String, String, Value)>,
    /// Requests served, for the test to see the protocol was used.
    lists: u64,
    watches: u64,
    gone: u64,
    bookmarks: u64,
}

pub struct ApiServer {
    store: Arc<(Mutex<Store>, Condvar)>,
    pub port: u16,
}

/// Resources answered with 404, as when a CustomResourceDefinition is not installed.
type Missing = Arc<Vec<&'static str>>;

/// Counts of what the server did.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub lists: u64,
    pub watches: u64,
    pub gone: u64,
    pub bookmarks: u64,
}

impl ApiServer {
    /// Starts serving on 127.0.0.1 (an ephemeral port) in network namespace `netns`; the
    /// resources in `missing` (plurals) are not served.
    pub fn start(netns: &str, missing: &[&'static str]) -> anyhow::Result<ApiServer> {
        let missing: Missing = Arc::new(missing.to_vec());
        let store = Arc::new((Mutex::new(Store::default()), Condvar::new()));
        let ns = fs::File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("netns {netns}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            // setns moves only this thread; the socket it creates stays in that namespace.
            // SAFETY: plain syscall on an open namespace fd.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
            let listener = entered
                .then(|| TcpListener::bind("127.0.0.1:0").ok())
                .flatten();
            let Some(listener) = listener else {
                let _ = tx.send(None);
                return;
            };
            let _ = tx.send(listener.local_addr().ok().map(|a| a.port()));
            for conn in listener.incoming().flatten() {
                let (s, missing) = (s.clone(), missing.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &s, &missing);
                });
            }
        });
        let port = rx
            .recv()?
            .context("binding the API server in the test namespace")?;
        Ok(ApiServer { store, port })
    }

    /// A kubeconfig that points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
            self.port
        )
    }

    /// Creates or replaces an object (`plural` as in the URL), as `kubectl apply` would:
    /// the server sets uid, creationTimestamp (when new) and a new resourceVersion.
    pub fn apply(&self, plural: &str, mut object: Value) {
        let (lock, cv) = &*self.store;
        let mut store = lock.lock().unwrap();
        store.version += 1;
        let version = store.version;
        let key = object_key(&object);
        let objects = store.objects.entry(plural.to_string()).or_default();
        let previous = objects.get(&key).cloned();
        let meta = &mut object["metadata"];
        match &previous {
            Some(p) => {
                meta["uid"] = p["metadata"]["uid"].clone();
                meta["creationTimestamp"] = p["metadata"]["creationTimestamp"].clone();
            }
            None => {
                if meta["uid"].is_null() {
                    meta["uid"] = uid(version).into();
                }
                if meta["creationTimestamp"].is_null() {
                    meta["creationTimestamp"] =
                        format!("2026-11-24T00:00:{:02}Z", version % 60).into();
                }
            }
        }
        meta["resourceVersion"] = version.to_string().into();
        objects.insert(key, object.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store
            .log
            .push((version, plural.to_string(), kind.to_string(), object));
        cv.notify_all();
    }

    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let (lock, cv) = &*self.store;
        let mut store = lock.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        let Some(mut object) = store.objects.get_mut(plural).and_then(|o| o.remove(&key)) else {
            return;
        };
        store.version += 1;
        object["metadata"]["resourceVersion"] = store.version.to_string().into();
        let version = store.version;
        store
            .log
            .push((version, plural.to_string(), "DELETED".into(), object));
        cv.notify_all();
    }

    /// Forgets the history (as etcd compaction does) and ends every open watch: the
    /// watchers come back with their last resourceVersion, get 410 Gone, and must list
    /// again. Changes made before `reconnect` are then seen only through that list.
    pub fn compact_and_disconnect(&self) {
        let (lock, cv) = &*self.store;
        let mut store = lock.lock().unwrap();
        // The compaction takes a revision of its own: whatever a watcher saw is older.
        store.version += 1;
        store.compacted = store.version;
        store.epoch += 1;
        cv.notify_all();
    }

    pub fn served(&self) -> Served {
        let store = self.store.0.lock().unwrap();
        Served {
            lists: store.lists,
            watches: store.watches,
            gone: store.gone,
            bookmarks: store.bookmarks,
        }
    }
}

fn uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("JSON");
    let reason = if code == 200 { "OK" } else { "Not Found" };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)
}

fn chunk(conn: &mut TcpStream, value: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).expect("JSON");
    line.push(b'\n');
    write!(conn, "{:x}\r\n", line.len())?;
    conn.write_all(&line)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

/// Serves the requests of one connection (HTTP/1.1, kept alive).
fn serve(
    conn: TcpStream,
    store: &Arc<(Mutex<Store>, Condvar)>,
    missing: &[&str],
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        // Headers: none matter here (GET only, no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        let Some(&(_, plural, api_version, kind)) =
            RESOURCES.iter().find(|(prefix, plural, ..)| {
                path == format!("{prefix}/{plural}") && !missing.contains(plural)
            })
        else {
            respond(
                &mut conn,
                404,
                &status(
                    404,
                    "NotFound",
                    &format!("the server could not find the requested resource ({path})"),
                ),
            )?;
            continue;
        };
        if params.get("watch") == Some(&"true") {
            watch(&mut conn, store, plural, api_version, kind, &params)?;
            return Ok(());
        }
        let body = list(store, plural, api_version, kind, &params);
        respond(&mut conn, 200, &body)?;
    }
}

fn list(
    store: &Arc<(Mutex<Store>, Condvar)>,
    plural: &str,
    api_version: &str,
    kind: &str,
    params: &BTreeMap<&str, &str>,
) -> Value {
    let mut s = store.0.lock().unwrap();
    s.lists += 1;
    let version = s.version;
    let items: Vec<Value> = s
        .objects
        .get(plural)
        .map(|o| o.values().cloned().collect())
        .unwrap_or_default();
    // limit and continue: the token is the offset, at the version of the first page.
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let offset: usize = params
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let end = offset.saturating_add(limit).min(items.len());
    let more = end < items.len();
    // Items of a list carry no apiVersion and kind, as the real server's do not.
    let page: Vec<Value> = items[offset.min(end)..end]
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            o
        })
        .collect();
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": version.to_string(), "continue": if more { end.to_string() } else { String::new() }},
        "items": page,
    })
}

fn watch(
    conn: &mut TcpStream,
    store: &Arc<(Mutex<Store>, Condvar)>,
    plural: &str,
    api_version: &str,
    kind: &str,
    params: &BTreeMap<&str, &str>,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let (lock, cv) = &**store;
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks") == Some(&"true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let ends = Instant::now() + timeout;
    let mut s = lock.lock().unwrap();
    s.watches += 1;
    if from < s.compacted {
        s.gone += 1;
        drop(s);
        let error = status(
            410,
            "Expired",
            &format!("too old resource version: {from} ({})", from + 1),
        );
        chunk(conn, &json!({"type": "ERROR", "object": error}))?;
        return conn.write_all(b"0\r\n\r\n");
    }
    let epoch = s.epoch;
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    loop {
        let events: Vec<Value> = s
            .log
            .iter()
            .filter(|(v, p, ..)| *v > sent && p == plural)
            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
            .collect();
        sent = s.version;
        let bookmark = bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY;
        if bookmark {
            s.bookmarks += 1;
        }
        drop(s);
        for e in &events {
            chunk(conn, e)?;
        }
        if bookmark {
            last_bookmark = Instant::now();
            let object = json!({"kind": kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": sent.to_string()}});
            chunk(conn, &json!({"type": "BOOKMARK", "object": object}))?;
        }
        s = lock.lock().unwrap();
        if s.epoch != epoch || Instant::now() >= ends {
            drop(s);
            return conn.write_all(b"0\r\n\r\n");
        }
        if s.version == sent {
            s = cv.wait_timeout(s, BOOKMARK_EVERY).unwrap().0;
        }
    }
}
