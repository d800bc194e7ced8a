//! The addresses DNS answers gave each workload: what the proxy writes into DNS_LEARNT,
//! and the names the agent reports a denied destination by. A pure data structure: the
//! proxy calls it with the time (CLOCK_MONOTONIC in ns, the kernel's bpf_ktime_get_ns).
//!
//! An entry is keyed by (endpoint id, address) and holds the names the address was an
//! answer to (the question's name, the most recent first), the name identities of the
//! names the workload's rules allow (the most recently answered first, at most
//! DNS_LEARNT_IDENTITIES), and its expiry: the time of the answer plus its TTL clamped to
//! [min_ttl, max_ttl], plus the grace. An entry without identities (an answer for a name
//! no rule allows) is kept only to name the address in events and advise; it is never
//! written to the kernel. A later answer never shortens an entry's expiry; but once an
//! entry has expired, a new answer starts it afresh (its old identities are dropped).
//!
//! Bounds: at most `max_per_endpoint` entries for one workload and `max_total` for the
//! node. A new entry that finds its workload's (or the node's) table full first evicts,
//! from that table, in this order:
//! 1. an expired entry (lingering for naming), the oldest expiry first;
//! 2. then an entry without identities (kept only for naming), the least recently
//!    answered first, so that a workload looking up many names no rule allows does not
//!    push out the addresses its connections need;
//! 3. then the entry whose last answer is the oldest (least recently learnt).
//!
//! `expire` removes entries `linger` past their expiry: an expired address still names a
//! denied connection's destination for a while.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use stagewall_common::{
    DNS_LEARNT_IDENTITIES, DNS_LEARNT_MAX, DnsLearntKey, DnsLearntValue, FAMILY_V4, FAMILY_V6,
};

/// Names kept per entry (the most recent first).
pub const NAMES_PER_ENTRY: usize = 4;
const SECOND_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearntConfig {
    /// An answer's TTL is raised to at least this (ns): clients cache a little past the
    /// TTL, and a very short one would expire between answer and connect.
    pub min_ttl_ns: u64,
    /// ... and lowered to at most this (ns).
    pub max_ttl_ns: u64,
    /// Added to every expiry (ns): how late a connection after the TTL is still allowed.
    pub grace_ns: u64,
    /// How long (ns) an expired entry is kept to name denied destinations.
    pub linger_ns: u64,
    pub max_per_endpoint: usize,
    pub max_total: usize,
}

impl Default for LearntConfig {
    fn default() -> Self {
        LearntConfig {
            min_ttl_ns: 30 * SECOND_NS,
            max_ttl_ns: 3600 * SECOND_NS,
            grace_ns: 5 * SECOND_NS,
            linger_ns: 300 * SECOND_NS,
            max_per_endpoint: 4096,
            max_total: DNS_LEARNT_MAX as usize / 4,
        }
    }
}

/// What the kernel's DNS_LEARNT must change after `Learnt::learn`: removals first (they
/// make room), then writes. A removal of a key the map does not hold is no error.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub write: Vec<(DnsLearntKey, DnsLearntValue)>,
    pub remove: Vec<DnsLearntKey>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.remove.is_empty()
    }
}

/// Numbers for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LearntStats {
    pub entries: usize,
    /// Entries with identities: those in the kernel's DNS_LEARNT.
    pub kernel_entries: usize,
    /// The most entries one workload has.
    pub max_per_endpoint: usize,
    /// Entries evicted to make room (running total).
    pub evictions: u64,
    /// Entries removed by `expire` (running total).
    pub expirations: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    names: [Option<Arc<str>>; NAMES_PER_ENTRY],
    identities: [u32; DNS_LEARNT_IDENTITIES],
    expires_ns: u64,
    /// Sequence number of the last answer: larger is more recent.
    learnt: u64,
}

impl Entry {
    fn in_kernel(&self) -> bool {
        self.identities[0] != 0
    }
}

/// The eviction orders of one table (a workload's, keyed by address; or the node's).
#[derive(Debug)]
struct Index<K> {
    by_expiry: BTreeSet<(u64, K)>,
    /// (in the kernel, last answer, key): entries kept only for naming come first.
    by_recency: BTreeSet<(bool, u64, K)>,
}

impl<K: Ord + Copy> Index<K> {
    fn new() -> Self {
        Index {
            by_expiry: BTreeSet::new(),
            by_recency: BTreeSet::new(),
        }
    }

    fn insert(&mut self, key: K, e: &Entry) {
        self.by_expiry.insert((e.expires_ns, key));
        self.by_recency.insert((e.in_kernel(), e.learnt, key));
    }

    fn remove(&mut self, key: K, e: &Entry) {
        self.by_expiry.remove(&(e.expires_ns, key));
        self.by_recency.remove(&(e.in_kernel(), e.learnt, key));
    }

    fn len(&self) -> usize {
        self.by_expiry.len()
    }

    /// The entry to evict first (module doc).
    fn victim(&self, now_ns: u64) -> Option<K> {
        match self.by_expiry.first() {
            Some(&(expiry, key)) if expiry <= now_ns => Some(key),
            _ => self.by_recency.first().map(|&(_, _, key)| key),
        }
    }
}

type Key = (u32, IpAddr);

/// The learnt addresses of every workload of the node (module doc).
#[derive(Debug)]
pub struct Learnt {
    config: LearntConfig,
    entries: HashMap<Key, Entry>,
    endpoints: HashMap<u32, Index<IpAddr>>,
    node: Index<Key>,
    seq: u64,
    evictions: u64,
    expirations: u64,
}

/// DNS_LEARNT's key for a workload's address.
pub fn learnt_key(endpoint_id: u32, addr: IpAddr) -> DnsLearntKey {
    let mut bytes = [0u8; 16];
    let family = match addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            FAMILY_V4
        }
        IpAddr::V6(a) => {
            bytes = a.octets();
            FAMILY_V6
        }
    };
    DnsLearntKey {
        endpoint_id,
        family,
        _pad: [0; 3],
        addr: bytes,
    }
}

fn value_of(e: &Entry) -> DnsLearntValue {
    DnsLearntValue {
        expires_ns: e.expires_ns,
        identities: e.identities,
    }
}

impl Learnt {
    pub fn new(config: LearntConfig) -> Self {
        Learnt {
            config,
            entries: HashMap::new(),
            endpoints: HashMap::new(),
            node: Index::new(),
            seq: 0,
            evictions: 0,
            expirations: 0,
        }
    }

    pub fn config(&self) -> &LearntConfig {
        &self.config
    }

    /// Records an answer at `now_ns`: workload `endpoint` asked for `name` and got `addrs`
    /// (each with its TTL in seconds); `identities` are the name identities its rules give
    /// the answer's names (empty: kept for naming only). Adds to `changes` what the kernel
    /// must change.
    pub fn learn(
        &mut self,
        now_ns: u64,
        endpoint: u32,
        name: &str,
        identities: &[u32],
        addrs: &[(IpAddr, u32)],
        changes: &mut Changes,
    ) {
        if addrs.is_empty() {
            return;
        }
        let name: Arc<str> = Arc::from(name);
        for &(addr, ttl) in addrs {
            let ttl_ns = u64::from(ttl).saturating_mul(SECOND_NS).clamp(
                self.config.min_ttl_ns,
                self.config.max_ttl_ns.max(self.config.min_ttl_ns),
            );
            let expires_ns = now_ns
                .saturating_add(ttl_ns)
                .saturating_add(self.config.grace_ns);
            self.seq += 1;
            let key = (endpoint, addr);
            let entry = match self.entries.remove(&key) {
                Some(mut old) => {
                    self.unindex(key, &old);
                    let was = (old.in_kernel(), value_of(&old));
                    // An expired entry starts afresh with an answer that allows; one that
                    // does not (another name on the same address) leaves it as it is, so
                    // the identities an open connection was allowed by stay until the
                    // linger runs out.
                    if old.expires_ns <= now_ns && !identities.is_empty() {
                        old.identities = [0; DNS_LEARNT_IDENTITIES];
                        old.expires_ns = 0;
                    }
                    if !identities.is_empty() || !old.in_kernel() {
                        old.expires_ns = old.expires_ns.max(expires_ns);
                    }
                    old.identities = merge_identities(identities, &old.identities);
                    push_name(&mut old.names, &name);
                    old.learnt = self.seq;
                    match (was.0, old.in_kernel()) {
                        (_, true) if was.1 != value_of(&old) => {
                            changes
                                .write
                                .push((learnt_key(endpoint, addr), value_of(&old)));
                        }
                        (true, false) => changes.remove.push(learnt_key(endpoint, addr)),
                        _ => {}
                    }
                    old
                }
                None => {
                    if !self.make_room(now_ns, endpoint, changes) {
                        continue;
                    }
                    let mut names: [Option<Arc<str>>; NAMES_PER_ENTRY] = Default::default();
                    names[0] = Some(name.clone());
                    let e = Entry {
                        names,
                        identities: merge_identities(identities, &[]),
                        expires_ns,
                        learnt: self.seq,
                    };
                    if e.in_kernel() {
                        changes
                            .write
                            .push((learnt_key(endpoint, addr), value_of(&e)));
                    }
                    e
                }
            };
            self.node.insert(key, &entry);
            self.endpoints
                .entry(endpoint)
                .or_insert_with(Index::new)
                .insert(addr, &entry);
            self.entries.insert(key, entry);
        }
    }

    /// Takes over an entry a previous agent wrote into the pinned DNS_LEARNT (a restart
    /// or an upgrade): kept in force until it expires, then removed as the others are.
    /// The name it was learnt for is not known. One that does not fit the bounds goes
    /// into `changes.remove`.
    pub fn adopt(
        &mut self,
        now_ns: u64,
        key: &DnsLearntKey,
        value: &DnsLearntValue,
        changes: &mut Changes,
    ) {
        let addr = if key.family == FAMILY_V4 {
            IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
        } else {
            IpAddr::from(key.addr)
        };
        let entry_key = (key.endpoint_id, addr);
        if value.identities[0] == 0
            || self.entries.contains_key(&entry_key)
            || !self.make_room(now_ns, key.endpoint_id, changes)
        {
            changes.remove.push(*key);
            return;
        }
        self.seq += 1;
        let entry = Entry {
            names: Default::default(),
            identities: value.identities,
            expires_ns: value.expires_ns,
            learnt: self.seq,
        };
        self.node.insert(entry_key, &entry);
        self.endpoints
            .entry(key.endpoint_id)
            .or_insert_with(Index::new)
            .insert(addr, &entry);
        self.entries.insert(entry_key, entry);
    }

    /// Evicts until one more entry fits for `endpoint` and the node; false when the
    /// bounds allow none at all.
    fn make_room(&mut self, now_ns: u64, endpoint: u32, changes: &mut Changes) -> bool {
        if self.config.max_per_endpoint == 0 || self.config.max_total == 0 {
            return false;
        }
        loop {
            let own = self.endpoints.get(&endpoint);
            let victim = if own.is_some_and(|i| i.len() >= self.config.max_per_endpoint) {
                own.and_then(|i| i.victim(now_ns))
                    .map(|addr| (endpoint, addr))
            } else if self.node.len() >= self.config.max_total {
                self.node.victim(now_ns)
            } else {
                return true;
            };
            let Some(key) = victim else {
                return false; // indices out of step with the bounds: never, but no loop
            };
            if let Some(e) = self.remove(key) {
                self.evictions += 1;
                if e.in_kernel() {
                    let k = learnt_key(key.0, key.1);
                    changes.write.retain(|(w, _)| *w != k);
                    changes.remove.push(k);
                }
            }
        }
    }

    fn unindex(&mut self, key: Key, e: &Entry) {
        self.node.remove(key, e);
        if let Some(index) = self.endpoints.get_mut(&key.0) {
            index.remove(key.1, e);
            if index.len() == 0 {
                self.endpoints.remove(&key.0);
            }
        }
    }

    fn remove(&mut self, key: Key) -> Option<Entry> {
        let e = self.entries.remove(&key)?;
        self.unindex(key, &e);
        Some(e)
    }

    /// Removes the entries `linger` past their expiry at `now_ns`; gives the kernel keys
    /// of those that were written there.
    pub fn expire(&mut self, now_ns: u64) -> Vec<DnsLearntKey> {
        let mut gone = Vec::new();
        while let Some(&(expiry, key)) = self.node.by_expiry.first() {
            if expiry.saturating_add(self.config.linger_ns) > now_ns {
                break;
            }
            if let Some(e) = self.remove(key) {
                self.expirations += 1;
                if e.in_kernel() {
                    gone.push(learnt_key(key.0, key.1));
                }
            }
        }
        gone
    }

    /// The workloads with entries.
    pub fn endpoint_ids(&self) -> Vec<u32> {
        self.endpoints.keys().copied().collect()
    }

    /// Forgets a workload (it left the node); gives the kernel keys to remove.
    pub fn forget_endpoint(&mut self, endpoint: u32) -> Vec<DnsLearntKey> {
        let addrs: Vec<IpAddr> = self
            .endpoints
            .get(&endpoint)
            .map(|i| i.by_expiry.iter().map(|&(_, a)| a).collect())
            .unwrap_or_default();
        addrs
            .into_iter()
            .filter_map(|addr| {
                let e = self.remove((endpoint, addr))?;
                e.in_kernel().then(|| learnt_key(endpoint, addr))
            })
            .collect()
    }

    /// The name a workload last looked `addr` up by, to name a denied destination.
    pub fn name_of(&self, endpoint: u32, addr: IpAddr) -> Option<&str> {
        self.entries.get(&(endpoint, addr))?.names[0].as_deref()
    }

    /// The names the workload looked up (for advise), sorted, each once.
    pub fn looked_up(&self, endpoint: u32) -> impl Iterator<Item = &str> + '_ {
        let names: BTreeSet<&str> = self
            .endpoints
            .get(&endpoint)
            .into_iter()
            .flat_map(|i| i.by_expiry.iter())
            .filter_map(|&(_, addr)| self.entries.get(&(endpoint, addr)))
            .flat_map(|e| e.names.iter().flatten().map(|n| &**n))
            .collect();
        names.into_iter()
    }

    /// The kernel value of an entry (None: unknown, or kept only for naming).
    pub fn kernel_value(&self, endpoint: u32, addr: IpAddr) -> Option<DnsLearntValue> {
        let e = self.entries.get(&(endpoint, addr))?;
        e.in_kernel().then(|| value_of(e))
    }

    /// Every entry the kernel should hold, for writing DNS_LEARNT afresh (a restart).
    pub fn kernel_entries(&self) -> impl Iterator<Item = (DnsLearntKey, DnsLearntValue)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.in_kernel())
            .map(|(&(ep, addr), e)| (learnt_key(ep, addr), value_of(e)))
    }

    pub fn stats(&self) -> LearntStats {
        LearntStats {
            entries: self.entries.len(),
            kernel_entries: self.entries.values().filter(|e| e.in_kernel()).count(),
            max_per_endpoint: self.endpoints.values().map(Index::len).max().unwrap_or(0),
            evictions: self.evictions,
            expirations: self.expirations,
        }
    }
}

/// `new` first, then `old`, without repeats and without 0, at most DNS_LEARNT_IDENTITIES
/// (0 ends the kernel's list).
fn merge_identities(new: &[u32], old: &[u32]) -> [u32; DNS_LEARNT_IDENTITIES] {
    let mut out = [0; DNS_LEARNT_IDENTITIES];
    let mut n = 0;
    for &id in new.iter().chain(old) {
        if n == DNS_LEARNT_IDENTITIES {
            break;
        }
        if id != 0 && !out[..n].contains(&id) {
            out[n] = id;
            n += 1;
        }
    }
    out
}

/// Puts `name` first, keeping the others in order, at most NAMES_PER_ENTRY.
fn push_name(names: &mut [Option<Arc<str>>; NAMES_PER_ENTRY], name: &Arc<str>) {
    let at = names
        .iter()
        .position(|n| n.as_deref() == Some(&**name))
        .unwrap_or(NAMES_PER_ENTRY - 1);
    names[..=at].rotate_right(1);
    names[0] = Some(name.clone());
}

#[cfg(test)]
mod tests;
