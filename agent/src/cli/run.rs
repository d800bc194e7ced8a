//! `stagewall run`: the agent's arguments, and everything about them that can fail checked
//! before the kernel is touched (exit code 2): the policies parse and compile, the metrics
//! address binds, the flow records and the event log open. Then agent::run starts and
//! serves.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::{
    agent::{
        self, ConfigError, FirstPolicy, Options, Prepared,
        auto_quarantine::Threshold,
        dns_proxy::{self, DnsArgs},
    },
    cli::exit::Exit,
    compiler::{self, CompileCache, EndpointIds},
    control,
    datapath::{
        host, loader,
        pins::{self, Pins},
    },
    events::{
        self,
        sink::{RotatingFile, Sink},
    },
    observe::http,
    policy::model::Mode,
    rollout::flow_records::{self, FlowRecords, RecordFilter, Recording},
    source::{
        Source,
        kubernetes::{self, KubernetesArgs},
    },
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// YAML file of settings: each key a flag of `run` by its long name (`mode: audit`).
    /// The command line and STAGEWALL_* variables win over it. Default:
    /// /etc/stagewall/config.yaml, if it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory of policy files (*.yaml, *.yml; read recursively, watched for changes).
    /// Without it the agent needs --kubernetes, or runs as if given it when it finds an
    /// in-cluster service account.
    #[arg(long, conflicts_with = "kubernetes")]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    #[command(flatten)]
    pub dns: DnsArgs,
    /// enforce drops what policy denies; audit drops nothing and reports what enforce
    /// would drop.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// Address of the read-only HTTP endpoint (/metrics, /healthz, /readyz).
    #[arg(long, default_value = http::DEFAULT_ADDR)]
    pub metrics_addr: SocketAddr,
    /// cgroup2 mount to resolve workload cgroups against (found in mountinfo by default).
    /// Given a directory that is no cgroup2 mount but holds one as `unified` (the hybrid
    /// layout), that one is used.
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
    /// With --policies: this host's own addresses (its interfaces', looked at every
    /// second) may always connect to its workloads, whatever their ingress policy (as
    /// Kubernetes lets a pod's node in, for kubelet's probes). Kubernetes mode always
    /// does, with the Node object's addresses too.
    #[arg(long, conflicts_with = "kubernetes")]
    pub node_ingress: bool,
    /// The UID of the agent's own pod (the DaemonSet sets it from metadata.uid): its
    /// cgroup, found by UID as every pod's, is let through the guards, so that the agent
    /// always reaches the API server. Without it, the cgroup /proc/self/cgroup names.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// The flow records file (for `stagewall advise`, `simulate` and `report`): written
    /// every 10 seconds and at exit, and added to across restarts.
    #[arg(long, default_value = flow_records::DEFAULT_PATH)]
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
    /// Workloads with name rules: a TLS connection (TCP port 443) that only a name allowed
    /// must name, in its ClientHello's server name, a host its destination was learnt for;
    /// one that names another host (or none) is dropped, its flow too (would-drop in audit
    /// mode). Costs a parse of the first payload of each such connection.
    #[arg(long)]
    pub dns_sni_check: bool,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(async {
        let (options, prepared) = prepare(args).await?;
        agent::run(options, prepared).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ConfigError>() => {
            eprintln!("error: {e}");
            Exit::BadInput.into()
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Failed.into()
        }
    }
}

/// Checks everything the user gave, before the kernel is touched: the options, and the
/// source's first desired state compiled, the HTTP listener bound, the records and the
/// event log opened.
async fn prepare(args: RunArgs) -> anyhow::Result<(Options, Prepared)> {
    if args.auto_quarantine.is_some() && args.mode == Mode::Audit {
        return Err(ConfigError(
            "--auto-quarantine acts (it isolates workloads) and audit mode never does; use it in enforce mode".into(),
        )
        .into());
    }
    let cgroup_root = match &args.cgroup_root {
        Some(root) => host::cgroup2_at_or_below(root),
        None => host::cgroup2_mount()?,
    };
    let node = args.node_name.clone().unwrap_or_else(events::host_name);
    let own_cgroup = own_cgroup(&args, &cgroup_root);
    // One agent per pin directory, taken before anything in it is read or written: here
    // when a previous agent left pins (the own-cgroup step below writes them), else when
    // the agent starts (nothing of the user's has been checked yet, and nothing is
    // created before it is).
    let pins_lock = if args.bpffs_dir.exists() {
        Some(pins::lock(&args.bpffs_dir)?)
    } else {
        None
    };
    match &own_cgroup {
        // Before anything connects: a guard a previous agent left in force (pinned) would
        // deny this agent, a new pod below it, the API server; also when this agent is
        // given no guard (it removes the old one only after its first apply).
        Some(own) => {
            log::info!("own cgroup {own} is never guarded");
            match loader::let_own_cgroup_through(&Pins::new(&args.bpffs_dir), &cgroup_root, own) {
                Ok(true) => log::info!("own cgroup {own} let through the guards in force"),
                Ok(false) => {}
                Err(e) => {
                    log::warn!("could not let own cgroup {own} through the guards in force: {e:#}")
                }
            }
        }
        None if !args.guard_cgroup.is_empty() => log::warn!(
            "the agent's own cgroup is not known (no --pod-uid, and /proc/self/cgroup names none): if it is below a guard cgroup, the guard denies it"
        ),
        None => {}
    }
    let (mut source, api_wake_ups) = match &args.policies {
        Some(dir) => (Source::files(dir.clone(), args.node_ingress), None),
        None if !args.kubernetes.kubernetes && !kubernetes::in_cluster() => {
            return Err(ConfigError(
                "no --policies DIR, no --kubernetes, and no in-cluster service account: nothing says what to enforce".into(),
            )
            .into());
        }
        None => {
            let (tx, rx) = mpsc::channel(64);
            let mut view =
                kubernetes::start_watchers(&args.kubernetes, &node, cgroup_root.clone(), tx)
                    .await
                    .context("Kubernetes")?;
            view.report_events();
            (Source::Kubernetes(Box::new(view)), Some(rx))
        }
    };
    let set = source
        .changed()
        .expect("a source gives its state when first asked")
        .map_err(|errors| ConfigError(errors.to_string()))?;
    let mut compile_cache = CompileCache::default();
    let compiled = compiler::compile_with(&set, &EndpointIds::new(), &mut compile_cache)
        .map_err(|e| ConfigError(e.to_string()))?;
    for warning in compiler::warnings(&set) {
        log::warn!("{warning}");
    }
    let dns_proxy = dns_proxy::bind(&args.dns)?;
    if dns_proxy.is_none()
        && compiled
            .endpoints
            .iter()
            .any(|e| compiled.names.has_name_rules(e.endpoint_id))
    {
        log::warn!(
            "policies allow egress by name, and the agent has no DNS proxy (--dns-proxy): nothing is learnt, and connections to those names are refused"
        );
    }
    let listener = http::bind(args.metrics_addr)
        .await
        .map_err(|e| ConfigError(format!("{:#}", anyhow::Error::from(e))))?;
    let records = match args.record_flows {
        Recording::Off => None,
        recording => {
            let records = FlowRecords::open(&args.flow_records, args.flow_records_max, args.mode)
                .map_err(|e| ConfigError(format!("{:#}", anyhow::Error::from(e))))?;
            let filter = RecordFilter {
                recording,
                agent_audits: args.mode == Mode::Audit,
            };
            Some((Arc::new(Mutex::new(records)), filter))
        }
    };
    let sink = match &args.events_file {
        Some(path) => Sink::file(
            RotatingFile::open(
                path.clone(),
                args.events_file_max_bytes,
                args.events_file_keep,
            )
            .map_err(|e| ConfigError(format!("event log {}: {e}", path.display())))?,
        ),
        None => {
            Sink::stdout().map_err(|e| ConfigError(format!("stdout, for the event log: {e}")))?
        }
    };
    let options = Options {
        mode: args.mode,
        log_allowed: args.log_allowed,
        node,
        cgroup_root,
        ebpf_log_level: args.ebpf_log_level,
        bpffs_dir: args.bpffs_dir,
        own_cgroup,
        guard_cgroups: args
            .guard_cgroup
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        control_socket: args.control_socket,
        metrics_addr: args.metrics_addr,
        auto_quarantine: args.auto_quarantine,
        dns_sni_check: args.dns_sni_check,
    };
    let prepared = Prepared {
        first: FirstPolicy {
            source,
            set,
            compiled,
            compile_cache,
        },
        api_wake_ups,
        listener,
        records,
        sink,
        pins_lock,
        dns_proxy,
    };
    Ok((options, prepared))
}

/// The agent's own cgroup (a path below the cgroup2 mount): its pod's, by UID, in a
/// DaemonSet; else what /proc/self/cgroup names, unless that is "/" (a private cgroup
/// namespace, where the real path is unknown).
fn own_cgroup(args: &RunArgs, cgroup_root: &std::path::Path) -> Option<String> {
    if let Some(uid) = &args.pod_uid {
        let found = kubernetes::pod_cgroup(cgroup_root, &args.kubernetes.pods_cgroup_base, uid);
        if found.is_none() {
            log::warn!(
                "no cgroup for this agent's pod {uid} below {}",
                args.kubernetes.pods_cgroup_base
            );
        }
        return found;
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    (path != "/").then(|| path.to_string())
}
