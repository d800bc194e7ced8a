//! stagewall's agent as a library: the parts of the system, each in its own module. The
//! `stagewall` binary (main.rs) is the command line over them; the integration tests use
//! the host helpers to build their namespaces and cgroups the way the agent finds them.

pub mod advise;
pub mod auto_quarantine;
pub mod check;
pub mod compiler;
pub mod control;
pub mod events;
pub mod explain;
pub mod flow_records;
pub mod host;
pub mod http;
pub mod kubernetes;
pub mod loader;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod report;
pub mod rollout;
pub mod run;
pub mod simulate;
pub mod source;
pub mod watch;
