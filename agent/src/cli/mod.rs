//! The `stagewall` commands, one module each; main.rs parses the command line and calls
//! them.

pub mod advise;
pub mod check;
pub mod config_file;
pub mod events;
pub mod generate;
pub mod logging;
pub mod quarantine;
pub mod report;
pub mod rollout_inputs;
pub mod run;
pub mod simulate;
pub mod uninstall;
