//! `stagewall completions SHELL` and `stagewall man`: shell completions and the man page,
//! generated from the clap definition itself, so they name every command and flag the
//! binary has (the .deb installs both).

use std::{io::Write as _, path::Path};

use clap::Command;

use crate::cli::exit::Exit;

/// The shells completions are written for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Writes the completion script of `shell` for `command` to stdout.
pub fn completions(shell: Shell, mut command: Command) -> std::process::ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let name = command.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, name, &mut out);
    finish(out.flush())
}

/// Without `dir`, writes the man page of `command` (roff, section 1) to stdout; with it,
/// writes one page per command into `dir` (stagewall.1, stagewall-run.1, ...: the git
/// convention, so `man stagewall-run` shows the agent's flags).
pub fn man(command: Command, dir: Option<&Path>) -> std::process::ExitCode {
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command, dir))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .and_then(|()| std::io::stdout().lock().write_all(&page))
        }
    };
    finish(written)
}

fn finish(written: std::io::Result<()>) -> std::process::ExitCode {
    match written {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("error: writing: {e}");
            Exit::Failed.into()
        }
    }
}
