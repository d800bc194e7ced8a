//! `stagewall run`: validate the policies, load and attach the kernel programs, apply the
//! compiled policy, then stream violations and serve metrics until SIGINT or SIGTERM.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    compiler, events, host, http,
    loader::{Loader, Mode},
    metrics::Metrics,
    policy,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Directory of policy files (*.yaml, *.yml; read recursively).
    #[arg(long)]
    pub policies: PathBuf,
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
}

/// Errors in the user's configuration: reported, and the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Everything the user gave is checked before the kernel is touched.
    let set = policy::parse::load_dir(&args.policies).map_err(|e| ConfigError(e.to_string()))?;
    let compiled = compiler::compile(&set).map_err(|e| ConfigError(e.to_string()))?;
    let listener = http::bind(args.metrics_addr)
        .await
        .map_err(|e| ConfigError(e.to_string()))?;

    let cgroup_root = match args.cgroup_root {
        Some(root) => root,
        None => host::cgroup2_mount()?,
    };
    host::ensure_bpffs()?;
    let (mut loader, readers) = Loader::load(&cgroup_root, args.ebpf_log_level)?;
    let metrics = Arc::new(Metrics::new());
    metrics.attach_kernel_counters(readers.counters);

    let enforced = loader
        .apply(&compiled, args.mode)
        .context("applying the policy")?;
    metrics.policy_generation.set(loader.generation() as i64);
    metrics.workloads_enforced.set(enforced.len() as i64);
    metrics.policy_reloads.with_label_values(&["applied"]).inc();
    for e in &enforced {
        log::info!("enforcing {} at {:?}", e.workload, e.target);
    }
    log::info!(
        "policy applied in {:?} mode: {} workloads enforced, {} identities, {} policy entries (cgroup2 at {})",
        args.mode,
        enforced.len(),
        compiled.identities.kinds.len(),
        compiled.policy.len(),
        cgroup_root.display()
    );
    let (_policy_tx, policy_rx) = watch::channel(Arc::new(compiled));

    let state = Arc::new(http::State {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(events::stream(
        readers.events,
        policy_rx,
        metrics,
        std::io::stdout(),
    ));
    tasks.spawn(http::serve(listener, state.clone()));
    if let Some(logs) = readers.logs {
        tasks.spawn(kernel_logs(logs));
    }
    state.ready.store(true, Ordering::Relaxed);
    log::info!("serving metrics on http://{}/metrics", args.metrics_addr);

    let result = tokio::select! {
        signal = shutdown() => {
            log::info!("{signal}: shutting down");
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a task ended unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
    };
    tasks.shutdown().await;
    // Dropping the loader closes every link: the kernel detaches the programs.
    drop(loader);
    log::info!("detached from {} workloads", enforced.len());
    result
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
    let mut fd = events::readable(logs)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
