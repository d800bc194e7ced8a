//! The kernel object: the programs build.rs compiles (aya-build) and embeds in the binary,
//! loaded into the kernel (the verifier runs here) with the pinned maps opened or created,
//! then taken apart: the maps the agent writes, those it reads, and the programs, which
//! attach.rs attaches.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, RingBuf},
    programs::{CgroupSkb, CgroupSockAddr, SchedClassifier},
};
use stagewall_common::{
    EventLimit, FlowKey, FlowValue, MAP_CONFIG, MAP_COUNTERS, MAP_DNS_CLIENTS, MAP_DNS_LEARNT,
    MAP_DNS_PROXY, MAP_DNS_RESOLVERS, MAP_ENDPOINT_STATS, MAP_ENDPOINTS, MAP_EVENT_LIMITS,
    MAP_EVENTS, MAP_FLOWS, MAP_IPCACHE, MAP_POLICY, MAP_SELF_ADDRS, MAP_SERVICES,
};

use crate::datapath::{
    dns::DnsMaps,
    error::DatapathError,
    pins::{PINNED_MAPS, Pins},
    slots::PolicyMaps,
    stats::KernelStats,
};

/// The kernel object, built by build.rs with aya-build and embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stagewall-ebpf"));

// The programs' names in the object (their link pins are named after them).
pub(super) const PROG_CGROUP_INGRESS: &str = "stagewall_cgroup_ingress";
pub(super) const PROG_CGROUP_EGRESS: &str = "stagewall_cgroup_egress";
pub(super) const PROG_SOCK_ADDR: [&str; 8] = [
    "stagewall_connect4",
    "stagewall_connect6",
    "stagewall_sendmsg4",
    "stagewall_sendmsg6",
    "stagewall_recvmsg4",
    "stagewall_recvmsg6",
    "stagewall_getpeername4",
    "stagewall_getpeername6",
];
pub(super) const PROG_TC_FROM_WORKLOAD: &str = "stagewall_tc_from_workload";
pub(super) const PROG_TC_TO_WORKLOAD: &str = "stagewall_tc_to_workload";
/// The programs each cgroup gets (attach.rs), by name.
pub(super) fn cgroup_programs() -> impl Iterator<Item = &'static str> {
    [PROG_CGROUP_INGRESS, PROG_CGROUP_EGRESS]
        .into_iter()
        .chain(PROG_SOCK_ADDR)
}

/// The programs each interface gets (attach.rs), by name.
pub(super) fn tc_programs() -> impl Iterator<Item = &'static str> {
    [PROG_TC_FROM_WORKLOAD, PROG_TC_TO_WORKLOAD].into_iter()
}

/// Loaded and attached by packet_sockets.rs (it needs the kernel's BTF and BPF LSM).
pub(super) const PROG_PACKET_SOCKET_GUARD: &str = "stagewall_socket_create";

/// Maps the agent reads rather than writes, handed to their readers.
pub struct Readers {
    pub events: RingBuf<MapData>,
    /// The flow table, read only to count its entries (map pressure).
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    /// The flows' event rate limits, read for the events they suppressed.
    pub event_limits: HashMap<MapData, FlowKey, EventLimit>,
    pub logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The DNS proxy's maps (written and read by the proxy, not by an apply).
    pub dns: DnsMaps,
}

/// The loaded object, taken apart.
pub(super) struct Object {
    /// The programs, loaded, not attached yet.
    pub ebpf: Ebpf,
    /// The maps that hold the policy, which the agent writes.
    pub policy_maps: PolicyMaps,
    /// The counters and per-endpoint statistics.
    pub stats: KernelStats,
    pub readers: Readers,
}

/// Loads every program into the kernel and takes the maps. Pinned maps that exist under
/// `pins` are opened (a previous agent's state); the others are created and pinned.
pub(super) fn load(
    pins: &Pins,
    kernel_log_level: log::LevelFilter,
) -> Result<Object, DatapathError> {
    let mut ebpf_loader = EbpfLoader::new();
    // Kernel-side logging is for troubleshooting only; off the packet path by default.
    let level = aya_log_level(kernel_log_level);
    ebpf_loader.override_global(aya_log::LEVEL, &level, false);
    for map in PINNED_MAPS {
        ebpf_loader.map_pin_path(map.name, pins.map(map.name));
    }
    let mut ebpf = ebpf_loader
        .load(EBPF_OBJECT)
        .map_err(DatapathError::Object)?;
    let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("kernel log reader not started: {e}");
            None
        }
    };
    for name in [PROG_CGROUP_INGRESS, PROG_CGROUP_EGRESS] {
        let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
        prog.load().map_err(loading(name))?;
    }
    for name in PROG_SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        prog.load().map_err(loading(name))?;
    }
    for name in [PROG_TC_FROM_WORKLOAD, PROG_TC_TO_WORKLOAD] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load().map_err(loading(name))?;
    }
    let events = take_map(&mut ebpf, MAP_EVENTS)?;
    let stats = KernelStats::new(
        take_map(&mut ebpf, MAP_COUNTERS)?,
        take_map(&mut ebpf, MAP_ENDPOINT_STATS)?,
    );
    let readers = Readers {
        events,
        flows: take_map(&mut ebpf, MAP_FLOWS)?,
        event_limits: take_map(&mut ebpf, MAP_EVENT_LIMITS)?,
        logs,
        dns: DnsMaps::new(
            take_map(&mut ebpf, MAP_DNS_PROXY)?,
            take_map(&mut ebpf, MAP_DNS_RESOLVERS)?,
            take_map(&mut ebpf, MAP_DNS_CLIENTS)?,
            take_map(&mut ebpf, MAP_DNS_LEARNT)?,
        ),
    };
    let policy_maps = PolicyMaps {
        config: take_map(&mut ebpf, MAP_CONFIG)?,
        endpoints: take_map(&mut ebpf, MAP_ENDPOINTS)?,
        self_addrs: take_map(&mut ebpf, MAP_SELF_ADDRS)?,
        ipcache: take_map(&mut ebpf, MAP_IPCACHE)?,
        policy: take_map(&mut ebpf, MAP_POLICY)?,
        services: take_map(&mut ebpf, MAP_SERVICES)?,
    };
    Ok(Object {
        ebpf,
        policy_maps,
        stats,
        readers,
    })
}

/// The level the kernel programs log at, as aya-log numbers it.
fn aya_log_level(level: log::LevelFilter) -> u8 {
    match level {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
}

/// Takes `map` out of the object, typed.
fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<T, DatapathError> {
    let taken = ebpf
        .take_map(map)
        .ok_or(DatapathError::MissingMap { map })?;
    T::try_from(taken).map_err(|source| DatapathError::MapType { map, source })
}

/// The error of loading `program` into the kernel.
fn loading(program: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::LoadProgram { program, source }
}

/// `program` of the object, typed.
pub(super) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(program)
        .ok_or(DatapathError::MissingProgram { program })?;
    Ok(prog.try_into()?)
}
