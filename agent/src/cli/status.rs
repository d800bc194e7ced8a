//! `stagewall status`: the running agent's status, asked over its control socket (root
//! only), printed as text, JSON or YAML (control/status.rs says what it holds).

use std::{path::Path, process::ExitCode};

use crate::{
    cli::{exit::Exit, output::Output},
    control::{self, ControlError, Request, status::Status},
};

pub fn run(socket: &Path, output: Output) -> ExitCode {
    match control::query::<Status>(socket, &Request::Status) {
        Ok(status) => {
            output.print(&status, |wide| status.text(wide));
            Exit::Ok.into()
        }
        Err(e) => failed(&e).into(),
    }
}

/// Says what went wrong asking the agent, and the exit code for it.
pub fn failed(e: &ControlError) -> Exit {
    eprintln!("error: {}", crate::policy::error::Chain(e));
    match e {
        ControlError::Connect { .. }
        | ControlError::NotRoot { .. }
        | ControlError::NoAnswer { .. } => Exit::AgentUnreachable,
        _ => Exit::Failed,
    }
}
