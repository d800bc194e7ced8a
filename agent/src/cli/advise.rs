//! `stagewall advise`: least-privilege NetworkPolicies learnt from the flow records.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::{
        exit::Exit,
        rollout_inputs::{InForce, inputs},
    },
    rollout::{advise, flow_records},
};

#[derive(clap::Args, Debug)]
pub struct AdviseArgs {
    /// The agent's flow records (its --flow-records).
    #[arg(long, default_value = flow_records::DEFAULT_PATH)]
    pub records: PathBuf,
    #[command(flatten)]
    pub in_force: InForce,
    /// Write the policies to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &AdviseArgs) -> ExitCode {
    let (records, set) = match inputs(&args.records, || args.in_force.load()) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let yaml = match advise::advise(&records, &set) {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::Failed.into();
        }
    };
    match &args.out {
        None => print!("{yaml}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, yaml) {
                eprintln!("error: writing {}: {e}", path.display());
                return Exit::Failed.into();
            }
        }
    }
    ExitCode::SUCCESS
}
