//! The running agent (`stagewall run`): start (load the programs, attach, apply the first
//! policy), then serve until SIGINT or SIGTERM: apply each change of the desired state,
//! drain the kernel's events, answer the control socket, quarantine automatically.
//! cli::run checks everything the user gave before any of this touches the kernel.

pub mod auto_quarantine;
pub mod dns_proxy;
mod fan_out;
mod inspect;
mod serve;
mod start;
pub mod systemd;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use stagewall_common::EP_NAME_RULES;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use self::auto_quarantine::{AutoQuarantine, Threshold};
use crate::{
    compiler::{self, CompileCache, Compiled},
    control::Request,
    datapath::{
        loader::{Loader, ProgramSettings},
        pins::PinLock,
        quarantine::QuarantineStore,
    },
    events::sink::Sink,
    observe::metrics::Metrics,
    policy::model::{Direction, Mode, ObjectName, PolicySet},
    rollout::flow_records::{FlowRecords, RecordFilter},
    source::{Source, WakeUp},
};

pub use self::serve::run;

/// Errors in the user's configuration: reported, and the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the user asked of the running agent, checked, stored once.
#[derive(Debug)]
pub struct Options {
    /// enforce or audit.
    pub mode: Mode,
    /// Allowed flows go to the event log too.
    pub log_allowed: bool,
    /// This node's name, which events carry.
    pub node: String,
    /// The cgroup2 mount workloads' cgroups are resolved against.
    pub cgroup_root: PathBuf,
    /// Level of the kernel programs' own log.
    pub ebpf_log_level: log::LevelFilter,
    /// Where maps and links are pinned.
    pub bpffs_dir: PathBuf,
    /// Guard cgroups (paths below the cgroup2 mount).
    pub guard_cgroups: Vec<String>,
    /// The agent's own cgroup (a path below the cgroup2 mount), which guards let through.
    pub own_cgroup: Option<String>,
    /// The root-only control socket.
    pub control_socket: PathBuf,
    /// Where /metrics is served (for the log line; the listener is bound already).
    pub metrics_addr: SocketAddr,
    /// --auto-quarantine's threshold.
    pub auto_quarantine: Option<Threshold>,
    /// --dns-sni-check: name-allowed TLS connections must name a learnt host.
    pub dns_sni_check: bool,
}

/// What cli::run prepared before the kernel is touched: the source and its first
/// desired state compiled, the bound HTTP listener, the opened records and event log.
pub struct Prepared {
    pub first: FirstPolicy,
    /// Wake-ups from the Kubernetes watchers; a policy directory gets its own watcher
    /// once the policy is in force.
    pub api_wake_ups: Option<mpsc::Receiver<WakeUp>>,
    pub listener: TcpListener,
    pub records: Option<Records>,
    pub sink: Sink,
    /// The pin directory, this agent's alone while it runs: taken while preparing if it
    /// existed, else when the agent starts.
    pub pins_lock: Option<PinLock>,
    /// The DNS proxy's sockets, bound (with --dns-proxy).
    pub dns_proxy: Option<dns_proxy::BoundProxy>,
}

/// The source and its first desired state, compiled.
pub struct FirstPolicy {
    pub source: Source,
    pub set: PolicySet,
    pub compiled: Compiled,
    pub compile_cache: CompileCache,
}

/// What the last apply put in force, for `stagewall status`.
#[derive(Clone, Copy, Debug)]
struct Applied {
    at: std::time::SystemTime,
    /// Workloads enforced on this node, and how many of them below a guard cgroup.
    enforced: usize,
    guarded: usize,
}

/// The flow records, and whose flows they take.
pub type Records = (Arc<Mutex<FlowRecords>>, RecordFilter);

/// The agent's answer to a control request: now, or from work done off its loop (reading
/// the kernel's tables can take a second, during which no policy change would apply).
pub(super) enum Answer {
    Now(Result<String, String>),
    Later(Box<dyn FnOnce() -> Result<String, String> + Send>),
}

/// Gives the memory freed since to the operating system. Parsing a large policy
/// allocates tens of MiB for a moment (YAML events, spans); glibc keeps freed memory for
/// later, which would double the agent's resident memory at 10,000 rules for good. Not
/// on a change's path: the next compile would fault the pages in again (about 5 ms at
/// 10,000 rules), so after a change it runs at the next periodic check.
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the process's own heaps.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    // musl (the static build of the image, `cargo xtask image`) has no malloc_trim: its
    // allocator unmaps freed memory on its own.
}

/// The running agent: the desired state, what is in force, and what acts on it.
pub struct Agent {
    /// Where the desired state comes from.
    source: Source,
    /// The last compile's entry sets: a change recompiles only what it touched.
    compile_cache: CompileCache,
    /// What the user asked for (mode, --log-allowed, ...), stored once.
    options: Options,
    loader: Loader,
    metrics: Arc<Metrics>,
    /// The policy in force, shared with the event reader to name events.
    policy: watch::Sender<Arc<Compiled>>,
    /// A change was loaded since the heap was last trimmed.
    trim_pending: bool,
    /// Samples of the workloads' egress denials, with --auto-quarantine.
    auto_quarantine: Option<AutoQuarantine>,
    /// The last apply, for `stagewall status`.
    applied: Option<Applied>,
    /// Workloads isolated by `stagewall quarantine`, whatever the policy says.
    quarantined: BTreeSet<ObjectName>,
    /// The same set, pinned: what a restarted or upgraded agent starts from.
    quarantine_store: QuarantineStore,
    _pins_lock: PinLock,
    /// The flow records, and whose flows they take.
    records: Option<Records>,
    /// --dns-record-names (with --dns-proxy): workloads whose egress is recorded have
    /// their DNS go through the proxy too, so their records name destinations and advise
    /// can allow names instead of addresses.
    dns_record_names: bool,
}

impl Agent {
    /// Notes in the flow records which workloads' directions they cover from now on, and
    /// says whether they cover any (the kernel must then report allowed flows).
    fn note_covered_directions(&self, compiled: &Compiled) -> bool {
        let Some((records, filter)) = &self.records else {
            return false;
        };
        let mut records = records.lock().expect("records lock");
        let mut any = false;
        for e in &compiled.endpoints {
            for direction in [Direction::Ingress, Direction::Egress] {
                if filter.covers(e.flags, direction) {
                    records.cover(&e.workload.to_string(), direction, e.stage.as_deref());
                    any = true;
                }
            }
        }
        any
    }

    /// Sends the DNS of workloads whose egress is recorded through the proxy (as if they
    /// had name rules): the proxy learns what their answers named, and events and records
    /// carry the names. Nothing is allowed by it: no name identity has entries for them.
    fn name_recorded_destinations(&self, compiled: &mut Compiled) {
        let Some((_, filter)) = &self.records else {
            return;
        };
        for e in &mut compiled.endpoints {
            if filter.covers(e.flags, Direction::Egress) {
                e.flags |= EP_NAME_RULES;
            }
        }
    }

    fn apply(&mut self, mut compiled: Compiled) -> anyhow::Result<()> {
        let started = Instant::now();
        // Allowed flows are reported for the event log (--log-allowed) or for the records.
        let recorded = self.note_covered_directions(&compiled);
        if self.dns_record_names {
            self.name_recorded_destinations(&mut compiled);
        }
        let settings = ProgramSettings {
            mode: self.options.mode,
            log_allowed: self.options.log_allowed || recorded,
            sni_check: self.options.dns_sni_check,
        };
        let enforced = self.loader.apply(&compiled, settings, &self.quarantined)?;
        let took = started.elapsed();
        // A workload with a backstop interface is attached twice; it is one workload.
        let workloads_enforced = enforced
            .iter()
            .map(|e| &e.workload)
            .collect::<BTreeSet<_>>()
            .len();
        self.applied = Some(Applied {
            at: std::time::SystemTime::now(),
            enforced: workloads_enforced,
            guarded: enforced
                .iter()
                .filter(|e| e.guarded)
                .map(|e| &e.workload)
                .collect::<BTreeSet<_>>()
                .len(),
        });
        self.metrics
            .policy_apply_seconds
            .observe(took.as_secs_f64());
        for e in &enforced {
            log::debug!("enforcing {} at {:?}", e.workload, e.target);
        }
        // Events name rules by references of this generation only.
        compiled.generation = self.loader.generation();
        let compiled = Arc::new(compiled);
        self.metrics
            .set_policy(compiled.clone(), self.loader.has_guards());
        for (map, entries, capacity) in compiled.map_usage() {
            self.metrics.set_map_usage(map, entries, capacity);
        }
        let generation = self.loader.generation();
        let mode = self.options.mode;
        tracing::info!(
            policy_generation = generation,
            ?mode,
            workloads_enforced,
            "policy {generation} applied in {took:?} ({mode:?} mode): {} workloads enforced, {} identities, {} policy entries",
            workloads_enforced,
            compiled.identities.kinds.len(),
            compiled.policy.len() + compiled.tier_entries.len(),
        );
        systemd::status(&format!(
            "policy {generation} in force ({mode:?} mode): {workloads_enforced} workloads enforced"
        ));
        self.metrics
            .policy_generation
            .set(self.loader.generation() as i64);
        self.metrics
            .workloads_quarantined
            .set(self.quarantined.len() as i64);
        self.metrics
            .workloads_enforced
            .set(workloads_enforced as i64);
        self.metrics
            .policy_reloads
            .with_label_values(&["applied"])
            .inc();
        log_workload_changes(&self.policy.borrow(), &compiled);
        self.policy.send_replace(compiled);
        Ok(())
    }

    /// Answers a request of the control socket: now, or by work to do off the loop.
    fn answer(&mut self, request: Request) -> Answer {
        match request {
            Request::Quarantine(w) => Answer::Now(self.quarantine(&w, true)),
            Request::Release(w) => Answer::Now(self.quarantine(&w, false)),
            Request::Status => self.status(),
            Request::Get(what) => self.get(&what),
        }
    }

    /// Quarantines or releases a workload: the policy in force is applied again with the
    /// workload's flag changed (one atomic switch, like any policy change).
    fn quarantine(&mut self, workload: &ObjectName, quarantine: bool) -> Result<String, String> {
        let current = self.policy.borrow().clone();
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
        let took = started.elapsed();
        // In force now; kept for the next agent too. A set that cannot be written is said
        // (the quarantine holds until this agent stops), not undone.
        let kept = if quarantine {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.quarantine_store.insert(workload, since)
        } else {
            self.quarantine_store.remove(workload)
        };
        if let Err(e) = kept {
            let e = crate::policy::error::Chain(&e);
            tracing::error!(
                workload = %workload.name,
                namespace = %workload.namespace,
                quarantined = quarantine,
                "{workload} {verb} (in {took:?}), but not kept across restarts: {e}"
            );
            return Ok(format!(
                "{workload} {verb} in {took:?}, but not kept across restarts of the agent: {e}"
            ));
        }
        tracing::warn!(
            workload = %workload.name,
            namespace = %workload.namespace,
            quarantined = quarantine,
            "{workload} {verb} (in {took:?})"
        );
        Ok(format!("{workload} {verb} in {took:?}"))
    }

    /// With --auto-quarantine: quarantines the workloads whose egress denials reached the
    /// threshold since the last samples (the kernel's counts, read through datapath::stats).
    fn auto_quarantine(&mut self) {
        let Some(auto) = self.auto_quarantine.as_mut() else {
            return;
        };
        let current = self.policy.borrow().clone();
        let stats = self.loader.stats();
        let totals = current.endpoints.iter().filter_map(|e| {
            let total = stats.egress_drops(e.endpoint_id)?;
            Some((e.workload.clone(), total))
        });
        let threshold = auto.threshold;
        for (workload, denials) in auto.observe(Instant::now(), totals, &self.quarantined) {
            match self.quarantine(&workload, true) {
                Ok(said) => {
                    self.metrics.auto_quarantines.inc();
                    tracing::warn!(
                        workload = %workload.name,
                        namespace = %workload.namespace,
                        denials,
                        "auto-quarantine: {workload} had {denials} egress denials (threshold: {threshold}): {said}"
                    );
                }
                Err(e) => tracing::error!(
                    workload = %workload.name,
                    namespace = %workload.namespace,
                    "auto-quarantine of {workload} failed: {e}"
                ),
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
        let set = match changed {
            Ok(set) => set,
            Err(errors) => {
                for e in errors.iter() {
                    log_refused(e);
                }
                return self.reject(std::iter::empty::<String>());
            }
        };
        self.metrics
            .objects_left_out
            .set(self.source.left_out() as i64);
        let compiled =
            match compiler::compile_with(&set, &current.endpoint_ids(), &mut self.compile_cache) {
                Ok(compiled) => compiled,
                Err(e) => {
                    self.source.applied(Err(e.to_string()));
                    return self.reject([e]);
                }
            };
        for warning in compiler::warnings(&set) {
            log::warn!("{warning}");
        }
        log::info!("policy change read and compiled in {:?}", started.elapsed());
        let applied = self.apply(compiled);
        self.source
            .applied(applied.as_ref().map(drop).map_err(|e| format!("{e:#}")));
        if let Err(e) = applied {
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

    /// Reports a change of the desired state that is not applied (its policy errors, or
    /// why it does not compile), one error a line: the policy in force stays.
    fn reject<E: std::fmt::Display>(&self, errors: impl IntoIterator<Item = E>) {
        self.metrics
            .policy_reloads
            .with_label_values(&["rejected"])
            .inc();
        for e in errors {
            tracing::error!(error = %e, "rejected: {e}");
        }
        log::error!(
            "policy change rejected; policy {} stays in force",
            self.loader.generation()
        );
    }
}

/// Logs the workloads a new policy starts or stops enforcing, one line each, with the
/// workload and its namespace as fields.
fn log_workload_changes(before: &Compiled, after: &Compiled) {
    let workloads = |c: &Compiled| {
        c.endpoints
            .iter()
            .map(|e| e.workload.clone())
            .collect::<BTreeSet<_>>()
    };
    let (before, after) = (workloads(before), workloads(after));
    for w in after.difference(&before) {
        tracing::info!(workload = %w.name, namespace = %w.namespace, "workload {w} added: its policy is enforced");
    }
    for w in before.difference(&after) {
        tracing::info!(workload = %w.name, namespace = %w.namespace, "workload {w} removed: no longer enforced");
    }
}

/// Logs one error of a refused policy change, with where it is as fields: the file and
/// line, or for an API object its kind, namespace and name (named
/// `kubernetes/<kind>/<namespace>/<name>` by the source).
fn log_refused(e: &crate::policy::error::PolicyError) {
    let file = e.file.to_string_lossy();
    let mut object = file.strip_prefix("kubernetes/").map(|o| o.splitn(3, '/'));
    match object.as_mut().map(|o| (o.next(), o.next(), o.next())) {
        Some((Some(kind), Some(namespace), Some(name))) => tracing::error!(
            policy_kind = kind,
            namespace,
            policy = name,
            line = e.line,
            "rejected: {e}"
        ),
        _ => tracing::error!(file = %file, line = e.line, "rejected: {e}"),
    }
}
