//! The loader owns the kernel side: it loads the programs, attaches them to each local
//! workload, and writes compiled policies into the maps atomically.
//!
//! Atomic apply: ENDPOINTS and IPCACHE keys carry a slot (0 or 1) and policy ids carry it
//! in their top bit. A new policy is written into the inactive slot, then one write of
//! CONFIG flips `active_slot`; a packet reads CONFIG once, so it sees the old policy or the
//! new one, never a mix. The old slot keeps the old policy, so the next change writes only
//! what differs from it.
//!
//! Maps and links are pinned (see pins.rs): enforcement goes on while the agent is down,
//! and a restarted agent adopts what the maps hold and swaps its programs into the links.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as Table, HashSet},
    fs::File,
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier,
        TcAttachType,
        links::FdLink,
        tc::{self, SchedClassifierLink},
    },
    util::KernelVersion,
};
use ipnet::IpNet;
use stagewall_common::{
    Config, ENDPOINT_KIND_CGROUP, ENDPOINT_KIND_IFINDEX, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS,
    EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, EP_FAIL_OPEN, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, EP_QUARANTINED, EndpointInfo, EndpointKey, EndpointStats, FAMILY_V4,
    FAMILY_V6, FlowKey, FlowValue, GUARD_ENDPOINT_ID, IPCACHE_PREFIX_BITS, IpcacheKey, MAP_CONFIG,
    MAP_COUNTERS, MAP_ENDPOINT_STATS, MAP_ENDPOINTS, MAP_EVENTS, MAP_FLOWS, MAP_IPCACHE,
    MAP_POLICY, MAP_SELF_ADDRS, MODE_AUDIT, MODE_ENFORCE, POLICY_ALLOW, POLICY_SLOT_BIT, PolicyKey,
    SelfAddrKey,
};

use crate::{
    compiler::{Compiled, Endpoint, EndpointIds, slot_policy_id},
    datapath::host::{self, Target},
    datapath::pins::{self, PINNED_MAPS, Pins},
    policy::model::{Attachment, Mode, ObjectName},
};

/// The kernel object, built by build.rs with aya-build and embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stagewall-ebpf"));

const PROG_CGROUP_INGRESS: &str = "stagewall_cgroup_ingress";
const PROG_CGROUP_EGRESS: &str = "stagewall_cgroup_egress";
const PROG_SOCK_ADDR: [&str; 4] = [
    "stagewall_connect4",
    "stagewall_connect6",
    "stagewall_sendmsg4",
    "stagewall_sendmsg6",
];
const PROG_TC_FROM_WORKLOAD: &str = "stagewall_tc_from_workload";
const PROG_TC_TO_WORKLOAD: &str = "stagewall_tc_to_workload";

/// Links of one attached workload, to detach it when it leaves the policy: pinned (the
/// pin holds the link), or, for TC through clsact on kernels before 6.6 (netlink filters,
/// which cannot be pinned), held by the agent and detached when it exits.
#[derive(Default)]
struct Links {
    pinned: Vec<PathBuf>,
    unpinned: Vec<SchedClassifierLink>,
}

/// A local workload the policy in force enforces, as found on this host.
#[derive(Clone, Debug)]
pub struct AttachedWorkload {
    pub workload: ObjectName,
    pub target: Target,
}

/// What one slot of the policy maps holds. Both slots stay filled: the inactive one holds
/// the policy before the one in force, so a change writes only the entries that differ
/// from it (a one-rule change is a handful of map updates, not the whole policy), then
/// switches.
#[derive(Default)]
struct SlotContents {
    endpoints: Table<EndpointKey, EndpointInfo>,
    self_addrs: HashSet<SelfAddrKey>,
    ipcache: Table<(u32, IpcacheKey), u32>,
    policy: HashSet<(u32, PolicyKey)>,
}

impl SlotContents {
    fn len(&self) -> usize {
        self.endpoints.len() + self.self_addrs.len() + self.ipcache.len() + self.policy.len()
    }
}

pub struct Loader {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    self_addrs: HashMap<MapData, SelfAddrKey, u32>,
    ipcache: LpmTrie<MapData, IpcacheKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, u32>,
    cgroup_root: PathBuf,
    current: Config,
    slots: [SlotContents; 2],
    attached: BTreeMap<Target, Links>,
    pins: Pins,
    /// Pin directories of other map layouts, removed once this agent enforces.
    other_layouts: Vec<PathBuf>,
    /// Guard cgroups (paths below the cgroup2 mount): below them, a cgroup in no
    /// workload is denied until a policy names it.
    guards: Vec<String>,
    /// The workloads' and guards' cgroups and interfaces as of the last apply.
    applied_targets: BTreeSet<Target>,
}

/// The endpoint entry of a guard cgroup: isolated both ways without a rule, so what
/// reaches it (a cgroup below it in no workload) is denied as "default deny". A workload
/// not programmed yet (fail mode closed) gets the same flags under its own id.
const GUARD: EndpointInfo = EndpointInfo {
    endpoint_id: GUARD_ENDPOINT_ID,
    ingress_policy: 0,
    egress_policy: 0,
    flags: EP_ISOLATED_INGRESS
        | EP_ISOLATED_EGRESS
        | EP_DEFAULT_DENY_INGRESS
        | EP_DEFAULT_DENY_EGRESS,
};

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

/// Maps the agent reads rather than writes, handed to their readers.
pub struct Readers {
    pub events: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    pub endpoint_stats: PerCpuArray<MapData, EndpointStats>,
    /// The flow table, read only to count its entries (map pressure).
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// How the kernel programs enforce the policy, besides the policy itself (their config map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSettings {
    pub mode: Mode,
    /// Report allowed flows too (flow logs), at most one event per flow a second.
    pub log_allowed: bool,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Loader {
    /// Loads every program into the kernel (the verifier runs here) and takes the maps.
    pub fn load(
        cgroup_root: &Path,
        kernel_log_level: log::LevelFilter,
        pins: Pins,
        guards: Vec<String>,
    ) -> anyhow::Result<(Loader, Readers)> {
        let other_layouts = pins.prepare()?;
        // Kernel-side logging is for troubleshooting only; off the packet path by default.
        let level: u8 = match kernel_log_level {
            log::LevelFilter::Off => 0,
            log::LevelFilter::Error => 1,
            log::LevelFilter::Warn => 2,
            log::LevelFilter::Info => 3,
            log::LevelFilter::Debug => 4,
            log::LevelFilter::Trace => 5,
        };
        let mut ebpf_loader = EbpfLoader::new();
        ebpf_loader.override_global(aya_log::LEVEL, &level, false);
        // Pinned maps that exist are opened (a previous agent's state), others are
        // created and pinned.
        for map in PINNED_MAPS {
            ebpf_loader.map_pin_path(map.name, pins.map(map.name));
        }
        let mut ebpf = ebpf_loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (are you root, with BTF and bpf() allowed?)")?;
        let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("kernel log reader not started: {e}");
                None
            }
        };
        for name in [PROG_CGROUP_INGRESS, PROG_CGROUP_EGRESS] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        for name in PROG_SOCK_ADDR {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        for name in [PROG_TC_FROM_WORKLOAD, PROG_TC_TO_WORKLOAD] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        let readers = Readers {
            events: take(&mut ebpf, MAP_EVENTS)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            endpoint_stats: take(&mut ebpf, MAP_ENDPOINT_STATS)?,
            flows: take(&mut ebpf, MAP_FLOWS)?,
            logs,
        };
        let mut loader = Loader {
            config: take(&mut ebpf, MAP_CONFIG)?,
            endpoints: take(&mut ebpf, MAP_ENDPOINTS)?,
            self_addrs: take(&mut ebpf, MAP_SELF_ADDRS)?,
            ipcache: take(&mut ebpf, MAP_IPCACHE)?,
            policy: take(&mut ebpf, MAP_POLICY)?,
            ebpf,
            cgroup_root: cgroup_root.to_path_buf(),
            current: Config::default(),
            slots: Default::default(),
            attached: BTreeMap::new(),
            pins,
            other_layouts,
            guards,
            applied_targets: BTreeSet::new(),
        };
        loader.adopt().context("reading the pinned maps")?;
        Ok((loader, readers))
    }

    /// Reads what a previous agent left in the pinned maps: the policy in force (CONFIG)
    /// and what each slot holds, so the first apply writes only what differs and switches
    /// as any change does. Fresh maps hold nothing: generation 0, both slots empty.
    fn adopt(&mut self) -> anyhow::Result<()> {
        self.current = self.config.get(&0, 0).context("reading CONFIG")?;
        let mut slots: [SlotContents; 2] = Default::default();
        fn slot(slots: &mut [SlotContents; 2], n: u32) -> anyhow::Result<&mut SlotContents> {
            slots
                .get_mut(n as usize)
                .ok_or_else(|| anyhow!("an entry of slot {n}; expected slot 0 or 1"))
        }
        for entry in self.endpoints.iter() {
            let (key, info) = entry?;
            slot(&mut slots, key.slot)?.endpoints.insert(key, info);
        }
        for key in self.self_addrs.keys() {
            let key = key?;
            slot(&mut slots, key.slot)?.self_addrs.insert(key);
        }
        for entry in self.ipcache.iter() {
            let (key, identity) = entry?;
            let data = key.data();
            slot(&mut slots, u32::from(data.slot))?
                .ipcache
                .insert((key.prefix_len(), data), identity);
        }
        for key in self.policy.keys() {
            let key = key?;
            let data = key.data();
            let n = u32::from(u32::from_be(data.policy_be) & POLICY_SLOT_BIT != 0);
            slot(&mut slots, n)?.policy.insert((key.prefix_len(), data));
        }
        self.slots = slots;
        if self.current.generation > 0 {
            log::info!(
                "adopted the pinned state: policy generation {} in force (slot {}), {} and {} entries in the slots",
                self.current.generation,
                self.current.active_slot,
                self.slots[0].len(),
                self.slots[1].len()
            );
        }
        Ok(())
    }

    /// Once this agent enforces: removes links pinned by an earlier agent for workloads
    /// that are gone, and the pins of other map layouts (an upgrade's old programs, which
    /// ran beside the new ones until now).
    fn remove_stale_pins(&mut self) {
        let keep: BTreeSet<&PathBuf> = self.attached.values().flat_map(|l| &l.pinned).collect();
        for pin in self.pins.links() {
            if !keep.contains(&pin) {
                log::info!("detaching {} (its workload is gone)", pin.display());
                if let Err(e) = std::fs::remove_file(&pin) {
                    log::warn!("removing {}: {e}", pin.display());
                }
            }
        }
        for dir in std::mem::take(&mut self.other_layouts) {
            match pins::remove_all(&dir) {
                Ok(()) => log::warn!(
                    "migrated: removed the pins of another map layout, {}",
                    dir.display()
                ),
                Err(e) => log::error!("removing {}: {e}", dir.display()),
            }
        }
    }

    /// Makes `compiled` the policy in force: attaches to new workloads, writes the inactive
    /// slot, flips, empties the old slot, detaches workloads that left. On an error before
    /// the flip the policy in force is untouched.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        how: ProgramSettings,
        quarantined: &BTreeSet<ObjectName>,
    ) -> anyhow::Result<Vec<AttachedWorkload>> {
        let next_slot = 1 - self.current.active_slot;
        let mut enforced = Vec::new();
        let mut targets = Vec::new();
        for ep in &compiled.endpoints {
            match host::resolve(&self.cgroup_root, &ep.attachment) {
                Ok(target) => targets.push((ep, target)),
                // A workload that has not started yet is known as a peer and enforced
                // once its cgroup or interface exists and the policy is applied again.
                Err(e) => log::warn!("{}: not enforced on this host: {e:#}", ep.workload),
            }
        }
        let guards = self.guard_targets();
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
            if !self.attached.contains_key(target) {
                if let Some(ep) = ep {
                    self.deny_until_programmed(ep, target)?;
                }
                let links = self.attach(target)?;
                self.attached.insert(target.clone(), links);
            }
        }

        let mut desired = SlotContents::default();
        for guard in &guards {
            desired
                .endpoints
                .insert(endpoint_key(next_slot, guard), GUARD);
        }
        for (ep, target) in &targets {
            let info = EndpointInfo {
                endpoint_id: ep.endpoint_id,
                ingress_policy: slot_policy_id(ep.ingress_policy, next_slot),
                egress_policy: slot_policy_id(ep.egress_policy, next_slot),
                flags: if quarantined.contains(&ep.workload) {
                    ep.flags | EP_QUARANTINED
                } else {
                    ep.flags
                },
            };
            desired
                .endpoints
                .insert(endpoint_key(next_slot, target), info);
            for addr in &ep.addresses {
                desired
                    .self_addrs
                    .insert(self_addr_key(next_slot, ep.endpoint_id, *addr));
            }
            enforced.push(AttachedWorkload {
                workload: ep.workload.clone(),
                target: target.clone(),
            });
        }
        for (prefix, identity) in compiled.ipcache() {
            let key = ipcache_key(next_slot, prefix);
            desired
                .ipcache
                .insert((key.prefix_len(), key.data()), *identity);
        }
        for entry in &compiled.policy {
            desired.policy.insert(entry.lpm_key(next_slot));
        }
        if let Err(e) = self.write_slot(next_slot, &desired) {
            // Nothing was switched: empty the half-written slot (the next change writes it
            // whole) and keep the policy in force.
            self.empty_slot(next_slot, &desired);
            return Err(e);
        }
        self.slots[next_slot as usize] = desired;

        let next = Config {
            active_slot: next_slot,
            mode: match how.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Audit => MODE_AUDIT,
            },
            generation: self.current.generation + 1,
            log_allowed: u32::from(how.log_allowed),
        };
        self.config.set(0, next, 0).context("writing CONFIG")?;
        self.current = next;

        self.applied_targets = targets
            .iter()
            .map(|(_, t)| t.clone())
            .chain(guards.iter().cloned())
            .collect();
        let keep: BTreeSet<&Target> = to_attach.iter().map(|(_, t)| *t).collect();
        let gone: Vec<Target> = self
            .attached
            .keys()
            .filter(|t| !keep.contains(t))
            .cloned()
            .collect();
        for target in gone {
            if let Some(links) = self.attached.remove(&target)
                && let Err(e) = self.detach(links)
            {
                log::warn!("detaching from {target:?}: {e:#}");
            }
        }
        self.remove_stale_pins();
        Ok(enforced)
    }

    /// A workload about to get its programs, with fail mode closed: until the switch to
    /// the policy being written, the policy in force (the active slot) denies it
    /// everything. Nothing reads that slot's entry for it before its programs are attached,
    /// so the write races nothing; a workload the active slot already holds (an adopted
    /// policy) keeps its entry.
    fn deny_until_programmed(&mut self, ep: &Endpoint, target: &Target) -> anyhow::Result<()> {
        if ep.flags & EP_FAIL_OPEN != 0 {
            return Ok(());
        }
        let active = self.current.active_slot;
        let key = endpoint_key(active, target);
        let held = &mut self.slots[active as usize & 1];
        if held.endpoints.contains_key(&key) {
            return Ok(());
        }
        // An audited workload is reported, not denied, meanwhile too.
        let pending = EndpointInfo {
            endpoint_id: ep.endpoint_id,
            flags: GUARD.flags | ep.flags & (EP_AUDIT_INGRESS | EP_AUDIT_EGRESS),
            ..GUARD
        };
        self.endpoints
            .insert(key, pending, 0)
            .context("writing ENDPOINTS")?;
        held.endpoints.insert(key, pending);
        Ok(())
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
            .filter_map(|ep| host::resolve(&self.cgroup_root, &ep.attachment).ok())
            .chain(self.guard_targets())
            .collect()
    }

    /// The guard cgroups that exist.
    fn guard_targets(&self) -> Vec<Target> {
        self.guards
            .iter()
            .filter_map(|path| {
                host::resolve(&self.cgroup_root, &Attachment::Cgroup(path.clone()))
                    .map_err(|e| log::warn!("guard cgroup {path}: {e:#}"))
                    .ok()
            })
            .collect()
    }

    /// The endpoint ids the policy in force (a previous agent's, adopted from the pinned
    /// maps) gives the workloads of `compiled` that it enforces: flows, event limits and
    /// statistics are keyed by them, so a restarted agent keeps them.
    pub fn adopted_endpoint_ids(&self, compiled: &Compiled) -> EndpointIds {
        let active = &self.slots[self.current.active_slot as usize & 1];
        compiled
            .endpoints
            .iter()
            .filter_map(|ep| {
                let target = host::resolve(&self.cgroup_root, &ep.attachment).ok()?;
                let info = active
                    .endpoints
                    .get(&endpoint_key(self.current.active_slot, &target))?;
                (info.endpoint_id != GUARD_ENDPOINT_ID)
                    .then(|| (ep.workload.clone(), info.endpoint_id))
            })
            .collect()
    }

    pub fn has_guards(&self) -> bool {
        !self.guards.is_empty()
    }

    pub fn generation(&self) -> u32 {
        self.current.generation
    }

    /// Makes the (inactive) slot hold `desired`: removes what it holds and `desired` does
    /// not, writes what differs.
    fn write_slot(&mut self, slot: u32, desired: &SlotContents) -> anyhow::Result<()> {
        let held = &self.slots[slot as usize];
        for key in held
            .endpoints
            .keys()
            .filter(|k| !desired.endpoints.contains_key(k))
        {
            self.endpoints
                .remove(key)
                .context("removing from ENDPOINTS")?;
        }
        for key in held.self_addrs.difference(&desired.self_addrs) {
            self.self_addrs
                .remove(key)
                .context("removing from SELF_ADDRS")?;
        }
        for (len, data) in held
            .ipcache
            .keys()
            .filter(|k| !desired.ipcache.contains_key(k))
        {
            self.ipcache
                .remove(&Key::new(*len, *data))
                .context("removing from IPCACHE")?;
        }
        for (len, data) in held.policy.difference(&desired.policy) {
            self.policy
                .remove(&Key::new(*len, *data))
                .context("removing from POLICY")?;
        }
        for (key, info) in &desired.endpoints {
            if held.endpoints.get(key) != Some(info) {
                self.endpoints
                    .insert(key, info, 0)
                    .context("writing ENDPOINTS")?;
            }
        }
        for key in desired.self_addrs.difference(&held.self_addrs) {
            self.self_addrs
                .insert(key, 1, 0)
                .context("writing SELF_ADDRS")?;
        }
        for ((len, data), identity) in &desired.ipcache {
            if held.ipcache.get(&(*len, *data)) != Some(identity) {
                self.ipcache
                    .insert(&Key::new(*len, *data), identity, 0)
                    .context("writing IPCACHE")?;
            }
        }
        for (len, data) in desired.policy.difference(&held.policy) {
            self.policy
                .insert(&Key::new(*len, *data), POLICY_ALLOW, 0)
                .context("writing POLICY")?;
        }
        Ok(())
    }

    /// Removes everything the slot may hold after a failed write: what it held and what
    /// was being written.
    fn empty_slot(&mut self, slot: u32, desired: &SlotContents) {
        let held = std::mem::take(&mut self.slots[slot as usize]);
        for contents in [&held, desired] {
            for key in contents.endpoints.keys() {
                let _ = self.endpoints.remove(key);
            }
            for key in &contents.self_addrs {
                let _ = self.self_addrs.remove(key);
            }
            for (len, data) in contents.ipcache.keys() {
                let _ = self.ipcache.remove(&Key::new(*len, *data));
            }
            for (len, data) in &contents.policy {
                let _ = self.policy.remove(&Key::new(*len, *data));
            }
        }
    }

    fn attach(&mut self, target: &Target) -> anyhow::Result<Links> {
        let mut links = Links::default();
        match target {
            Target::Cgroup { dir, .. } => {
                let cgroup =
                    File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
                // Attached as bpf links (kernel 5.7+): links always run beside other
                // programs on the same cgroup (systemd's, another agent's) and take no
                // attach flags; BPF_F_ALLOW_MULTI here is EINVAL.
                let mode = CgroupAttachMode::Single;
                for (name, attach_type) in [
                    (PROG_CGROUP_INGRESS, CgroupSkbAttachType::Ingress),
                    (PROG_CGROUP_EGRESS, CgroupSkbAttachType::Egress),
                ] {
                    let pin = self.pins.link(target, name);
                    let prog = program::<CgroupSkb>(&mut self.ebpf, name)?;
                    let fd = prog.fd()?.try_clone()?;
                    pinned_link(&pin, fd.as_fd(), || {
                        let id = prog
                            .attach(&cgroup, attach_type, mode)
                            .with_context(|| format!("attaching {name} to {}", dir.display()))?;
                        Ok(FdLink::try_from(prog.take_link(id)?)?)
                    })?;
                    links.pinned.push(pin);
                }
                for name in PROG_SOCK_ADDR {
                    let pin = self.pins.link(target, name);
                    let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
                    let fd = prog.fd()?.try_clone()?;
                    pinned_link(&pin, fd.as_fd(), || {
                        let id = prog
                            .attach(&cgroup, mode)
                            .with_context(|| format!("attaching {name} to {}", dir.display()))?;
                        Ok(FdLink::try_from(prog.take_link(id)?)?)
                    })?;
                    links.pinned.push(pin);
                }
                log::info!("attached to cgroup {}", dir.display());
            }
            Target::Interface { name, .. } => {
                // tcx (kernel 6.6+) needs no qdisc; older kernels attach through clsact,
                // netlink filters that cannot be pinned.
                let clsact =
                    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0));
                if clsact {
                    if let Err(e) = tc::qdisc_add_clsact(name) {
                        log::debug!("clsact on {name}: {e}");
                    }
                    log::warn!(
                        "{name}: TC through clsact (kernel before 6.6) cannot be pinned; it is detached when the agent exits"
                    );
                }
                for (prog_name, attach_type) in [
                    (PROG_TC_FROM_WORKLOAD, TcAttachType::Ingress),
                    (PROG_TC_TO_WORKLOAD, TcAttachType::Egress),
                ] {
                    let prog = program::<SchedClassifier>(&mut self.ebpf, prog_name)?;
                    let pin = self.pins.link(target, prog_name);
                    let fd = prog.fd()?.try_clone()?;
                    let mut attach = || {
                        let id = prog
                            .attach(name, attach_type)
                            .with_context(|| format!("attaching {prog_name} to {name}"))?;
                        anyhow::Ok(prog.take_link(id)?)
                    };
                    if clsact {
                        links.unpinned.push(attach()?);
                    } else {
                        pinned_link(&pin, fd.as_fd(), || Ok(FdLink::try_from(attach()?)?))?;
                        links.pinned.push(pin);
                    }
                }
                log::info!("attached to interface {name}");
            }
        }
        Ok(links)
    }

    /// Unpins a workload's links, which detaches them.
    fn detach(&mut self, links: Links) -> anyhow::Result<()> {
        for pin in &links.pinned {
            std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
        }
        drop(links.unpinned);
        Ok(())
    }
}

/// Makes `pin` hold `program`'s link: swaps the program into the link pinned there, if
/// there is one (a restarted or upgraded agent takes over without a moment of the hook
/// running no program), else attaches it anew with `attach` and pins the link.
fn pinned_link(
    pin: &Path,
    program: BorrowedFd<'_>,
    attach: impl FnOnce() -> anyhow::Result<FdLink>,
) -> anyhow::Result<()> {
    if pin.exists() {
        match pins::update_link(pin, program) {
            Ok(()) => return Ok(()),
            // A link whose cgroup or interface went away cannot take a program.
            Err(e) => {
                log::warn!(
                    "{}: cannot replace its program ({e}); attaching anew",
                    pin.display()
                );
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    attach()?
        .pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.try_into()?)
}

fn endpoint_key(slot: u32, target: &Target) -> EndpointKey {
    match target {
        Target::Cgroup { id, .. } => EndpointKey {
            slot,
            kind: ENDPOINT_KIND_CGROUP,
            id: *id,
        },
        Target::Interface { ifindex, .. } => EndpointKey {
            slot,
            kind: ENDPOINT_KIND_IFINDEX,
            id: *ifindex as u64,
        },
    }
}

/// An address as the kernel programs hold it: family, and the bytes (IPv4 in the first 4).
fn family_and_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    match addr {
        IpAddr::V4(a) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

fn self_addr_key(slot: u32, endpoint_id: u32, addr: IpAddr) -> SelfAddrKey {
    let (family, addr) = family_and_bytes(addr);
    SelfAddrKey {
        slot,
        endpoint_id,
        family,
        _pad: [0; 3],
        addr,
    }
}

/// The IPCACHE key of a prefix: slot and family bytes, then the address.
pub fn ipcache_key(slot: u32, prefix: &IpNet) -> Key<IpcacheKey> {
    let (family, addr) = family_and_bytes(prefix.addr());
    let data = IpcacheKey {
        slot: slot as u8,
        family,
        addr,
        _pad: [0; 2],
    };
    Key::new(IPCACHE_PREFIX_BITS + prefix.prefix_len() as u32, data)
}
