//! `stagewall uninstall`: after the agent stopped, detach every program and remove every
//! pin (the programs go on enforcing while the agent is down, by design).

use std::{path::Path, process::ExitCode};

use crate::datapath::pins;

pub fn run(bpffs_dir: &Path, socket: &Path) -> ExitCode {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        eprintln!(
            "error: an agent is running (it answers on {}); stop it first, or it would run without its programs",
            socket.display()
        );
        return ExitCode::FAILURE;
    }
    match pins::uninstall(bpffs_dir) {
        Ok(links) => {
            println!(
                "removed {} ({links} links): every stagewall program is detached",
                bpffs_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: removing {}: {e}", bpffs_dir.display());
            ExitCode::FAILURE
        }
    }
}
