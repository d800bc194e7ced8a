//! `stagewall quarantine` and `release`: one request to the running agent's control
//! socket, and its answer printed.

use std::{path::Path, process::ExitCode};

use crate::{
    cli::{exit::Exit, status::failed},
    control::{Request, send},
};

/// Sends one request line (`quarantine ns/name`, `release ns/name`) and prints the answer.
pub fn run(socket: &Path, line: &str) -> ExitCode {
    let request = match Request::parse(line) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::BadInput.into();
        }
    };
    match send(socket, &request) {
        Ok(answer) => {
            println!("{answer}");
            Exit::Ok.into()
        }
        Err(e) => failed(&e).into(),
    }
}
