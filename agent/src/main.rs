//! stagewall: an eBPF network enforcement agent for ML pipelines.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use stagewall::cli::{self, run};

#[derive(Parser)]
#[command(
    name = "stagewall",
    version,
    about = "eBPF network enforcement for ML pipelines"
)]
struct Cli {
    #[command(flatten)]
    log: cli::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the policies of a directory, or of the Kubernetes API server, on this host
    /// (needs root).
    Run(Box<run::RunArgs>),
    /// Isolate a workload entirely, in the kernel, at once (assume breach).
    Quarantine {
        /// namespace/name of a workload enforced on this node.
        workload: String,
        #[arg(long, default_value = stagewall::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Lift a quarantine.
    Release {
        workload: String,
        #[arg(long, default_value = stagewall::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove every program the agent attached and every map it pinned (stop the agent
    /// first: its programs go on enforcing while it is down, by design).
    Uninstall {
        #[arg(long, default_value = stagewall::datapath::pins::DEFAULT_DIR)]
        bpffs_dir: PathBuf,
        /// The agent's control socket: while an agent answers there, nothing is removed.
        #[arg(long, default_value = stagewall::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the agent's recent verdict events, or follow them (--follow).
    Events(cli::events::EventsArgs),
    /// Least-privilege NetworkPolicies learnt from the flow records (audit-first rollout).
    Advise(cli::advise::AdviseArgs),
    /// Replay the flow records against candidate policies: exit 1 if any flow that went
    /// through would be denied.
    Simulate(cli::simulate::SimulateArgs),
    /// Per stage: mode, flows seen, would-drops by peer and port, policies in force.
    Report(cli::report::ReportArgs),
    /// Validate and compile the policies of a directory without touching the kernel.
    Check(cli::check::CheckArgs),
    /// The running agent's status: mode, policy, workloads, map pressure, events, kernel
    /// features, pins, build (needs root: the control socket).
    Status {
        #[arg(long, default_value = stagewall::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        output: cli::output::OutputArgs,
    },
    /// What the kernel holds now, decoded: endpoints, identities, a workload's policy
    /// entries or flows (needs root: the control socket).
    Get {
        #[command(subcommand)]
        what: cli::get::What,
        #[arg(long, global = true, default_value = stagewall::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        output: cli::output::OutputArgs,
    },
    /// Print the shell completion script for bash, zsh or fish.
    Completions { shell: cli::generate::Shell },
    /// Print the man page (roff), or write one page per command into --dir.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // `run`'s flags also come from STAGEWALL_* variables and the configuration file.
    let cli: Cli = cli::config_file::parse();
    cli::logging::init(&cli.log);
    match cli.command {
        Command::Quarantine { workload, socket } => {
            cli::quarantine::run(&socket, &format!("quarantine {workload}"))
        }
        Command::Release { workload, socket } => {
            cli::quarantine::run(&socket, &format!("release {workload}"))
        }
        Command::Uninstall { bpffs_dir, socket } => cli::uninstall::run(&bpffs_dir, &socket),
        Command::Advise(args) => cli::advise::run(&args),
        Command::Simulate(args) => cli::simulate::run(&args),
        Command::Report(args) => cli::report::run(&args),
        Command::Events(args) => cli::events::exit(cli::events::run(&args)),
        Command::Check(args) => cli::check::run(args),
        Command::Status { socket, output } => cli::status::run(&socket, output.output),
        Command::Get {
            what,
            socket,
            output,
        } => cli::get::run(&socket, &what, output.output),
        Command::Run(args) => run::run(*args),
        Command::Completions { shell } => {
            cli::generate::completions(shell, cli::config_file::command::<Cli>())
        }
        Command::Man { dir } => {
            cli::generate::man(cli::config_file::command::<Cli>(), dir.as_deref())
        }
    }
}
