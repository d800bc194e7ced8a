//! The loader is the kernel side as the agent sees it: it loads the programs
//! (object.rs), attaches them to each local workload (attach.rs), and makes a compiled
//! policy the one in force with one atomic switch (slots.rs). It decides what goes where:
//! which workloads and guard cgroups are found on this host, which need links of their
//! own, and what a workload not programmed yet meets meanwhile.
//!
//! Maps and links are pinned (see pins.rs): enforcement goes on while the agent is down,
//! and a restarted agent adopts what the maps hold and swaps its programs into the links.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use stagewall_common::{
    Config, ENDPOINT_ID_LIMIT, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_FAIL_OPEN, EP_NAME_RULES,
    EP_SNI_CHECK, EndpointInfo, GUARD_ENDPOINT_ID, MODE_AUDIT, MODE_ENFORCE,
};

pub use crate::datapath::object::Readers;
use crate::{
    compiler::{Compiled, Endpoint, EndpointIds},
    datapath::{
        attach::Attachments,
        error::DatapathError,
        host::{self, Target},
        inspect::{KernelFeatures, TcMode},
        object, packet_sockets,
        pins::Pins,
        slots::{GUARD, SlotContents, Slots, UNGUARDED, endpoint_key},
        stats::KernelStats,
    },
    policy::{
        error::Chain,
        model::{Attachment, Mode, ObjectName},
    },
};

/// A local workload the policy in force enforces, as found on this host.
#[derive(Clone, Debug)]
pub struct AttachedWorkload {
    pub workload: ObjectName,
    pub target: Target,
    /// Below a guard cgroup: the guard's programs cover it.
    pub guarded: bool,
}

/// How the kernel programs enforce the policy, besides the policy itself (their config map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSettings {
    pub mode: Mode,
    /// Report allowed flows too (flow logs), at most one event per flow a second.
    pub log_allowed: bool,
    /// Workloads with name rules (EP_NAME_RULES) get the SNI check (EP_SNI_CHECK).
    pub sni_check: bool,
}

pub struct Loader {
    cgroup_root: PathBuf,
    /// The programs and their links.
    attachments: Attachments,
    /// The policy maps, both slots, and which is in force.
    slots: Slots,
    stats: KernelStats,
    /// The kernel runs the packet-socket guard (packet_sockets.rs).
    packet_socket_guard: bool,
    /// Guard cgroups (paths below the cgroup2 mount): below them, a cgroup in no
    /// workload is denied until a policy names it.
    guards: Vec<String>,
    /// The agent's own cgroup, never guarded (it must reach the API server to learn
    /// anything); with the unguarded cgroups each policy names.
    own_cgroup: Option<String>,
    /// The workloads' and guards' cgroups and interfaces as of the last apply.
    applied_targets: BTreeSet<Target>,
}

/// Whether a workload's target lies below a guard cgroup (whose programs then cover it).
fn guarded(target: &Target, guards: &[Target]) -> bool {
    let Target::Cgroup { dir, .. } = target else {
        return false;
    };
    guards.iter().any(|g| match g {
        Target::Cgroup { dir: guard, .. } => dir != guard && dir.starts_with(guard),
        Target::Interface { .. } => false,
    })
}

/// Lets the agent's own cgroup through guards that a previous agent left in force (the
/// pinned policy), before this agent connects to anything: a new agent pod is below the
/// guard like every pod, and would otherwise be denied the API server that tells it what
/// to enforce. Writes the node entry into the slot in force (no agent runs meanwhile);
/// the next apply keeps it. False when nothing is pinned (no guard is in force).
pub fn let_own_cgroup_through(
    pins: &Pins,
    cgroup_root: &Path,
    own_cgroup: &str,
) -> Result<bool, DatapathError> {
    let target = host::resolve(cgroup_root, &Attachment::Cgroup(own_cgroup.to_string())).map_err(
        |source| DatapathError::OwnCgroup {
            path: own_cgroup.to_string(),
            source,
        },
    )?;
    Slots::add_to_pinned_active(pins, &target, UNGUARDED)
}

impl Loader {
    /// Loads every program into the kernel (the verifier runs here), takes the maps and
    /// adopts what a previous agent left in the pinned ones.
    pub fn load(
        cgroup_root: &Path,
        kernel_log_level: log::LevelFilter,
        pins: Pins,
        guards: Vec<String>,
        own_cgroup: Option<String>,
    ) -> Result<(Loader, Readers), DatapathError> {
        let other_layouts = pins.prepare()?;
        let mut object = object::load(&pins, kernel_log_level)?;
        let slots =
            Slots::adopt(object.policy_maps).map_err(|e| DatapathError::Adopt(Box::new(e)))?;
        let packet_socket_guard = packet_sockets::guard(&mut object.ebpf, &pins, &object.stats);
        let loader = Loader {
            packet_socket_guard,
            cgroup_root: cgroup_root.to_path_buf(),
            attachments: Attachments::new(object.ebpf, pins, other_layouts),
            slots,
            stats: object.stats,
            guards,
            own_cgroup,
            applied_targets: BTreeSet::new(),
        };
        Ok((loader, object.readers))
    }

    /// Does the kernel refuse isolated workloads packet and XDP sockets (BPF LSM)?
    pub fn packet_socket_guard(&self) -> bool {
        self.packet_socket_guard
    }

    /// Makes `compiled` the policy in force: attaches to new workloads, writes the inactive
    /// slot, flips, detaches workloads that left. On an error before the flip the policy in
    /// force is untouched.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        how: ProgramSettings,
        quarantined: &BTreeSet<ObjectName>,
    ) -> Result<Vec<AttachedWorkload>, DatapathError> {
        let next_slot = 1 - self.slots.active();
        let mut targets = Vec::new();
        for ep in &compiled.endpoints {
            for attachment in ep.attachments() {
                match host::resolve(&self.cgroup_root, &attachment) {
                    Ok(target) => targets.push((ep, target)),
                    // A workload that has not started yet is known as a peer and enforced
                    // once its cgroup or interface exists and the policy is applied again.
                    Err(e) => {
                        log::warn!("{}: not enforced on this host: {}", ep.workload, Chain(&e))
                    }
                }
            }
        }
        let guards = self.guard_targets();
        let node = self.unguarded_targets(compiled);
        // Workloads below a guard need no links of their own: the guard's programs run
        // for every cgroup below it and find the nearest endpoint.
        let to_attach: Vec<(Option<&Endpoint>, &Target)> = guards
            .iter()
            .map(|g| (None, g))
            .chain(
                targets
                    .iter()
                    .filter(|(_, t)| !guarded(t, &guards))
                    .map(|(ep, t)| (Some(*ep), t)),
            )
            .collect();
        for &(ep, target) in &to_attach {
            if !self.attachments.is_attached(target) {
                if let Some(ep) = ep {
                    self.deny_until_programmed(ep, target)?;
                }
                self.attachments.attach(target)?;
            }
        }

        let mut desired =
            SlotContents::for_policy(next_slot, compiled, &targets, &guards, &node, quarantined);
        if how.sni_check {
            desired.add_flag_where(EP_NAME_RULES, EP_SNI_CHECK);
        }
        self.slots.fill(next_slot, desired)?;
        self.slots.switch(Config {
            active_slot: next_slot,
            mode: match how.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Audit => MODE_AUDIT,
            },
            generation: self.slots.generation() + 1,
            log_allowed: u32::from(how.log_allowed),
        })?;

        let enforced = targets
            .iter()
            .map(|(ep, target)| AttachedWorkload {
                workload: ep.workload.clone(),
                target: target.clone(),
                guarded: guarded(target, &guards),
            })
            .collect();
        self.applied_targets = targets
            .iter()
            .map(|(_, t)| t.clone())
            .chain(guards.iter().cloned())
            .chain(node.iter().cloned())
            .collect();
        let keep: BTreeSet<&Target> = to_attach.iter().map(|(_, t)| *t).collect();
        self.attachments.detach_all_but(&keep);
        self.attachments.remove_stale_pins();
        Ok(enforced)
    }

    /// A workload about to get its programs, with fail mode closed: until the switch to
    /// the policy being written, the policy in force (the active slot) denies it
    /// everything. Nothing reads that slot's entry for it before its programs are attached,
    /// so the write races nothing; a workload the active slot already holds (an adopted
    /// policy) keeps its entry.
    fn deny_until_programmed(
        &mut self,
        ep: &Endpoint,
        target: &Target,
    ) -> Result<(), DatapathError> {
        if ep.flags & EP_FAIL_OPEN != 0 {
            return Ok(());
        }
        let key = endpoint_key(self.slots.active(), target);
        if self.slots.active_endpoint(&key).is_some() {
            return Ok(());
        }
        // An audited workload is reported, not denied, meanwhile too.
        let pending = EndpointInfo {
            endpoint_id: ep.endpoint_id,
            flags: GUARD.flags | ep.flags & (EP_AUDIT_INGRESS | EP_AUDIT_EGRESS),
            ..GUARD
        };
        self.slots.add_to_active(key, pending)
    }

    /// Whether the workloads of `compiled` now resolve to other cgroups or interfaces than
    /// those attached: one started, stopped or was recreated since the last apply.
    pub fn targets_changed(&self, compiled: &Compiled) -> bool {
        self.resolved_targets(compiled) != self.applied_targets
    }

    /// Where the workloads and guards of `compiled` are on this host now.
    fn resolved_targets(&self, compiled: &Compiled) -> BTreeSet<Target> {
        compiled
            .endpoints
            .iter()
            .flat_map(|ep| ep.attachments())
            .filter_map(|attachment| host::resolve(&self.cgroup_root, &attachment).ok())
            .chain(self.guard_targets())
            .chain(self.unguarded_targets(compiled))
            .collect()
    }

    /// The cgroups below a guard that it must not deny, as far as they exist: the agent's
    /// and those `compiled` names (host-network pods, pods enforced by TC). Without guards
    /// nothing denies them anyway.
    fn unguarded_targets(&self, compiled: &Compiled) -> Vec<Target> {
        if self.guards.is_empty() {
            return Vec::new();
        }
        self.own_cgroup
            .iter()
            .chain(&compiled.unguarded_cgroups)
            .filter_map(|path| {
                host::resolve(&self.cgroup_root, &Attachment::Cgroup(path.clone())).ok()
            })
            .collect()
    }

    /// The guard cgroups that exist.
    fn guard_targets(&self) -> Vec<Target> {
        self.guards
            .iter()
            .filter_map(|path| {
                host::resolve(&self.cgroup_root, &Attachment::Cgroup(path.clone()))
                    .map_err(|e| log::warn!("guard cgroup {path}: {}", Chain(&e)))
                    .ok()
            })
            .collect()
    }

    /// The endpoint ids the policy in force (a previous agent's, adopted from the pinned
    /// maps) gives the workloads of `compiled` that it enforces: flows, event limits and
    /// statistics are keyed by them, so a restarted agent keeps them.
    pub fn adopted_endpoint_ids(&self, compiled: &Compiled) -> EndpointIds {
        compiled
            .endpoints
            .iter()
            .filter_map(|ep| {
                let target = host::resolve(&self.cgroup_root, &ep.attachment).ok()?;
                let info = self
                    .slots
                    .active_endpoint(&endpoint_key(self.slots.active(), &target))?;
                // The guard's and the unguarded entries' ids are nobody's.
                (info.endpoint_id != GUARD_ENDPOINT_ID && info.endpoint_id < ENDPOINT_ID_LIMIT)
                    .then(|| (ep.workload.clone(), info.endpoint_id))
            })
            .collect()
    }

    /// The kernel features the programs use now: how TC attaches, where the programs
    /// are attached and through which hooks, the LSM guard.
    pub fn features(&self) -> KernelFeatures {
        let (cgroups_attached, interfaces_attached) = self.attachments.attached();
        KernelFeatures {
            tc: TcMode::of_running_kernel(),
            cgroups_attached,
            interfaces_attached,
            cgroup_hooks: object::cgroup_programs().map(String::from).collect(),
            tc_hooks: object::tc_programs().map(String::from).collect(),
            lsm_packet_socket_guard: self.packet_socket_guard,
        }
    }

    /// The kernel's counters and per-endpoint statistics.
    pub fn stats(&self) -> &KernelStats {
        &self.stats
    }

    pub fn has_guards(&self) -> bool {
        !self.guards.is_empty()
    }

    pub fn generation(&self) -> u32 {
        self.slots.generation()
    }
}
