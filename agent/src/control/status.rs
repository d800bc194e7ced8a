//! `stagewall status`: what the running agent says of itself over the control socket
//! (like `cilium status`), as one value the agent fills (agent/inspect.rs) and the client
//! prints as text, JSON or YAML.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{build_info::BuildInfo, datapath::inspect::KernelFeatures, policy::model::Mode};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's mode (`--mode`).
    pub mode: Mode,
    /// Workloads audited whatever the agent's mode (a Pipeline or policy in audit mode).
    pub audited_workloads: Vec<String>,
    pub policy: PolicyStatus,
    pub workloads: WorkloadCounts,
    /// Entries against capacity of each kernel map that can fill (per slot for the
    /// policy maps: each slot holds a whole policy).
    pub maps: Vec<MapPressure>,
    pub events: EventCounts,
    pub kernel: KernelFeatures,
    /// The pin layout (MAP_LAYOUT_VERSION) and where the pins are.
    pub pin_layout_version: u32,
    pub pins: String,
    pub build: BuildInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The generation in force (counts applied policies; events carry it).
    pub generation: u32,
    /// When it was applied (RFC 3339, UTC); None before the first apply.
    pub applied_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadCounts {
    /// Workloads the policy in force enforces on this node (found on this host).
    pub enforced: usize,
    /// Of them, those below a guard cgroup (the guard's programs cover them).
    pub guarded: usize,
    pub quarantined: usize,
    pub quarantined_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPressure {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events that did not fit in the ring buffer.
    pub lost: u64,
    /// Events the per-flow rate limit suppressed.
    pub suppressed: u64,
}

impl Status {
    /// The text `stagewall status` prints; wide adds each map and hook.
    pub fn text(&self, wide: bool) -> String {
        let mut out = String::new();
        let audited = if self.audited_workloads.is_empty() {
            String::new()
        } else {
            format!(
                " ({} audited: {})",
                self.audited_workloads.len(),
                self.audited_workloads.join(", ")
            )
        };
        let _ = writeln!(out, "Mode:         {}{audited}", self.mode.name());
        let _ = writeln!(
            out,
            "Policy:       generation {}, applied {}",
            self.policy.generation,
            self.policy.applied_at.as_deref().unwrap_or("never")
        );
        let quarantined = if self.workloads.quarantined_names.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.workloads.quarantined_names.join(", "))
        };
        let _ = writeln!(
            out,
            "Workloads:    {} enforced, {} guarded, {} quarantined{quarantined}",
            self.workloads.enforced, self.workloads.guarded, self.workloads.quarantined
        );
        let fullest = self.maps.iter().max_by(|a, b| fill(a).total_cmp(&fill(b)));
        if let Some(m) = fullest {
            let _ = writeln!(
                out,
                "Maps:         fullest {} {}/{} ({:.1}%)",
                m.map,
                m.entries,
                m.capacity,
                fill(m) * 100.0
            );
        }
        if wide {
            for m in &self.maps {
                let _ = writeln!(
                    out,
                    "  {:<12} {:>8}/{:<8} {:>5.1}%",
                    m.map,
                    m.entries,
                    m.capacity,
                    fill(m) * 100.0
                );
            }
        }
        let _ = writeln!(
            out,
            "Events:       {} lost, {} suppressed",
            self.events.lost, self.events.suppressed
        );
        let k = &self.kernel;
        let tc = match k.tc {
            crate::datapath::inspect::TcMode::Tcx => "tcx",
            crate::datapath::inspect::TcMode::Clsact => "clsact",
        };
        let _ = writeln!(
            out,
            "Kernel:       {} (cgroup hooks on {} cgroups, TC through {tc} on {} interfaces, LSM packet-socket guard {})",
            self.build.kernel,
            k.cgroups_attached,
            k.interfaces_attached,
            if k.lsm_packet_socket_guard {
                "on"
            } else {
                "off"
            }
        );
        if wide {
            let _ = writeln!(out, "  cgroup hooks: {}", k.cgroup_hooks.join(", "));
            let _ = writeln!(out, "  tc hooks:     {}", k.tc_hooks.join(", "));
        }
        let _ = writeln!(
            out,
            "Pins:         layout v{} in {}",
            self.pin_layout_version, self.pins
        );
        let _ = writeln!(
            out,
            "Build:        stagewall {} (commit {})",
            self.build.version, self.build.commit
        );
        out
    }
}

/// How full a map is, 0 to 1.
fn fill(m: &MapPressure) -> f64 {
    if m.capacity == 0 {
        0.0
    } else {
        m.entries as f64 / f64::from(m.capacity)
    }
}
