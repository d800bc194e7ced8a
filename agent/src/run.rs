//! `stagewall run`: validate the policies, load and attach the kernel programs, apply the
//! compiled policy, then stream violations, serve metrics and apply every change of the
//! policy directory until SIGINT or SIGTERM.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use aya::maps::{HashMap, MapData};
use stagewall_common::{DIR_EGRESS, DIR_INGRESS, FLOWS_MAX, FlowKey, FlowValue, GUARD_ENDPOINT_ID};

use crate::{
    auto_quarantine::{AutoQuarantine, Threshold},
    compiler::{self, CompileCache, Compiled, EndpointIds},
    control::{self, Request},
    events::{
        self,
        hub::Hub,
        reader::{Outputs, RecordFilter},
        sink::{RotatingFile, Sink},
    },
    flow_records::{FlowRecords, Recording},
    host, http,
    kubernetes::{self, KubernetesArgs},
    loader::{Enforcement, Loader},
    metrics::Metrics,
    pins::{self, Pins},
    policy::model::{Mode, ObjectName},
    source::Source,
    watch as dir_watch,
};

/// How often the flow table's entries are counted (a walk over the whole map).
const COUNT_FLOWS_EVERY: Duration = Duration::from_secs(10);

/// Counts the flow table's entries now and then, on a thread of its own: the walk is a
/// syscall per entry and must not stall the event reader.
fn count_flows(flows: HashMap<MapData, FlowKey, FlowValue>, metrics: Arc<Metrics>) {
    std::thread::spawn(move || {
        loop {
            metrics.set_map_usage("flows", flows.keys().flatten().count(), FLOWS_MAX);
            std::thread::sleep(COUNT_FLOWS_EVERY);
        }
    });
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Directory of policy files (*.yaml, *.yml; read recursively, watched for changes).
    /// Without it the agent needs --kubernetes, or runs as if given it when it finds an
    /// in-cluster service account.
    #[arg(long, conflicts_with = "kubernetes")]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// enforce drops what policy denies; audit drops nothing and reports what enforce
    /// would drop.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// Address of the read-only HTTP endpoint (/metrics, /healthz, /readyz).
    #[arg(long, default_value = http::DEFAULT_ADDR)]
    pub metrics_addr: SocketAddr,
    /// cgroup2 mount to resolve workload cgroups against (found in mountinfo by default).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Level of the kernel programs' own log (troubleshooting only; never on the packet
    /// path at the default).
    #[arg(long, default_value = "warn")]
    pub ebpf_log_level: log::LevelFilter,
    /// Also report allowed flows (flow logs): at most one event per flow and second.
    #[arg(long)]
    pub log_allowed: bool,
    /// Write the JSON-lines event log to this file (rotated by size) instead of stdout.
    #[arg(long)]
    pub events_file: Option<PathBuf>,
    /// Rotate the event log file when it would pass this size.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub events_file_max_bytes: u64,
    /// Rotated event log files to keep (events.jsonl.1 is the newest).
    #[arg(long, default_value_t = 5)]
    pub events_file_keep: u32,
    /// This node's name: events carry it, and with --kubernetes the pods scheduled to it
    /// are the ones enforced here (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The root-only Unix socket for `stagewall quarantine` and `release`.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Where maps and links are pinned (on bpffs): enforcement goes on while the agent is
    /// down, and a restarted agent takes over. `stagewall uninstall` removes them.
    #[arg(long, default_value = pins::DEFAULT_DIR)]
    pub bpffs_dir: PathBuf,
    /// A cgroup (path below the cgroup2 mount, e.g. /kubepods.slice; repeatable) whose
    /// every cgroup not in a workload is denied — fail closed: a process that starts below
    /// it has no network until a policy names its workload. Workloads below a guard are
    /// covered by the guard's programs (attached once, for every cgroup below it).
    #[arg(long, value_name = "PATH")]
    pub guard_cgroup: Vec<PathBuf>,
    /// The flow records file (for `stagewall advise`, `simulate` and `report`): written
    /// every 10 seconds and at exit, and added to across restarts.
    #[arg(long, default_value = DEFAULT_FLOW_RECORDS)]
    pub flow_records: PathBuf,
    /// Whose flows are recorded: directions in audit mode (the agent's, a namespace's or
    /// a policy's), all workloads, or none.
    #[arg(long, value_enum, default_value = "audited")]
    pub record_flows: Recording,
    /// Most flow records kept; the least recently seen make room for new ones.
    #[arg(long, default_value_t = 100_000)]
    pub flow_records_max: usize,
    /// Quarantine a workload automatically when its egress is denied N times within T
    /// (`N/T`, e.g. 100/10s); `stagewall release` lifts it. Enforce mode only.
    #[arg(long, value_name = "N/T")]
    pub auto_quarantine: Option<Threshold>,
}

pub const DEFAULT_FLOW_RECORDS: &str = "/var/lib/stagewall/flow-records.json";
/// How often the flow records are written to disk (and at exit): what a crash can lose.
const FLOW_RECORDS_SAVE_EVERY: Duration = Duration::from_secs(10);

/// How often the workloads' egress denials are sampled for --auto-quarantine.
const AUTO_QUARANTINE_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Errors in the user's configuration: reported, and the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How often the policy directory and the workloads' cgroups and interfaces are checked
/// even without a watcher event.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Gives the memory freed since to the operating system. Parsing a large policy
/// allocates tens of MiB for a moment (YAML events, spans); glibc keeps freed memory for
/// later, which would double the agent's resident memory at 10,000 rules for good. Not
/// on a change's path: the next compile would fault the pages in again (about 5 ms at
/// 10,000 rules), so after a change it runs at the next periodic check.
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the process's own heaps.
    unsafe { libc::malloc_trim(0) };
}

/// The agent's desired state and what is in force.
struct Enforcer {
    /// Where the desired state comes from.
    source: Source,
    /// The last compile's entry sets: a change recompiles only what it touched.
    compile_cache: CompileCache,
    how: Enforcement,
    loader: Loader,
    metrics: Arc<Metrics>,
    /// The policy in force, shared with the event reader to name events.
    policy: watch::Sender<Arc<Compiled>>,
    /// A change was loaded since the heap was last trimmed.
    trim_pending: bool,
    /// Samples of the workloads' egress denials, with --auto-quarantine.
    auto_quarantine: Option<AutoQuarantine>,
    /// Workloads isolated by `stagewall quarantine`, whatever the policy says.
    quarantined: BTreeSet<ObjectName>,
    /// --log-allowed: allowed flows go to the event log too.
    log_allowed: bool,
    /// The flow records, and whose flows they take.
    records: Option<(Arc<Mutex<FlowRecords>>, RecordFilter)>,
}

impl Enforcer {
    /// Notes in the flow records which workloads' directions they cover from now on, and
    /// says whether they cover any (the kernel must then report allowed flows).
    fn watch_recorded(&self, compiled: &Compiled) -> bool {
        let Some((records, filter)) = &self.records else {
            return false;
        };
        let mut records = records.lock().expect("records lock");
        let mut any = false;
        for e in &compiled.endpoints {
            for (direction, name) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
                if filter.covers(e.flags, direction) {
                    records.watch(&e.workload.to_string(), name, e.stage.as_deref());
                    any = true;
                }
            }
        }
        any
    }

    fn apply(&mut self, compiled: Compiled) -> anyhow::Result<()> {
        let started = Instant::now();
        // Allowed flows are reported for the event log (--log-allowed) or for the records.
        let recorded = self.watch_recorded(&compiled);
        self.how.log_allowed = self.log_allowed || recorded;
        let enforced = self.loader.apply(&compiled, self.how, &self.quarantined)?;
        let took = started.elapsed();
        self.metrics
            .policy_apply_seconds
            .observe(took.as_secs_f64());
        for e in &enforced {
            log::debug!("enforcing {} at {:?}", e.workload, e.target);
        }
        self.metrics.set_endpoints(
            compiled
                .endpoints
                .iter()
                .map(|e| (e.endpoint_id, e.workload.to_string()))
                .chain(
                    self.loader
                        .has_guards()
                        .then(|| (GUARD_ENDPOINT_ID, events::UNPROGRAMMED.to_string())),
                )
                .collect(),
        );
        for (map, entries, capacity) in compiled.map_usage() {
            self.metrics.set_map_usage(map, entries, capacity);
        }
        log::info!(
            "policy {} applied in {took:?} ({:?} mode): {} workloads enforced, {} identities, {} policy entries",
            self.loader.generation(),
            self.how.mode,
            enforced.len(),
            compiled.identities.kinds.len(),
            compiled.policy.len(),
        );
        self.metrics
            .policy_generation
            .set(self.loader.generation() as i64);
        self.metrics
            .workloads_quarantined
            .set(self.quarantined.len() as i64);
        self.metrics.workloads_enforced.set(enforced.len() as i64);
        self.metrics
            .policy_reloads
            .with_label_values(&["applied"])
            .inc();
        self.policy.send_replace(Arc::new(compiled));
        Ok(())
    }

    /// Quarantines or releases a workload: the policy in force is applied again with the
    /// workload's flag changed (one atomic switch, like any policy change).
    fn control(&mut self, request: Request) -> Result<String, String> {
        let current = self.policy.borrow().clone();
        let (workload, quarantine) = match &request {
            Request::Quarantine(w) => (w, true),
            Request::Release(w) => (w, false),
        };
        if current.endpoint(workload).is_none() {
            return Err(format!(
                "{workload} is not a workload enforced on this node"
            ));
        }
        let changed = if quarantine {
            self.quarantined.insert(workload.clone())
        } else {
            self.quarantined.remove(workload)
        };
        if !changed {
            return Ok(format!(
                "{workload} already {}",
                if quarantine {
                    "quarantined"
                } else {
                    "released"
                }
            ));
        }
        let started = Instant::now();
        if let Err(e) = self.apply((*current).clone()) {
            // Undo, so the set says what the kernel does.
            if quarantine {
                self.quarantined.remove(workload);
            } else {
                self.quarantined.insert(workload.clone());
            }
            return Err(format!("{e:#}"));
        }
        let verb = if quarantine {
            "quarantined"
        } else {
            "released"
        };
        log::warn!("{workload} {verb} (in {:?})", started.elapsed());
        Ok(format!("{workload} {verb} in {:?}", started.elapsed()))
    }

    /// With --auto-quarantine: quarantines the workloads whose egress denials reached the
    /// threshold since the last samples.
    fn auto_quarantine(&mut self) {
        let Some(auto) = self.auto_quarantine.as_mut() else {
            return;
        };
        let current = self.policy.borrow().clone();
        let by_id: std::collections::BTreeMap<u32, &ObjectName> = current
            .endpoints
            .iter()
            .map(|e| (e.endpoint_id, &e.workload))
            .collect();
        let totals = self
            .metrics
            .egress_drops()
            .into_iter()
            .filter_map(|(id, total)| Some(((*by_id.get(&id)?).clone(), total)));
        let threshold = auto.threshold;
        for (workload, denials) in auto.observe(Instant::now(), totals, &self.quarantined) {
            match self.control(Request::Quarantine(workload.clone())) {
                Ok(said) => {
                    self.metrics.auto_quarantines.inc();
                    log::warn!(
                        "auto-quarantine: {workload} had {denials} egress denials (threshold: {threshold}): {said}"
                    );
                }
                Err(e) => log::error!("auto-quarantine of {workload} failed: {e}"),
            }
        }
    }

    /// Applies what changed: the desired state (a bad change is reported and the policy
    /// in force stays), or only where the workloads live (a cgroup or interface appeared
    /// or went).
    fn reconcile(&mut self) {
        let started = Instant::now();
        let current = self.policy.borrow().clone();
        let Some(changed) = self.source.changed() else {
            if self.loader.targets_changed(&current) {
                log::info!("a workload's cgroup or interface changed: applying again");
                if let Err(e) = self.apply((*current).clone()) {
                    log::error!("applying the policy again failed: {e:#}");
                }
            }
            return;
        };
        let compiled = changed.and_then(|set| {
            let compiled =
                compiler::compile_with(&set, &current.endpoint_ids(), &mut self.compile_cache)
                    .map_err(|e| e.to_string())?;
            Ok((compiled, set))
        });
        match compiled {
            Ok((compiled, set)) => {
                log::info!("policy change read and compiled in {:?}", started.elapsed());
                if let Err(e) = self.apply(compiled) {
                    self.metrics
                        .policy_reloads
                        .with_label_values(&["failed"])
                        .inc();
                    log::error!(
                        "applying the changed policy failed, the previous one stays in force: {e:#}"
                    );
                }
                drop(set);
                self.trim_pending = true;
            }
            Err(errors) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                for e in errors.lines() {
                    log::error!("rejected: {e}");
                }
                log::error!(
                    "policy change rejected; policy {} stays in force",
                    self.loader.generation()
                );
            }
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything the user gave is checked before the kernel is touched.
    if args.auto_quarantine.is_some() && args.mode == Mode::Audit {
        return Err(ConfigError(
            "--auto-quarantine acts (it isolates workloads) and audit mode never does; use it in enforce mode".into(),
        )
        .into());
    }
    let cgroup_root = match &args.cgroup_root {
        Some(root) => root.clone(),
        None => host::cgroup2_mount()?,
    };
    let node = args.node_name.clone().unwrap_or_else(events::host_name);
    let (mut source, api_changes) = match &args.policies {
        Some(dir) => (Source::files(dir.clone()), None),
        None if !args.kubernetes.kubernetes && !kubernetes::in_cluster() => {
            return Err(ConfigError(
                "no --policies DIR, no --kubernetes, and no in-cluster service account: nothing says what to enforce".into(),
            )
            .into());
        }
        None => {
            let (tx, rx) = mpsc::channel(64);
            let view = kubernetes::watch(&args.kubernetes, &node, cgroup_root.clone(), tx)
                .await
                .context("Kubernetes")?;
            (Source::Kubernetes(view), Some(rx))
        }
    };
    let set = source
        .changed()
        .expect("a source gives its state when first asked")
        .map_err(ConfigError)?;
    let mut compile_cache = CompileCache::default();
    let compiled = compiler::compile_with(&set, &EndpointIds::new(), &mut compile_cache)
        .map_err(|e| ConfigError(e.to_string()))?;
    let listener = http::bind(args.metrics_addr)
        .await
        .map_err(|e| ConfigError(e.to_string()))?;

    host::ensure_bpffs()?;
    let records = match args.record_flows {
        Recording::Off => None,
        recording => {
            let records = FlowRecords::open(&args.flow_records, args.flow_records_max, args.mode)
                .map_err(|e| ConfigError(format!("{e:#}")))?;
            let filter = RecordFilter {
                recording,
                agent_audits: args.mode == Mode::Audit,
            };
            Some((Arc::new(Mutex::new(records)), filter))
        }
    };
    let sink = match &args.events_file {
        Some(path) => Sink::File(
            RotatingFile::open(
                path.clone(),
                args.events_file_max_bytes,
                args.events_file_keep,
            )
            .map_err(|e| ConfigError(format!("event log {}: {e}", path.display())))?,
        ),
        None => Sink::stdout(),
    };
    let (loader, readers) = Loader::load(
        &cgroup_root,
        args.ebpf_log_level,
        Pins::new(&args.bpffs_dir),
        args.guard_cgroup
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    )?;
    log::info!(
        "kernel programs loaded; cgroup2 at {}",
        cgroup_root.display()
    );
    // Workloads keep the endpoint ids a previous agent gave them (read from the pinned
    // maps): their flows, event limits and statistics are keyed by them.
    let adopted = loader.adopted_endpoint_ids(&compiled);
    let compiled = if adopted.is_empty() {
        compiled
    } else {
        compiler::compile_with(&set, &adopted, &mut compile_cache)
            .map_err(|e| ConfigError(e.to_string()))?
    };
    drop(set);
    let metrics = Arc::new(Metrics::new());
    metrics.attach_kernel(readers.counters, readers.endpoint_stats);
    count_flows(readers.flows, metrics.clone());
    let (policy_tx, policy_rx) = watch::channel(Arc::new(Compiled::default()));
    let mut enforcer = Enforcer {
        source,
        compile_cache,
        how: Enforcement {
            mode: args.mode,
            log_allowed: args.log_allowed,
        },
        loader,
        metrics: metrics.clone(),
        policy: policy_tx,
        trim_pending: false,
        auto_quarantine: args.auto_quarantine.map(AutoQuarantine::new),
        quarantined: BTreeSet::new(),
        log_allowed: args.log_allowed,
        records: records.clone(),
    };
    enforcer.apply(compiled).context("applying the policy")?;
    return_freed_memory();
    let (control_listener, control_path) = control::listen(&args.control_socket)?;
    let (command_tx, mut commands) = mpsc::channel(16);
    // Wake-ups: the policy directory's watcher, or the Kubernetes watchers.
    let (_watcher, mut changes) = match (api_changes, &args.policies) {
        (Some(changes), _) => (None, changes),
        (None, Some(dir)) => {
            let (watcher, changes) =
                dir_watch::watch(dir).with_context(|| format!("watching {}", dir.display()))?;
            (Some(watcher), changes)
        }
        (None, None) => unreachable!("no policies means Kubernetes"),
    };

    let hub = Arc::new(Hub::default());
    let state = Arc::new(http::State {
        metrics: metrics.clone(),
        events: hub.clone(),
        ready: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let outputs = Outputs {
        metrics,
        sink,
        hub,
        node,
        log_allowed: args.log_allowed,
        records: records.clone(),
    };
    tasks.spawn(events::reader::stream(readers.events, policy_rx, outputs));
    tasks.spawn(http::serve(listener, state.clone()));
    tasks.spawn(control::serve(control_listener, command_tx));
    if let Some(logs) = readers.logs {
        tasks.spawn(kernel_logs(logs));
    }
    state.ready.store(true, Ordering::Relaxed);
    log::info!("serving metrics on http://{}/metrics", args.metrics_addr);

    let shutdown = shutdown();
    tokio::pin!(shutdown);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    let mut sample = tokio::time::interval(AUTO_QUARANTINE_SAMPLE_EVERY);
    let mut save_records = tokio::time::interval(FLOW_RECORDS_SAVE_EVERY);
    let result = loop {
        tokio::select! {
            signal = &mut shutdown => {
                log::info!("{signal}: shutting down");
                break Ok(());
            }
            Some(done) = tasks.join_next() => break match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a task ended unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
            Some(change) = changes.recv() => {
                dir_watch::settle(change, &mut changes).await;
                enforcer.reconcile();
            }
            _ = recheck.tick() => {
                if std::mem::take(&mut enforcer.trim_pending) {
                    return_freed_memory();
                }
                enforcer.reconcile();
            }
            _ = sample.tick(), if enforcer.auto_quarantine.is_some() => enforcer.auto_quarantine(),
            _ = save_records.tick(), if records.is_some() => save(records.as_ref(), &enforcer.metrics),
            Some((request, reply)) = commands.recv() => {
                let _ = reply.send(enforcer.control(request));
            }
        }
    };
    tasks.shutdown().await;
    save(records.as_ref(), &enforcer.metrics);
    let generation = enforcer.loader.generation();
    // The links are pinned: the programs stay attached and go on enforcing the policy in
    // force until an agent takes over or `stagewall uninstall` removes them.
    drop(enforcer);
    let _ = std::fs::remove_file(&control_path);
    log::info!(
        "stopped; the kernel programs stay attached and enforce policy {} (`stagewall uninstall` removes them)",
        generation
    );
    result
}

/// Writes the flow records if there are any; a failure is logged and retried next time.
fn save(records: Option<&(Arc<Mutex<FlowRecords>>, RecordFilter)>, metrics: &Metrics) {
    let Some((records, _)) = records else {
        return;
    };
    let mut records = records.lock().expect("records lock");
    if let Err(e) = records.save() {
        log::error!("{e:#}");
    }
    metrics.flow_records.set(records.len() as i64);
    metrics.flow_records_evicted.set(records.evicted() as i64);
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
