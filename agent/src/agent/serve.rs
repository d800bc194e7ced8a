//! Serve: the agent's loop. Every change of the desired state (a wake-up from the policy
//! directory or the API server, or the periodic check) is applied; the kernel's events are
//! drained and fanned out; the control socket and --auto-quarantine act; the flow records
//! are saved. SIGINT or SIGTERM ends it, and the programs stay attached.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Context as _;
use futures_util::TryFutureExt as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::{Answer, Options, Prepared, Records, fan_out, return_freed_memory, start::start};
use crate::{
    control, events,
    observe::{http, metrics::Metrics},
    source::{self, files},
};

/// How often the flow records are written to disk (and at exit): what a crash can lose.
const FLOW_RECORDS_SAVE_EVERY: Duration = Duration::from_secs(10);

/// How often the workloads' egress denials are sampled for --auto-quarantine.
const AUTO_QUARANTINE_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How often the policy directory and the workloads' cgroups and interfaces are checked
/// even without a watcher event.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Starts the agent and serves until SIGINT or SIGTERM (or a task fails).
pub async fn run(options: Options, prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        first,
        api_wake_ups,
        listener,
        records,
        sink,
        pins_lock,
        dns_proxy,
    } = prepared;
    let policies_dir = first.source.policy_dir().map(|d| d.to_path_buf());
    super::systemd::status("loading the kernel programs and the first policy");
    let started = start(options, first, records.clone(), pins_lock, dns_proxy)?;
    let mut agent = started.agent;
    return_freed_memory();
    let (control_listener, control_path) = control::listen(&agent.options.control_socket)?;
    let (command_tx, mut commands) = mpsc::channel(16);
    // Wake-ups: the policy directory's watcher, or the Kubernetes watchers.
    let (_watcher, mut wake_ups) = match (api_wake_ups, &policies_dir) {
        (Some(wake_ups), _) => (None, wake_ups),
        (None, Some(dir)) => {
            let (watcher, wake_ups) = files::wake_on_change(dir)
                .with_context(|| format!("watching {}", dir.display()))?;
            (Some(watcher), wake_ups)
        }
        (None, None) => unreachable!("no policies means Kubernetes"),
    };

    let hub = std::sync::Arc::new(events::hub::Hub::default());
    let state = std::sync::Arc::new(http::State {
        metrics: agent.metrics.clone(),
        events: hub.clone(),
        ready: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let outputs = fan_out::Outputs {
        policy: started.policy,
        metrics: agent.metrics.clone(),
        sink,
        hub,
        node: agent.options.node.clone(),
        log_allowed: agent.options.log_allowed,
        records: records.clone(),
        batch_policy: None,
        unlogged: Default::default(),
        dns_names: started.dns.as_ref().map(|d| d.learnt.clone()),
    };
    tasks.spawn(outputs.stream(started.events));
    // Not one of `tasks`: the endpoint ending must never stop the agent's enforcement.
    let http = tokio::spawn(serve_http(
        listener,
        agent.options.metrics_addr,
        state.clone(),
    ));
    tasks.spawn(control::serve(control_listener, command_tx).err_into());
    if let Some(logs) = started.logs {
        tasks.spawn(kernel_logs(logs));
    }
    state.ready.store(true, Ordering::Relaxed);
    // The first policy is in force (start applied it) and the sockets answer.
    super::systemd::notify("READY=1");
    log::info!(
        "serving metrics on http://{}/metrics",
        agent.options.metrics_addr
    );

    let shutdown = shutdown();
    tokio::pin!(shutdown);
    let walks = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    let mut sample = tokio::time::interval(AUTO_QUARANTINE_SAMPLE_EVERY);
    let mut save_records = tokio::time::interval(FLOW_RECORDS_SAVE_EVERY);
    let result = loop {
        tokio::select! {
            signal = &mut shutdown => {
                log::info!("{signal}: shutting down");
                super::systemd::notify("STOPPING=1\nSTATUS=shutting down; the kernel programs stay attached");
                break Ok(());
            }
            Some(done) = tasks.join_next() => break match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a task ended unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
            Some(wake_up) = wake_ups.recv() => {
                source::settle(wake_up, &mut wake_ups).await;
                agent.reconcile();
            }
            _ = recheck.tick() => {
                if std::mem::take(&mut agent.trim_pending) {
                    return_freed_memory();
                }
                agent.reconcile();
            }
            _ = sample.tick(), if agent.auto_quarantine.is_some() => agent.auto_quarantine(),
            _ = save_records.tick(), if records.is_some() => save(records.as_ref(), &agent.metrics),
            Some((request, reply)) = commands.recv() => match agent.answer(request) {
                Answer::Now(answer) => {
                    let _ = reply.send(answer);
                }
                // Reading the kernel's tables for it is left to a blocking thread (one at
                // a time: a polling script cannot start walks without bound): the loop
                // goes on applying changes meanwhile.
                Answer::Later(work) => {
                    let one_at_a_time = walks.clone();
                    tokio::spawn(async move {
                        let Ok(_turn) = one_at_a_time.acquire_owned().await else {
                            return;
                        };
                        let answer = tokio::task::spawn_blocking(work)
                            .await
                            .unwrap_or_else(|_| Err("reading the kernel's tables failed (a bug: see the agent's log)".to_string()));
                        let _ = reply.send(answer);
                    });
                }
            },
        }
    };
    tasks.shutdown().await;
    http.abort();
    if let Some(dns) = started.dns {
        dns.stop();
    }
    save(records.as_ref(), &agent.metrics);
    let generation = agent.loader.generation();
    // The links are pinned: the programs stay attached and go on enforcing the policy in
    // force until an agent takes over or `stagewall uninstall` removes them.
    drop(agent);
    let _ = std::fs::remove_file(&control_path);
    log::info!(
        "stopped; the kernel programs stay attached and enforce policy {} (`stagewall uninstall` removes them)",
        generation
    );
    result
}

/// Writes the flow records if there are any; a failure is logged and retried next time.
fn save(records: Option<&Records>, metrics: &Metrics) {
    let Some((records, _)) = records else {
        return;
    };
    let mut records = records.lock().expect("records lock");
    if let Err(e) = records.save() {
        log::error!("{:#}", anyhow::Error::from(e));
    }
    super::start::count_records(&records, metrics);
}

/// How long the endpoint waits before it is served again after it stopped.
const HTTP_RESTART_AFTER: Duration = Duration::from_secs(1);

/// Serves the HTTP endpoint for as long as the agent runs. `http::serve` only returns
/// if a bug panics in it: log it and serve again on a newly bound listener (the old one
/// went with the task), so that /metrics comes back without touching enforcement.
async fn serve_http(
    listener: tokio::net::TcpListener,
    addr: std::net::SocketAddr,
    state: std::sync::Arc<http::State>,
) {
    let mut listener = Some(listener);
    loop {
        let bound = match listener.take() {
            Some(bound) => bound,
            None => match http::bind(addr).await {
                Ok(bound) => bound,
                Err(e) => {
                    log::error!("{:#}", anyhow::Error::from(e));
                    tokio::time::sleep(HTTP_RESTART_AFTER).await;
                    continue;
                }
            },
        };
        match tokio::spawn(http::serve(bound, state.clone())).await {
            Ok(never) => match never {},
            Err(e) => log::error!("the metrics endpoint stopped: {e}; serving it again"),
        }
        tokio::time::sleep(HTTP_RESTART_AFTER).await;
    }
}

/// Resolves on SIGINT or SIGTERM, naming the signal.
async fn shutdown() -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Forwards the kernel programs' aya-log records to the agent's log.
async fn kernel_logs(logs: aya_log::EbpfLogger<&'static dyn log::Log>) -> anyhow::Result<()> {
    let mut fd = events::reader::readable(logs)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
