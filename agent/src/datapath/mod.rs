//! The kernel side: loading the eBPF programs, attaching them to workloads, writing the
//! compiled policy into the maps, reading what the programs count, pinning what must
//! outlive the agent, and finding the host's cgroups and interfaces the programs key on.
//! Nothing else touches the kernel.
//!
//! - `loader`: the `Loader` the agent holds; it composes the three below;
//! - `object`: the eBPF object embedded in the binary, loaded, its maps taken;
//! - `attach`: the programs' links on cgroups and interfaces (tcx or clsact);
//! - `slots`: the two-slot atomic apply (map keys are encoded in compiler::map_keys);
//! - `inspect`: what the kernel holds now, read back from the pins (status, get);
//! - `stats`: the one reader of the kernel's counters and per-endpoint statistics;
//! - `pins`: what is kept in bpffs, the map layout it is checked against, and the lock
//!   that keeps it one agent's;
//! - `packet_sockets`: the node-wide guard (BPF LSM) that refuses isolated workloads
//!   packet and XDP sockets;
//! - `dns`: the DNS proxy's maps (where it listens, whose query, what was learnt);
//! - `quarantine`: the quarantined workloads, pinned so that no restart lifts them;
//! - `host`: the cgroup2 mount, bpffs, and workloads' cgroups and interfaces;
//! - `error`: what can go wrong in all but `host`, naming the map, program or path.

mod attach;
pub mod dns;
pub mod error;
pub mod host;
pub mod inspect;
pub mod loader;
mod object;
mod packet_sockets;
pub mod pins;
pub mod quarantine;
mod slots;
pub mod stats;
