//! The kernel side: loading the eBPF programs, attaching them to workloads, writing the
//! compiled policy into the maps, pinning what must outlive the agent, and finding the
//! host's cgroups and interfaces the programs key on. Nothing else touches the kernel.

pub mod host;
pub mod loader;
pub mod pins;
