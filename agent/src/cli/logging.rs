//! The agent's own log (stderr): its level and format, global flags of every command.
//! Messages come from `tracing` (with structured fields where a message is about a
//! workload or a policy) and from the `log` crate (the rest of the code base, aya's kernel
//! log), bridged into the same subscriber so nothing is lost.

use std::io::IsTerminal as _;

/// How each line of the log is written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable: time, level, message, then the fields as key=value.
    #[default]
    Text,
    /// One JSON object a line (for journald's and log shippers' parsers): timestamp,
    /// level, target, message and each field (workload, namespace, policy, ...) by name.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log level of the agent's own messages (stderr).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Format of the agent's own messages (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the subscriber for the whole process, with the `log` bridge.
pub fn init(args: &LogArgs) {
    let level = match args.log_level.to_level() {
        None => tracing_subscriber::filter::LevelFilter::OFF,
        Some(level) => tracing_subscriber::filter::LevelFilter::from_level(match level {
            log::Level::Error => tracing::Level::ERROR,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Trace => tracing::Level::TRACE,
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    // With the `tracing-log` feature, try_init also routes the `log` crate's records here.
    let installed = match args.log_format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(e) = installed {
        eprintln!("warning: the log could not be set up: {e}");
    }
}
