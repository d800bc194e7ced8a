//! `stagewall quarantine` and `release`: one request to the running agent's control
//! socket, and its answer printed.

use std::{path::Path, process::ExitCode};

use crate::control::{Request, send};

/// Sends one request line (`quarantine ns/name`, `release ns/name`) and prints the answer.
pub fn run(socket: &Path, line: &str) -> ExitCode {
    let result = Request::parse(line)
        .map_err(anyhow::Error::msg)
        .and_then(|request| Ok(send(socket, &request)?));
    match result {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
