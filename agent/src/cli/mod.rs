//! The `stagewall` commands, one module each; main.rs parses the command line and calls
//! them. Every command that prints data takes `-o` (output.rs) and exits with the codes
//! of exit.rs.

pub mod advise;
pub mod check;
pub mod config_file;
pub mod events;
pub mod exit;
pub mod generate;
pub mod get;
pub mod logging;
pub mod output;
pub mod quarantine;
pub mod report;
pub mod rollout_inputs;
pub mod run;
pub mod simulate;
pub mod status;
pub mod uninstall;
