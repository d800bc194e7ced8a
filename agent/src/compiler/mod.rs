//! The policy compiler: a pure function from the desired state (workloads, namespaces,
//! NetworkPolicies) to the exact contents of the kernel maps. No I/O happens here, so the
//! hard logic is tested without a kernel (see tests.rs). How its entries become map keys
//! (and which policy slot they carry) is map_keys.rs, shared with the datapath.

mod identity;
pub mod map_keys;
mod names;
mod ports;
mod rules;
mod services;
#[cfg(test)]
mod tests;
mod tiers;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

pub use identity::{Block, Identities, IdentityKind};
use ipnet::IpNet;
use map_keys::direction_number;
pub use names::NameRules;
pub use ports::{PortPrefix, port_prefixes};
pub use services::Services;
use stagewall_common::{
    ENDPOINTS_MAX, EP_DEFAULT_DENY_EGRESS, EP_DEFAULT_DENY_INGRESS, EP_FAIL_OPEN,
    EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EP_NAME_RULES, EP_TIERS_AUDIT_EGRESS,
    EP_TIERS_AUDIT_INGRESS, IPCACHE_MAX, POLICY_MAX, SELF_ADDRS_MAX, SERVICES_MAX, audit_flag,
    shadow_flag,
};
pub use tiers::{TierIds, TierRule, action_number};

use crate::policy::model::{
    Attachment, Direction, FailMode, NamedPort, Namespace, NetworkPolicy, ObjectName, PolicySet,
    Workload,
};

/// A local workload the kernel enforces: how to find its traffic and its policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub workload: ObjectName,
    pub attachment: Attachment,
    /// The interface where TC backs the cgroup attachment up (Workload::backstop).
    pub backstop: Option<String>,
    /// The workload's own addresses: its traffic to them never leaves it and passes.
    pub addresses: Vec<std::net::IpAddr>,
    /// The workload's `stage` label, which events carry.
    pub stage: Option<String>,
    pub endpoint_id: u32,
    /// The compiled policy (its id in the POLICY map) per direction; 0 when no policy
    /// isolates the direction.
    pub ingress_policy_id: u32,
    pub egress_policy_id: u32,
    /// EP_* flags.
    pub flags: u32,
    /// The NetworkPolicies that isolate the workload, per direction (for events and
    /// explanations).
    pub ingress_isolated_by: Vec<ObjectName>,
    pub egress_isolated_by: Vec<ObjectName>,
    /// The ClusterNetworkPolicy tier programs (POLICY ids in `Compiled::tier_entries`).
    pub tiers: TierIds,
    /// The tier programs with the audited ClusterNetworkPolicies too (read where the
    /// EP_SHADOW_* flags say so; default where none holds the workload).
    pub shadow_tiers: TierIds,
}

impl Endpoint {
    /// Where the kernel finds the workload's traffic: its attachment, and the interface
    /// that backs a cgroup attachment up, if any.
    pub fn attachments(&self) -> impl Iterator<Item = Attachment> + '_ {
        std::iter::once(self.attachment.clone())
            .chain(self.backstop.clone().map(Attachment::Interface))
    }
}

/// One POLICY map entry: a compiled policy allows this identity (or any), protocol (or
/// any) and port block (or any) in this direction. Its key is map_keys::policy_key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub policy: u32,
    pub identity: u32,
    pub direction: Direction,
    pub protocol: Option<u8>,
    pub ports: Option<PortPrefix>,
}

/// The compiled policy: everything the loader writes into the kernel.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Sorted by workload name; only `compile` fills it (and `endpoint_index` with it).
    pub endpoints: Vec<Endpoint>,
    pub identities: Identities,
    pub policy: BTreeSet<PolicyEntry>,
    /// The tier programs' POLICY entries, with their values (`policy_value`: the action
    /// and the rule reference, an index from 1 into `tier_rules`).
    pub tier_entries: BTreeMap<PolicyEntry, u32>,
    /// Every ClusterNetworkPolicy rule, in reading order: what tier entries name.
    pub tier_rules: Vec<TierRule>,
    /// The policy generation this compile went into force as (set by the agent once
    /// applied; 0 before): rule references name `tier_rules` of this generation only.
    pub generation: u32,
    /// Cgroups no guard denies (host-network pods, pods enforced by TC; paths below the
    /// cgroup2 mount), sorted.
    pub unguarded_cgroups: Vec<String>,
    /// Services' frontends the kernel translates at the socket, and their names.
    pub services: Services,
    /// The domain-name patterns that hold each endpoint's egress, for the DNS proxy
    /// (which identities an answered name gets) and for explanations.
    pub names: NameRules,
    /// Endpoint id -> position in `endpoints`: kernel events and statistics name
    /// workloads by endpoint id, many times a second.
    endpoint_index: HashMap<u32, usize>,
}

impl Compiled {
    /// The endpoint with this id (the kernel's name for a workload), if any: the guard
    /// cgroups' GUARD_ENDPOINT_ID is none.
    pub fn endpoint_by_id(&self, endpoint_id: u32) -> Option<&Endpoint> {
        self.endpoint_index
            .get(&endpoint_id)
            .map(|&i| &self.endpoints[i])
    }

    /// The ClusterNetworkPolicy rule a POLICY value's rule reference (an event's `rule`)
    /// of policy generation `generation` names; None for 0 (no rule), a reference beyond
    /// this compile's, or another generation's (references are indices into one
    /// compile's table: an event decided just before a change never names a rule of the
    /// next policy).
    pub fn tier_rule(&self, generation: u32, reference: u32) -> Option<&TierRule> {
        if generation != self.generation {
            return None;
        }
        let index = usize::try_from(reference.checked_sub(1)?).ok()?;
        self.tier_rules.get(index)
    }

    /// Entries each policy map needs for this policy, and the most one policy may use:
    /// half of the map, since the two slots live in it side by side.
    pub fn map_usage(&self) -> [(&'static str, usize, u32); 5] {
        let self_addrs = self.endpoints.iter().map(|e| e.addresses.len()).sum();
        [
            ("endpoints", self.endpoints.len(), ENDPOINTS_MAX / 2),
            ("self_addrs", self_addrs, SELF_ADDRS_MAX / 2),
            ("ipcache", self.identities.ipcache.len(), IPCACHE_MAX / 2),
            (
                "policy",
                self.policy.len() + self.tier_entries.len(),
                POLICY_MAX / 2,
            ),
            ("services", self.services.entries(), SERVICES_MAX / 2),
        ]
    }

    pub fn endpoint_ids(&self) -> EndpointIds {
        self.endpoints
            .iter()
            .map(|e| (e.workload.clone(), e.endpoint_id))
            .collect()
    }

    /// IPCACHE entries.
    pub fn ipcache(&self) -> impl Iterator<Item = (&IpNet, &u32)> {
        self.identities.ipcache.iter()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("{what}: {count} entries exceed the kernel map's capacity of {max}")]
    TooLarge {
        what: &'static str,
        count: usize,
        max: u32,
    },
    #[error(
        "domain names {first} and {second} have the same identity {identity:#x}; expected one of them written otherwise (a hash collision the kernel cannot tell apart)"
    )]
    NameIdentityCollision {
        first: String,
        second: String,
        identity: u32,
    },
}

/// A policy entry set before it gets a policy id.
pub(super) type EntrySet = BTreeSet<(u32, Option<u8>, Option<PortPrefix>)>;

/// Endpoint ids by workload. A workload keeps its id across recompilations, so the flows
/// the kernel tracks for it (keyed by endpoint id) survive a policy change.
pub type EndpointIds = BTreeMap<ObjectName, u32>;

/// The entry sets of the last compile, for the next: a workload direction whose selecting
/// policies (and own named ports) are unchanged gets its entries back instead of
/// compiling every rule again, as long as what rules select — the identities (addresses,
/// labels, CIDRs) and the namespaces' labels — is unchanged too. A one-rule change then
/// compiles the policy it touched, not the 10,000 rules beside it.
#[derive(Default)]
pub struct CompileCache {
    identities: Option<Identities>,
    namespaces: Vec<Namespace>,
    entries: Vec<CachedEntries>,
}

struct CachedEntries {
    direction: Direction,
    policies: Vec<NetworkPolicy>,
    ports: Vec<NamedPort>,
    entries: Arc<EntrySet>,
}

impl CachedEntries {
    fn is_for(
        &self,
        direction: Direction,
        policies: &[&NetworkPolicy],
        ports: &[NamedPort],
    ) -> bool {
        self.direction == direction
            && self.ports == ports
            && self.policies.len() == policies.len()
            && self.policies.iter().zip(policies).all(|(a, b)| a == *b)
    }
}

/// What the user should know about a desired state that compiles: ClusterNetworkPolicies
/// of one tier sharing a priority (read by name), nodes peers that select no node. One
/// line each, for `check` to print and the agent to log; the state is enforced whole.
pub fn warnings(set: &PolicySet) -> Vec<String> {
    let mut warnings = crate::policy::tiers::priority_ties(set);
    warnings.extend(crate::policy::tiers::empty_nodes_peers(set));
    warnings
}

/// Compiles the desired state. `previous` holds the ids of the policy in force; workloads
/// keep theirs, new ones get ids no workload of either policy uses.
pub fn compile(set: &PolicySet, previous: &EndpointIds) -> Result<Compiled, CompileError> {
    compile_with(set, previous, &mut CompileCache::default())
}

/// `compile`, reusing what `cache` holds from the last compile and leaving this one's
/// entry sets in it.
pub fn compile_with(
    set: &PolicySet,
    previous: &EndpointIds,
    cache: &mut CompileCache,
) -> Result<Compiled, CompileError> {
    names::check_collisions(set)?;
    let identities = Identities::allocate(set);
    let reusable =
        cache.identities.as_ref() == Some(&identities) && cache.namespaces == set.namespaces;
    // The last compile's entry sets, each taken (not copied) by the first direction that
    // matches it; what nothing takes is dropped.
    let mut old: Vec<Option<CachedEntries>> = if reusable {
        std::mem::take(&mut cache.entries)
            .into_iter()
            .map(Some)
            .collect()
    } else {
        Vec::new()
    };
    let mut used: Vec<CachedEntries> = Vec::new();
    let mut unguarded_cgroups = set.unguarded_cgroups.clone();
    unguarded_cgroups.sort();
    unguarded_cgroups.dedup();
    let mut compiled = Compiled {
        identities,
        unguarded_cgroups,
        services: Services::compile(&set.services),
        ..Default::default()
    };
    // Endpoints with equal rule sets share one policy id, so entries grow with distinct
    // policies, not with workloads.
    // Ordered, not hashed: two large entry sets usually differ in their first entries,
    // while hashing reads every entry of every set.
    let mut policy_ids: BTreeMap<(Direction, Arc<EntrySet>), u32> = BTreeMap::new();
    // Tier programs get ids from the same counter (the last id handed out).
    let mut tier_ids = BTreeMap::new();
    let mut next_id = 0;
    let mut tier_compiler = tiers::TierCompiler::new(set, &compiled.identities)?;
    let mut peer_cache = rules::PeerCache::new();
    let mut local: Vec<&Workload> = set
        .workloads
        .iter()
        .filter(|w| w.attachment.is_some())
        .collect();
    local.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken: BTreeSet<u32> = previous.values().copied().collect();
    let mut next_free = 1;
    for w in local {
        let endpoint_id = match previous.get(&w.name) {
            Some(id) => *id,
            None => {
                while taken.contains(&next_free) {
                    next_free += 1;
                }
                taken.insert(next_free);
                next_free
            }
        };
        let mut endpoint = Endpoint {
            workload: w.name.clone(),
            attachment: w.attachment.clone().expect("filtered on attachment"),
            backstop: w.backstop.clone(),
            addresses: w.addresses.clone(),
            stage: w.labels.get("stage").cloned(),
            endpoint_id,
            ingress_policy_id: 0,
            egress_policy_id: 0,
            flags: match set.fail_mode(w) {
                FailMode::Closed => 0,
                FailMode::Open => EP_FAIL_OPEN,
            },
            ingress_isolated_by: Vec::new(),
            egress_isolated_by: Vec::new(),
            tiers: tiers::assign(&mut tier_compiler, w, false, &mut tier_ids, &mut next_id),
            shadow_tiers: TierIds::default(),
        };
        let shadowed = [Direction::Ingress, Direction::Egress].map(|d| set.cluster_audited(w, d));
        if shadowed.contains(&true) {
            endpoint.shadow_tiers =
                tiers::assign(&mut tier_compiler, w, true, &mut tier_ids, &mut next_id);
        }
        if set.tiers_audited(w) {
            endpoint.flags |= EP_TIERS_AUDIT_INGRESS | EP_TIERS_AUDIT_EGRESS;
        }
        let patterns = names::egress_patterns(set, w);
        if !patterns.is_empty() {
            endpoint.flags |= EP_NAME_RULES;
            compiled.names.insert(endpoint_id, patterns);
        }
        for (direction, shadowed) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .zip(shadowed)
        {
            if shadowed {
                endpoint.flags |= shadow_flag(direction_number(direction));
            }
            if set.audited(w, direction) {
                endpoint.flags |= audit_flag(direction_number(direction));
            }
            let selecting = set.isolating(w, direction);
            if selecting.is_empty() {
                continue;
            }
            // Policies that isolate without a single rule for the direction deny everything:
            // the kernel reports such drops as "default deny".
            let rule_count: usize = selecting.iter().map(|p| p.rules(direction).len()).sum();
            let taken = old
                .iter_mut()
                .find(|c| {
                    c.as_ref()
                        .is_some_and(|c| c.is_for(direction, &selecting, &w.ports))
                })
                .and_then(Option::take);
            if let Some(cached) = taken {
                used.push(cached);
            }
            let entries = match used
                .iter()
                .find(|c| c.is_for(direction, &selecting, &w.ports))
                .map(|c| c.entries.clone())
            {
                Some(entries) => entries,
                None => {
                    let mut entries = EntrySet::new();
                    for p in &selecting {
                        for rule in p.rules(direction) {
                            let target = rules::RuleTarget {
                                policy: p,
                                local: w,
                                direction,
                            };
                            rules::rule_entries(
                                set,
                                &compiled.identities,
                                &target,
                                rule,
                                &mut peer_cache,
                                &mut entries,
                            );
                        }
                    }
                    let entries = Arc::new(entries);
                    used.push(CachedEntries {
                        direction,
                        policies: selecting.iter().map(|p| (*p).clone()).collect(),
                        ports: w.ports.clone(),
                        entries: entries.clone(),
                    });
                    entries
                }
            };
            let id = *policy_ids.entry((direction, entries)).or_insert_with(|| {
                next_id += 1;
                next_id
            });
            let names = selecting.iter().map(|p| p.name.clone()).collect();
            match direction {
                Direction::Ingress => {
                    endpoint.ingress_policy_id = id;
                    endpoint.flags |= EP_ISOLATED_INGRESS;
                    if rule_count == 0 {
                        endpoint.flags |= EP_DEFAULT_DENY_INGRESS;
                    }
                    endpoint.ingress_isolated_by = names;
                }
                Direction::Egress => {
                    endpoint.egress_policy_id = id;
                    endpoint.flags |= EP_ISOLATED_EGRESS;
                    if rule_count == 0 {
                        endpoint.flags |= EP_DEFAULT_DENY_EGRESS;
                    }
                    endpoint.egress_isolated_by = names;
                }
            }
        }
        compiled
            .endpoint_index
            .insert(endpoint.endpoint_id, compiled.endpoints.len());
        compiled.endpoints.push(endpoint);
    }
    compiled.tier_rules = std::mem::take(&mut tier_compiler.rules);
    for ((direction, entries), policy) in tier_ids {
        for (&(identity, protocol, ports), &value) in entries.iter() {
            let entry = PolicyEntry {
                policy,
                identity,
                direction,
                protocol,
                ports,
            };
            compiled.tier_entries.insert(entry, value);
        }
    }
    for ((direction, entries), policy) in policy_ids {
        for &(identity, protocol, ports) in entries.iter() {
            compiled.policy.insert(PolicyEntry {
                policy,
                identity,
                direction,
                protocol,
                ports,
            });
        }
    }
    *cache = CompileCache {
        identities: Some(compiled.identities.clone()),
        namespaces: set.namespaces.clone(),
        entries: used,
    };
    for (map, count, max) in compiled.map_usage() {
        if count > max as usize {
            return Err(CompileError::TooLarge {
                what: map,
                count,
                max,
            });
        }
    }
    Ok(compiled)
}

impl Compiled {
    /// The endpoint of a workload (a linear search: for a control request, not per event).
    pub fn endpoint(&self, name: &ObjectName) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| &e.workload == name)
    }
}
