//! The maps the programs share with the agent. Names and sizes come from stagewall-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use stagewall_common::{
    COUNTERS_LEN, Config, DNS_CLIENTS_MAX, DNS_LEARNT_MAX, DNS_RESOLVERS_MAX, DnsLearntKey,
    DnsLearntValue, DnsProxyState, DnsSocket, ENDPOINT_ID_LIMIT, ENDPOINT_STATS_LEN, ENDPOINTS_MAX,
    EVENT_LIMITS_MAX, EVENTS_BYTES, EndpointInfo, EndpointKey, EndpointStats, EventLimit,
    FLOWS_MAX, FlowBudget, FlowKey, FlowValue, IPCACHE_MAX, IpcacheKey, POLICY_MAX, PolicyKey,
    SELF_ADDRS_MAX, SERVICE_NAT_MAX, SERVICES_MAX, SelfAddrKey, ServiceBackend, ServiceKey,
    ServiceNat, ServiceNatKey,
};

/// LPM tries must be created with BPF_F_NO_PREALLOC.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(ENDPOINTS_MAX, 0);

#[map]
pub static SELF_ADDRS: HashMap<SelfAddrKey, u32> = HashMap::with_max_entries(SELF_ADDRS_MAX, 0);

#[map]
pub static IPCACHE: LpmTrie<IpcacheKey, u32> =
    LpmTrie::with_max_entries(IPCACHE_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY: LpmTrie<PolicyKey, u32> =
    LpmTrie::with_max_entries(POLICY_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceBackend> =
    HashMap::with_max_entries(SERVICES_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static SERVICE_NAT: LruHashMap<ServiceNatKey, ServiceNat> =
    LruHashMap::with_max_entries(SERVICE_NAT_MAX, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

#[map]
pub static FLOW_BUDGETS: Array<FlowBudget> = Array::with_max_entries(ENDPOINT_ID_LIMIT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static EVENT_LIMITS: LruHashMap<FlowKey, EventLimit> =
    LruHashMap::with_max_entries(EVENT_LIMITS_MAX, 0);

#[map]
pub static ENDPOINT_STATS: PerCpuArray<EndpointStats> =
    PerCpuArray::with_max_entries(ENDPOINT_STATS_LEN, 0);

#[map]
pub static DNS_PROXY: Array<DnsProxyState> = Array::with_max_entries(1, 0);

#[map]
pub static DNS_RESOLVERS: HashMap<DnsSocket, DnsSocket> =
    HashMap::with_max_entries(DNS_RESOLVERS_MAX, 0);

#[map]
pub static DNS_CLIENTS: LruHashMap<DnsSocket, u32> =
    LruHashMap::with_max_entries(DNS_CLIENTS_MAX, 0);

#[map]
pub static DNS_LEARNT: HashMap<DnsLearntKey, DnsLearntValue> =
    HashMap::with_max_entries(DNS_LEARNT_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Counts one in a global counter (CNT_*). The kernel's vocabulary: `count` adds to
/// COUNTERS, `verdict::count_for_endpoint` to ENDPOINT_STATS, `verdict::count_verdict` to
/// both.
#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *value += 1 };
    }
}
