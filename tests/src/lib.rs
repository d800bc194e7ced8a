//! The integration tests' library: a test bed of network namespaces and cgroups, the real
//! agent running against it, and probes that send traffic between its nodes.
//!
//! - `bed`: the test bed ([`Testbed`], [`Layout`], [`Node`]): a hub namespace with a
//!   bridge, one namespace, veth and cgroup per workload, policy files, cleanup on drop.
//! - `exec`: commands inside a node's namespace and cgroup (`Testbed::command`, `spawn`,
//!   `hub_command`).
//! - `probe`: traffic between nodes through the probe binary ([`Outcome`],
//!   `Testbed::serve`, `tcp`, `udp`, `ping`).
//! - `sweep`: what tests leave on the host (shims, mounts, cgroups in every hierarchy,
//!   namespaces) and its removal, for a node's cleanup and for runs that were killed.
//! - `agent`: the agent under test ([`Agent`], `Testbed::start_agent*`, `uninstall`,
//!   [`metric_sum`]).
//! - [`bpf_stats`]: the kernel's run time and count of BPF programs, an empty program
//!   (the floor) and `BPF_PROG_TEST_RUN`, for the per-packet cost benchmark;
//! - [`cluster`]: a real Kubernetes control plane (etcd, kube-apiserver) built from the
//!   Go modules, in the hub namespace;
//! - [`node`]: a real node for that control plane: kubelet, containerd, runc and the CNI
//!   bridge plugin, running real pods from locally written images;
//! - [`bench`]: what the benchmark binaries share (the measured policy, the one-rule-change
//!   measurement, the agent's CPU, memory and kernel map memory);
//! - [`apiserver`]: a hand-written list/watch server for what a real one cannot be made to
//!   do on demand; [`demo`]: the demo's test bed and probes; [`dns`]: a real DNS server
//!   (dnsmasq) in the bed and workloads resolving through it; [`dns_client`]: the probe's
//!   hand-written DNS queries, timed (the DNS benchmark);
//!   [`paired`]: paired ratios' median and its 95% confidence interval (interleaved
//!   throughput); [`raw`]: hand-made frames for the hostile-input tests; [`sctp`]: the probe's SCTP
//!   (INIT and INIT ACK over raw sockets, for kernels without an SCTP stack).
//!
//! `Testbed`'s methods live with the part they belong to: building the bed in `bed`,
//! running commands in `exec`, traffic in `probe`, the agent in `agent`.

mod agent;
mod bed;
mod exec;
mod probe;
mod sweep;

pub mod apiserver;
pub mod bench;
pub mod bpf_stats;
pub mod cluster;
pub mod demo;
pub mod dns;
pub mod dns_client;
pub mod lsm;
pub mod node;
pub mod paired;
pub mod raw;
pub mod sctp;

pub use agent::{Agent, agent_bin, metric_sum, until, until_within};
pub use bed::{HUB_GATEWAY, Layout, Node, NodeSpec, Testbed, pinned_links, privileged};
pub use probe::{Outcome, probe_bin};
