//! stagewall's agent as a library. Each folder is one part of the system, and a part uses
//! only the parts listed above it here (docs/architecture.md draws the map):
//!
//! - `build_info`: version, git commit and kernel release, for status and metrics;
//! - `policy`: the policy model, parsing YAML and API objects into it, pipelines, and the
//!   NetworkPolicy semantics read directly;
//! - `dns`: the DNS proxy for egress by name (DNS messages, the learnt addresses, the
//!   proxy behind traits for the kernel and the rules);
//! - `compiler`: the pure function from the desired state to the kernel maps' contents;
//! - `datapath`: everything that touches the kernel (load, attach, pins, map writes, the
//!   kernel's counters, the host's cgroups and interfaces);
//! - `events`: verdict events, from the kernel's ring buffer to the event log and readers;
//! - `observe`: Prometheus metrics and the read-only HTTP endpoint;
//! - `rollout`: flow records, and advise, simulate and report over them;
//! - `source`: where the desired state comes from (a policy directory, the API server);
//! - `control`: the root-only socket for quarantine, release, status and get;
//! - `agent`: the running agent (`stagewall run`): start, then serve until a signal;
//! - `cli`: one module per command of the `stagewall` binary (main.rs).

pub mod build_info;

pub mod policy;

pub mod dns;

pub mod compiler;

pub mod datapath;

pub mod events;

pub mod observe;

pub mod rollout;

pub mod source;

pub mod control;

pub mod agent;

pub mod cli;
