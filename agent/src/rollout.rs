//! The audit-first rollout commands over flow records: `advise` (policies learnt from
//! them), `simulate` (a candidate policy replayed against them) and `report` (per stage).
//! Exit codes: 0 done, 1 `simulate` found newly denied flows, 2 bad input (records or
//! policies), with the reason on stderr.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    advise, check,
    flow_records::{self, RecordsFile},
    kubernetes::KubernetesArgs,
    policy::model::{Mode, PolicySet},
    report, run, simulate,
};

const EXIT_NEWLY_DENIED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

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
    fn load(&self) -> Option<PolicySet> {
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

#[derive(clap::Args, Debug)]
pub struct AdviseArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = run::DEFAULT_FLOW_RECORDS)]
    pub records: PathBuf,
    #[command(flatten)]
    pub in_force: InForce,
    /// Write the policies to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = run::DEFAULT_FLOW_RECORDS)]
    pub records: PathBuf,
    /// The candidate policy directory (with its Workload inventory).
    #[arg(long)]
    pub policies: PathBuf,
    /// The agent's mode under the candidate (default: enforce; audit would drop nothing).
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = run::DEFAULT_FLOW_RECORDS)]
    pub records: PathBuf,
    #[command(flatten)]
    pub in_force: InForce,
    /// The agent's mode (default: the one the records were written in).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// The records and the policies, or the exit code for what is wrong with them (said on
/// stderr).
fn inputs(
    records: &std::path::Path,
    policies: impl FnOnce() -> Option<PolicySet>,
) -> Result<(RecordsFile, PolicySet), ExitCode> {
    let records = flow_records::load(records).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_BAD_INPUT)
    })?;
    let set = policies().ok_or(ExitCode::from(EXIT_BAD_INPUT))?;
    Ok((records, set))
}

fn print(format: Format, value: &impl serde::Serialize, text: impl FnOnce() -> String) {
    match format {
        Format::Text => print!("{}", text()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("plain data serialises")
        ),
    }
}

pub fn advise(args: &AdviseArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || args.in_force.load()) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let yaml = match advise::advise(&records, &set) {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match &args.out {
        None => print!("{yaml}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, yaml) {
                eprintln!("error: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

pub fn simulate(args: &SimulateArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || check::load(&args.policies)) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let result = simulate::simulate(&records, &set, args.mode);
    print(args.format, &result, || result.text());
    if result.newly_denied() > 0 {
        ExitCode::from(EXIT_NEWLY_DENIED)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn report(args: &ReportArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || args.in_force.load()) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let mode = args.mode.unwrap_or(if records.agent_mode == "audit" {
        Mode::Audit
    } else {
        Mode::Enforce
    });
    let stages = report::report(&records, &set, mode);
    print(args.format, &stages, || report::text(&stages));
    ExitCode::SUCCESS
}
