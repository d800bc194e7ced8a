//! `stagewall uninstall`: after the agent stopped, detach every program and remove every
//! pin (the programs go on enforcing while the agent is down, by design).

use std::{path::Path, process::ExitCode};

use crate::{cli::exit::Exit, datapath::pins};

pub fn run(bpffs_dir: &Path, socket: &Path) -> ExitCode {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        eprintln!(
            "error: an agent is running (it answers on {}); stop it first, or it would run without its programs",
            socket.display()
        );
        return Exit::Failed.into();
    }
    // An agent that does not answer there (another socket path, or in a pod whose socket
    // this process cannot see) still holds the pin directory's lock.
    match pins::uninstall(bpffs_dir) {
        Ok(done) => {
            println!(
                "removed stagewall's pins below {} ({} links): every stagewall program is detached",
                bpffs_dir.display(),
                done.links
            );
            for path in &done.left {
                println!("left {}: not stagewall's", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::policy::error::Chain(&e));
            Exit::Failed.into()
        }
    }
}
