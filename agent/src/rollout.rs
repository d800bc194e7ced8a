//! The audit-first rollout commands over flow records: `advise` (policies learnt from
//! them), `simulate` (a candidate policy replayed against them) and `report` (per stage).
//! Exit codes: 0 done, 1 `simulate` found newly denied flows, 2 bad input (records or
//! policies), with the reason on stderr.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    advise, check,
    flow_records::{self, RecordsFile},
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

#[derive(clap::Args, Debug)]
pub struct AdviseArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = run::DEFAULT_FLOW_RECORDS)]
    pub records: PathBuf,
    /// Policy directory whose Workload documents are the inventory: which workloads the
    /// records' workloads and peers are, and their labels.
    #[arg(long)]
    pub policies: PathBuf,
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
    /// The policy directory in force.
    #[arg(long)]
    pub policies: PathBuf,
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
    policies: &std::path::Path,
) -> Result<(RecordsFile, PolicySet), ExitCode> {
    let records = flow_records::load(records).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_BAD_INPUT)
    })?;
    let set = check::load(policies).ok_or(ExitCode::from(EXIT_BAD_INPUT))?;
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
    let (records, set) = match inputs(&args.records, &args.policies) {
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
    let (records, set) = match inputs(&args.records, &args.policies) {
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
    let (records, set) = match inputs(&args.records, &args.policies) {
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
