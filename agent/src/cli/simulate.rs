//! `stagewall simulate`: replays the flow records against candidate policies; exit 1 if
//! any flow that went through would be denied.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::{check, exit::Exit, output::OutputArgs, rollout_inputs::inputs},
    policy::model::Mode,
    rollout::{flow_records, simulate},
};

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = flow_records::DEFAULT_PATH)]
    pub records: PathBuf,
    /// The candidate policy directory (with its Workload inventory).
    #[arg(long)]
    pub policies: PathBuf,
    /// The agent's mode under the candidate (default: enforce; audit would drop nothing).
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &SimulateArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || check::load(&args.policies)) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let result = simulate::simulate(&records, &set, args.mode);
    args.output.output.print(&result, |_| result.text());
    if result.newly_denied() > 0 {
        Exit::Denied.into()
    } else {
        Exit::Ok.into()
    }
}
