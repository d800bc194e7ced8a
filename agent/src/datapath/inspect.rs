//! What the kernel holds now, read back from the pinned maps for `stagewall status` and
//! `stagewall get`: the policy slot in force (CONFIG), its endpoints, IP cache and policy
//! entries, the flow table, and which hooks the programs are attached through. Keys are
//! decoded by compiler::map_keys (their one owner); nothing here is written. The maps
//! are opened by their pins, not through the loader: a read sees what the kernel
//! programs see, not the agent's copy of what it wrote.

use std::{net::IpAddr, path::PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, lpm_trie::LpmTrie};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use stagewall_common::{
    Config, ENDPOINT_KIND_CGROUP, ENDPOINT_KIND_IFINDEX, EndpointInfo, EndpointKey, FlowKey,
    FlowValue, IpcacheKey, MAP_CONFIG, MAP_ENDPOINTS, MAP_FLOWS, MAP_IPCACHE, MAP_POLICY,
    PolicyKey,
};

use crate::{
    compiler::{PolicyEntry, map_keys},
    datapath::{dns::ip_of, error::DatapathError, pins::Pins},
    policy::model::Direction,
};

/// How the TC programs are attached to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// tcx links (kernel 6.6+), pinned.
    Tcx,
    /// clsact qdisc filters (older kernels): not pinned, detached when the agent exits.
    Clsact,
}

impl TcMode {
    /// What this kernel gets: tcx from 6.6 on.
    pub fn of_running_kernel() -> TcMode {
        use aya::util::KernelVersion;
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
            TcMode::Clsact
        } else {
            TcMode::Tcx
        }
    }
}

/// The kernel features the agent's programs use now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    pub tc: TcMode,
    /// Cgroups (workloads and guards) the cgroup programs are attached to.
    pub cgroups_attached: usize,
    /// Interfaces the TC programs are attached to.
    pub interfaces_attached: usize,
    /// The programs attached to each cgroup (cgroup_skb and sock_addr hooks).
    pub cgroup_hooks: Vec<String>,
    /// The programs attached to each interface.
    pub tc_hooks: Vec<String>,
    /// The BPF LSM guard refusing isolated workloads packet and XDP sockets runs.
    pub lsm_packet_socket_guard: bool,
}

/// Where an ENDPOINTS entry applies: a cgroup (by id) or an interface (by ifindex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum EndpointTarget {
    Cgroup(u64),
    Interface(u32),
    Unknown(u64),
}

/// The policy slot in force, as the kernel holds it.
#[derive(Clone, Debug, Default)]
pub struct ActiveSlot {
    pub config: Config,
    pub endpoints: Vec<(EndpointTarget, EndpointInfo)>,
    pub ipcache: Vec<(IpNet, u32)>,
    /// Each POLICY entry and its value (policy_value: action and rule).
    pub policy: Vec<(PolicyEntry, u32)>,
}

/// One entry of the flow table: an allowed flow the kernel tracks (its verdict cache).
#[derive(Clone, Debug)]
pub struct TrackedFlow {
    pub endpoint_id: u32,
    /// The direction the flow was opened in.
    pub origin: Option<Direction>,
    pub protocol: u8,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// A datagram's fragments rather than a flow.
    pub fragments: bool,
    pub last_seen_ns: u64,
    /// The policy generation that allowed it: its cached verdict holds while that
    /// generation is in force.
    pub generation: u32,
}

fn open(pins: &Pins, name: &'static str) -> Result<Map, DatapathError> {
    let path: PathBuf = pins.map(name);
    MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .map_err(|source| DatapathError::PinnedMap { path, source })
}

fn read(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::ReadMap { map, source }
}

/// Reads the slot in force from the pinned maps.
pub fn active_slot(pins: &Pins) -> Result<ActiveSlot, DatapathError> {
    let config: Array<MapData, Config> =
        Array::try_from(open(pins, MAP_CONFIG)?).map_err(read(MAP_CONFIG))?;
    let config = config.get(&0, 0).map_err(read(MAP_CONFIG))?;
    let slot = config.active_slot;
    let endpoints: BpfHashMap<MapData, EndpointKey, EndpointInfo> =
        BpfHashMap::try_from(open(pins, MAP_ENDPOINTS)?).map_err(read(MAP_ENDPOINTS))?;
    let ipcache: LpmTrie<MapData, IpcacheKey, u32> =
        LpmTrie::try_from(open(pins, MAP_IPCACHE)?).map_err(read(MAP_IPCACHE))?;
    let policy: LpmTrie<MapData, PolicyKey, u32> =
        LpmTrie::try_from(open(pins, MAP_POLICY)?).map_err(read(MAP_POLICY))?;
    let mut active = ActiveSlot {
        config,
        ..Default::default()
    };
    for entry in endpoints.iter() {
        let (key, info) = entry.map_err(read(MAP_ENDPOINTS))?;
        if map_keys::endpoint_key_slot(&key) != slot {
            continue;
        }
        let target = match key.kind {
            ENDPOINT_KIND_CGROUP => EndpointTarget::Cgroup(key.id),
            ENDPOINT_KIND_IFINDEX => EndpointTarget::Interface(key.id as u32),
            _ => EndpointTarget::Unknown(key.id),
        };
        active.endpoints.push((target, info));
    }
    for entry in ipcache.iter() {
        let (key, identity) = entry.map_err(read(MAP_IPCACHE))?;
        let key = (key.prefix_len(), key.data());
        if map_keys::ipcache_key_slot(&key.1) != slot {
            continue;
        }
        if let Some(prefix) = map_keys::ipcache_prefix_of_key(&key) {
            active.ipcache.push((prefix, identity));
        }
    }
    for entry in policy.iter() {
        let (key, value) = entry.map_err(read(MAP_POLICY))?;
        let key = (key.prefix_len(), key.data());
        // Policy id 0 is no policy's; every other id carries its slot.
        if map_keys::policy_key_slot(&key.1) != slot {
            continue;
        }
        if let Some(entry) = map_keys::policy_entry_of_key(&key) {
            active.policy.push((entry, value));
        }
    }
    active.ipcache.sort();
    active.policy.sort();
    Ok(active)
}

fn flow_table(pins: &Pins) -> Result<BpfHashMap<MapData, FlowKey, FlowValue>, DatapathError> {
    BpfHashMap::try_from(open(pins, MAP_FLOWS)?).map_err(read(MAP_FLOWS))
}

/// How many entries the flow table holds (its pressure).
pub fn flow_count(pins: &Pins) -> Result<usize, DatapathError> {
    // An LRU table changes while it is read: an entry evicted meanwhile is skipped.
    Ok(flow_table(pins)?.keys().flatten().count())
}

/// The flow table's entries of `endpoint_id` (every endpoint's with None).
pub fn flows(pins: &Pins, endpoint_id: Option<u32>) -> Result<Vec<TrackedFlow>, DatapathError> {
    let mut flows = Vec::new();
    // An LRU table changes while it is read: an entry evicted meanwhile is skipped.
    for (key, value) in flow_table(pins)?.iter().flatten() {
        if endpoint_id.is_some_and(|id| id != key.endpoint_id) {
            continue;
        }
        flows.push(TrackedFlow {
            endpoint_id: key.endpoint_id,
            origin: map_keys::direction_of_number(key.origin),
            protocol: key.protocol,
            local_port: key.local_port,
            remote: ip_of(key.family, &key.remote_addr),
            remote_port: key.remote_port,
            fragments: key.kind != stagewall_common::FLOW_KIND_FLOW,
            last_seen_ns: value.last_seen_ns,
            generation: value.generation,
        });
    }
    Ok(flows)
}
