//! The `stagewall` commands, one module each; main.rs parses the command line and calls
//! them.

pub mod advise;
pub mod check;
pub mod events;
pub mod quarantine;
pub mod report;
pub mod rollout_inputs;
pub mod run;
pub mod simulate;
pub mod uninstall;
