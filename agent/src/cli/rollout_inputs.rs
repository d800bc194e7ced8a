//! What the audit-first rollout commands (advise, simulate, report) share: the records and
//! the policies in force they read, and how bad input ends them (cli::exit: 2, with the
//! reason on stderr).

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::{check, exit::Exit},
    policy::model::PolicySet,
    rollout::flow_records::{self, RecordsFile},
    source::kubernetes::KubernetesArgs,
};

/// Where the workloads and policies in force are read from: a directory, or the API
/// server (as `run --kubernetes` reads them).
#[derive(clap::Args, Debug)]
pub struct InForce {
    /// Policy directory whose Workload documents are the inventory: which workloads the
    /// records' workloads and peers are, and their labels.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// With --kubernetes: whose pods are local (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

impl InForce {
    pub fn load(&self) -> Option<PolicySet> {
        match &self.policies {
            Some(dir) => check::load(dir),
            None => {
                let node = self
                    .node_name
                    .clone()
                    .unwrap_or_else(crate::events::host_name);
                check::load_kubernetes(&self.kubernetes, &node)
            }
        }
    }
}

/// The records and the policies, or the exit code for what is wrong with them (said on
/// stderr).
pub fn inputs(
    records: &std::path::Path,
    policies: impl FnOnce() -> Option<PolicySet>,
) -> Result<(RecordsFile, PolicySet), ExitCode> {
    let records = flow_records::load(records).map_err(|e| {
        eprintln!("error: {:#}", anyhow::Error::from(e));
        ExitCode::from(Exit::BadInput)
    })?;
    let set = policies().ok_or(ExitCode::from(Exit::BadInput))?;
    Ok((records, set))
}
