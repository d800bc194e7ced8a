//! `stagewall report`: per stage, mode, flows seen, would-drops by peer and port, and the
//! policies in force.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::{
        output::OutputArgs,
        rollout_inputs::{InForce, inputs},
    },
    policy::model::Mode,
    rollout::{flow_records, report},
};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = flow_records::DEFAULT_PATH)]
    pub records: PathBuf,
    #[command(flatten)]
    pub in_force: InForce,
    /// The agent's mode (default: the one the records were written in).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &ReportArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || args.in_force.load()) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let mode = args.mode.unwrap_or(records.agent_mode);
    let stages = report::report(&records, &set, mode);
    args.output.output.print(&stages, |_| report::text(&stages));
    ExitCode::SUCCESS
}
