//! The loader owns the kernel side: it loads the programs, attaches them to each local
//! workload, and writes compiled policies into the maps atomically.
//!
//! Atomic apply: ENDPOINTS and IPCACHE keys carry a slot (0 or 1) and policy ids carry it
//! in their top bit. A new policy is written into the inactive slot, then one write of
//! CONFIG flips `active_slot`; a packet reads CONFIG once, so it sees the old policy or the
//! new one, never a mix. The old slot keeps the old policy, so the next change writes only
//! what differs from it.
//!
//! Nothing is pinned yet: when the agent exits, the kernel detaches every link it made.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as Table, HashSet},
    fs::File,
    net::IpAddr,
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
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        tc::{self, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use ipnet::IpNet;
use stagewall_common::{
    Config, ENDPOINT_KIND_CGROUP, ENDPOINT_KIND_IFINDEX, EP_QUARANTINED, EndpointInfo, EndpointKey,
    EndpointStats, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, IPCACHE_PREFIX_BITS, IpcacheKey,
    MAP_CONFIG, MAP_COUNTERS, MAP_ENDPOINT_STATS, MAP_ENDPOINTS, MAP_EVENTS, MAP_FLOWS,
    MAP_IPCACHE, MAP_POLICY, MAP_SELF_ADDRS, MODE_AUDIT, MODE_ENFORCE, POLICY_ALLOW, PolicyKey,
    SelfAddrKey,
};

use crate::{
    compiler::{Compiled, slot_policy_id},
    host::{self, Target},
    policy::model::ObjectName,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Drop what policy denies.
    Enforce,
    /// Drop nothing; report what enforce mode would drop.
    Audit,
}

/// Links of one attached workload, to detach it when it leaves the policy.
enum Links {
    Cgroup {
        ingress: CgroupSkbLinkId,
        egress: CgroupSkbLinkId,
        sock_addr: Vec<(&'static str, CgroupSockAddrLinkId)>,
    },
    Tc {
        from_workload: SchedClassifierLinkId,
        to_workload: SchedClassifierLinkId,
    },
}

/// A local workload the policy in force enforces, as found on this host.
#[derive(Clone, Debug)]
pub struct Enforced {
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

/// How the policy is enforced, besides the policy itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforcement {
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
    ) -> anyhow::Result<(Loader, Readers)> {
        // Kernel-side logging is for troubleshooting only; off the packet path by default.
        let level: u8 = match kernel_log_level {
            log::LevelFilter::Off => 0,
            log::LevelFilter::Error => 1,
            log::LevelFilter::Warn => 2,
            log::LevelFilter::Info => 3,
            log::LevelFilter::Debug => 4,
            log::LevelFilter::Trace => 5,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
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
        let loader = Loader {
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
        };
        Ok((loader, readers))
    }

    /// Makes `compiled` the policy in force: attaches to new workloads, writes the inactive
    /// slot, flips, empties the old slot, detaches workloads that left. On an error before
    /// the flip the policy in force is untouched.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        how: Enforcement,
        quarantined: &BTreeSet<ObjectName>,
    ) -> anyhow::Result<Vec<Enforced>> {
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
        for (_, target) in &targets {
            if !self.attached.contains_key(target) {
                let links = self.attach(target)?;
                self.attached.insert(target.clone(), links);
            }
        }

        let mut desired = SlotContents::default();
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
            enforced.push(Enforced {
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

        let keep: BTreeSet<&Target> = targets.iter().map(|(_, t)| t).collect();
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
        Ok(enforced)
    }

    /// Whether the workloads of `compiled` now resolve to other cgroups or interfaces than
    /// those attached: one started, stopped or was recreated since the last apply.
    pub fn targets_changed(&self, compiled: &Compiled) -> bool {
        let now: BTreeSet<Target> = compiled
            .endpoints
            .iter()
            .filter_map(|ep| host::resolve(&self.cgroup_root, &ep.attachment).ok())
            .collect();
        now.iter().ne(self.attached.keys())
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
        match target {
            Target::Cgroup { dir, .. } => {
                let cgroup =
                    File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
                // Attached as bpf links (kernel 5.7+): links always run beside other
                // programs on the same cgroup (systemd's, another agent's) and take no
                // attach flags; BPF_F_ALLOW_MULTI here is EINVAL.
                let mode = CgroupAttachMode::Single;
                let ingress = program::<CgroupSkb>(&mut self.ebpf, PROG_CGROUP_INGRESS)?
                    .attach(&cgroup, CgroupSkbAttachType::Ingress, mode)
                    .with_context(|| {
                        format!("attaching cgroup_skb/ingress to {}", dir.display())
                    })?;
                let egress = program::<CgroupSkb>(&mut self.ebpf, PROG_CGROUP_EGRESS)?
                    .attach(&cgroup, CgroupSkbAttachType::Egress, mode)
                    .with_context(|| format!("attaching cgroup_skb/egress to {}", dir.display()))?;
                let mut sock_addr = Vec::new();
                for name in PROG_SOCK_ADDR {
                    let id = program::<CgroupSockAddr>(&mut self.ebpf, name)?
                        .attach(&cgroup, mode)
                        .with_context(|| format!("attaching {name} to {}", dir.display()))?;
                    sock_addr.push((name, id));
                }
                log::info!("attached to cgroup {}", dir.display());
                Ok(Links::Cgroup {
                    ingress,
                    egress,
                    sock_addr,
                })
            }
            Target::Interface { name, .. } => {
                // tcx (kernel 6.6+) needs no qdisc; older kernels attach through clsact.
                if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0))
                    && let Err(e) = tc::qdisc_add_clsact(name)
                {
                    log::debug!("clsact on {name}: {e}");
                }
                let from_workload =
                    program::<SchedClassifier>(&mut self.ebpf, PROG_TC_FROM_WORKLOAD)?
                        .attach(name, TcAttachType::Ingress)
                        .with_context(|| format!("attaching tc ingress to {name}"))?;
                let to_workload = program::<SchedClassifier>(&mut self.ebpf, PROG_TC_TO_WORKLOAD)?
                    .attach(name, TcAttachType::Egress)
                    .with_context(|| format!("attaching tc egress to {name}"))?;
                log::info!("attached to interface {name}");
                Ok(Links::Tc {
                    from_workload,
                    to_workload,
                })
            }
        }
    }

    fn detach(&mut self, links: Links) -> anyhow::Result<()> {
        match links {
            Links::Cgroup {
                ingress,
                egress,
                sock_addr,
            } => {
                program::<CgroupSkb>(&mut self.ebpf, PROG_CGROUP_INGRESS)?.detach(ingress)?;
                program::<CgroupSkb>(&mut self.ebpf, PROG_CGROUP_EGRESS)?.detach(egress)?;
                for (name, id) in sock_addr {
                    program::<CgroupSockAddr>(&mut self.ebpf, name)?.detach(id)?;
                }
            }
            Links::Tc {
                from_workload,
                to_workload,
            } => {
                program::<SchedClassifier>(&mut self.ebpf, PROG_TC_FROM_WORKLOAD)?
                    .detach(from_workload)?;
                program::<SchedClassifier>(&mut self.ebpf, PROG_TC_TO_WORKLOAD)?
                    .detach(to_workload)?;
            }
        }
        Ok(())
    }
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
