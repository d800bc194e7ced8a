//! ClusterNetworkPolicy tiers as POLICY entries. For each local workload, tier (Admin,
//! Baseline) and direction, the *tier program*: the rules of the policies whose subject
//! holds the workload, in the order policy::tiers reads them, flattened so that the
//! kernel's longest-prefix match finds the rule that matches first.
//!
//! Flattening: per peer identity, the rules are walked in order keeping what each
//! protocol's ports are still unclaimed; a rule with ports claims only the unclaimed part
//! (disjoint intervals, each written as aligned blocks, ports.rs), a rule without
//! protocols claims the rest as one any-protocol entry (shorter than every per-protocol
//! entry, so it loses to the rules before it) and ends the walk. Pass entries are written
//! too: they hide the later rules of the tier. Each entry's value is
//! `policy_value(action, rule)` (stagewall-common), `rule` indexing `Compiled::tier_rules`.
//!
//! Rule references are monotone in precedence: `tier_rules` lists the rules in the
//! order policy::tiers reads them (tier, then priority and name, then each policy's
//! rules as written), so within one tier program a smaller reference is a rule read
//! first. Names rely on it (below).
//!
//! Lookups: the kernel looks a tier up under the peer's identity, then on a miss under
//! the any-peer identity of the packet's family (IDENTITY_ANY_V4, IDENTITY_ANY_V6): at
//! most 2 LPM lookups per tier. The rules that match every identity of a family (with
//! the same ports for each) are written once, under that family's any-peer identity, as
//! a partition of those rules alone. An identity gets entries of its own only when some
//! other rule of the program claims something for it; then its whole partition (the
//! any-peer rules in their places too) goes under it, so a hit never needs the fallback
//! and a miss means no rule of the tier matches.
//!
//! Names: an endpoint with EP_NAME_RULES also looks a new egress flow's tier program up
//! under each name identity DNS_LEARNT holds for the destination (at most
//! DNS_LEARNT_IDENTITIES, exact lookups, no any-peer fallback). A name identity's
//! entries are the partition of the domainNames rules that name it (Accept only), so
//! each lookup finds the first rule of its own kind; of all the hits (the address hit,
//! Pass entries included, and the name hits) the smallest rule reference is the rule
//! read first, and decides. A Pass or Deny by address before a name's Accept hides it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use stagewall_common::{
    ACTION_ACCEPT, ACTION_DENY, ACTION_PASS, FAMILY_V4, FAMILY_V6, IDENTITY_WORLD_V4,
    IDENTITY_WORLD_V6, POLICY_RULE_MAX, identity_any, policy_value,
};

use super::{
    Block, CompileError, Identities, IdentityKind, PortPrefix, identity::node_blocks, port_prefixes,
};
use crate::policy::{
    model::{
        Action, ClusterNetworkPolicy, ClusterPeer, ClusterPort, ClusterRule, Direction, Labels,
        Mode, NamedPort, PolicySet, Tier, Workload,
    },
    tiers::ordered,
};

/// The tier programs of one endpoint: POLICY ids, 0 where no rule applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierIds {
    pub admin_ingress: u32,
    pub admin_egress: u32,
    pub baseline_ingress: u32,
    pub baseline_egress: u32,
}

impl TierIds {
    pub fn get(&self, tier: Tier, direction: Direction) -> u32 {
        match (tier, direction) {
            (Tier::Admin, Direction::Ingress) => self.admin_ingress,
            (Tier::Admin, Direction::Egress) => self.admin_egress,
            (Tier::Baseline, Direction::Ingress) => self.baseline_ingress,
            (Tier::Baseline, Direction::Egress) => self.baseline_egress,
        }
    }

    fn set(&mut self, tier: Tier, direction: Direction, id: u32) {
        let field = match (tier, direction) {
            (Tier::Admin, Direction::Ingress) => &mut self.admin_ingress,
            (Tier::Admin, Direction::Egress) => &mut self.admin_egress,
            (Tier::Baseline, Direction::Ingress) => &mut self.baseline_ingress,
            (Tier::Baseline, Direction::Egress) => &mut self.baseline_egress,
        };
        *field = id;
    }
}

/// A ClusterNetworkPolicy rule that tier entries name: `Compiled::tier_rules[r - 1]` for
/// the rule reference `r` of a POLICY value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierRule {
    pub policy: String,
    pub tier: Tier,
    pub direction: Direction,
    /// Index into the policy's rules of the direction.
    pub index: usize,
    /// The rule's name, or `#N` (from 1) for a rule without one: what events say.
    pub name: String,
    pub action: Action,
}

/// The ACTION_* of a rule's action.
pub fn action_number(action: Action) -> u32 {
    match action {
        Action::Accept => ACTION_ACCEPT,
        Action::Deny => ACTION_DENY,
        Action::Pass => ACTION_PASS,
    }
}

/// The entries of one tier program before it gets an id: (identity, protocol, ports) ->
/// POLICY value. Ports are always a block when a protocol is given.
pub type TierEntrySet = BTreeMap<(u32, Option<u8>, Option<PortPrefix>), u32>;

/// What a rule claims for one peer: everything, or ports of protocols (inclusive ranges).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Claims {
    All,
    Ports(Vec<(u8, u16, u16)>),
}

impl Claims {
    /// What `rule` names, its named ports resolved against the destination's `declared`.
    fn of(rule: &ClusterRule, declared: &[NamedPort]) -> Claims {
        if rule.protocols.is_empty() {
            return Claims::All;
        }
        let mut ports = Vec::new();
        for p in &rule.protocols {
            match p {
                ClusterPort::Ports {
                    protocol,
                    first,
                    last,
                } => ports.push((protocol.number(), *first, *last)),
                // Whatever the declared port's protocol (as policy::tiers reads it).
                ClusterPort::Named(name) => ports.extend(
                    declared
                        .iter()
                        .filter(|n| &n.name == name)
                        .map(|n| (n.protocol.number(), n.port, n.port)),
                ),
            }
        }
        Claims::Ports(ports)
    }

    fn is_empty(&self) -> bool {
        matches!(self, Claims::Ports(p) if p.is_empty())
    }
}

/// Ports of one protocol as sorted, disjoint, inclusive intervals.
#[derive(Default)]
struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// The parts of `lo..=hi` not in the set, in order; they are added to it.
    fn claim(&mut self, lo: u16, hi: u16) -> Vec<(u16, u16)> {
        let mut free = Vec::new();
        let mut next = u32::from(lo);
        for &(a, b) in &self.0 {
            if u32::from(b) < next || u32::from(a) > u32::from(hi) {
                continue;
            }
            if u32::from(a) > next {
                free.push((next as u16, a - 1));
            }
            next = u32::from(b) + 1;
        }
        if next <= u32::from(hi) {
            free.push((next as u16, hi));
        }
        self.0.extend(free.iter().copied());
        self.0.sort_unstable();
        // Merge neighbours so the set stays small.
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if u32::from(last.1) + 1 >= u32::from(a) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
        free
    }
}

/// First match wins, as longest prefix: the entries of an ordered list of (value, claims).
/// Pass is a value like any other.
fn flatten(
    rules: impl IntoIterator<Item = (u32, Claims)>,
) -> Vec<(Option<u8>, Option<PortPrefix>, u32)> {
    let mut claimed: BTreeMap<u8, PortSet> = BTreeMap::new();
    let mut out = Vec::new();
    for (value, claims) in rules {
        match claims {
            Claims::All => {
                // Every protocol and port not claimed yet: the per-protocol entries
                // before it are longer prefixes, so they win where they apply.
                out.push((None, None, value));
                break;
            }
            Claims::Ports(ports) => {
                for (protocol, lo, hi) in ports {
                    let free = claimed.entry(protocol).or_default().claim(lo, hi);
                    for (a, b) in free {
                        out.extend(
                            port_prefixes(a, b)
                                .into_iter()
                                .map(|prefix| (Some(protocol), Some(prefix), value)),
                        );
                    }
                }
            }
        }
    }
    out
}

/// Family bits of an identity: the families of its addresses.
const V4: u8 = 1;
const V6: u8 = 2;

/// The identities a rule's peers select, and for which families it is an any-peer rule
/// (it selects every identity of the family, with the same ports for each).
struct Selection {
    ids: BTreeSet<u32>,
    any: u8,
    /// The identities of its domainNames patterns (egress only).
    names: BTreeSet<u32>,
}

/// One rule of a program: its POLICY value and what it selects.
struct ProgramRule<'a> {
    rule: &'a ClusterRule,
    value: u32,
    selection: Arc<Selection>,
}

/// A program's rules as far as its entries depend on them: the policies (indices into
/// `PolicySet::cluster_policies`) and, for ingress, the destination's declared ports.
type ProgramKey = (Tier, Direction, Vec<usize>, Vec<NamedPort>);

/// Compiles the tier programs of one desired state.
pub(super) struct TierCompiler<'a> {
    set: &'a PolicySet,
    identities: &'a Identities,
    /// Each tier's policies in the order they are read (indices into cluster_policies).
    ordered: [Vec<usize>; 2],
    /// Rule references by (policy index, direction, rule index).
    refs: HashMap<(usize, Direction, usize), u32>,
    pub rules: Vec<TierRule>,
    families: HashMap<u32, u8>,
    family_sizes: [usize; 2],
    namespace_labels: HashMap<String, Labels>,
    selections: HashMap<(usize, Direction, usize), Arc<Selection>>,
    programs: HashMap<ProgramKey, Arc<TierEntrySet>>,
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::Baseline => 1,
    }
}

impl<'a> TierCompiler<'a> {
    pub fn new(set: &'a PolicySet, identities: &'a Identities) -> Result<Self, CompileError> {
        let index_of = |p: &ClusterNetworkPolicy| {
            set.cluster_policies
                .iter()
                .position(|q| std::ptr::eq(p, q))
                .expect("ordered returns the set's policies")
        };
        let ordered = [Tier::Admin, Tier::Baseline]
            .map(|tier| ordered(set, tier).into_iter().map(index_of).collect());
        // Rule references in reading order, from 1.
        let mut refs = HashMap::new();
        let mut rules = Vec::new();
        for &i in ordered.iter().flatten() {
            let p: &ClusterNetworkPolicy = &set.cluster_policies[i];
            for direction in [Direction::Ingress, Direction::Egress] {
                for (index, rule) in p.rules(direction).iter().enumerate() {
                    rules.push(TierRule {
                        policy: p.name.clone(),
                        tier: p.tier,
                        direction,
                        index,
                        name: rule
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("#{}", index + 1)),
                        action: rule.action,
                    });
                    refs.insert((i, direction, index), rules.len() as u32);
                }
            }
        }
        if rules.len() > POLICY_RULE_MAX as usize {
            return Err(CompileError::TooLarge {
                what: "ClusterNetworkPolicy rules",
                count: rules.len(),
                max: POLICY_RULE_MAX,
            });
        }
        let mut families: HashMap<u32, u8> = HashMap::new();
        families.insert(IDENTITY_WORLD_V4, V4);
        families.insert(IDENTITY_WORLD_V6, V6);
        for (prefix, id) in &identities.ipcache {
            *families.entry(*id).or_default() |= if prefix.addr().is_ipv4() { V4 } else { V6 };
        }
        let family_sizes = [V4, V6].map(|f| families.values().filter(|&&b| b & f != 0).count());
        let mut namespace_labels = HashMap::new();
        for kind in identities.kinds.values() {
            if let IdentityKind::Workloads { namespace, .. } = kind
                && !namespace_labels.contains_key(namespace)
            {
                namespace_labels.insert(namespace.clone(), set.namespace_labels(namespace));
            }
        }
        Ok(TierCompiler {
            set,
            identities,
            ordered,
            refs,
            rules,
            families,
            family_sizes,
            namespace_labels,
            selections: HashMap::new(),
            programs: HashMap::new(),
        })
    }

    /// The program of `local` for `tier` and `direction` (None when it has no entry):
    /// the enforced one, or with `audited` the shadow one, which has the policies in
    /// audit mode too.
    pub fn program(
        &mut self,
        local: &Workload,
        tier: Tier,
        direction: Direction,
        audited: bool,
    ) -> Option<Arc<TierEntrySet>> {
        let namespace = self.labels_of(&local.name.namespace);
        let set = self.set;
        let policies: Vec<usize> = self.ordered[tier_index(tier)]
            .iter()
            .copied()
            .filter(|&i| {
                let p = &set.cluster_policies[i];
                (audited || p.mode != Some(Mode::Audit))
                    && p.applies(&namespace, &local.labels, direction)
            })
            .collect();
        if policies.is_empty() {
            return None;
        }
        // Named ports of ingress rules are the local workload's; of egress rules, the
        // peer's (its identity's).
        let uses_local_ports = direction == Direction::Ingress
            && policies
                .iter()
                .any(|&i| has_named(&set.cluster_policies[i], direction));
        let local_ports = if uses_local_ports {
            local.ports.clone()
        } else {
            Vec::new()
        };
        let key = (tier, direction, policies, local_ports);
        if let Some(entries) = self.programs.get(&key) {
            return (!entries.is_empty()).then(|| entries.clone());
        }
        let mut rules = Vec::new();
        for &i in &key.2 {
            for (index, rule) in set.cluster_policies[i].rules(direction).iter().enumerate() {
                rules.push(ProgramRule {
                    rule,
                    value: policy_value(
                        action_number(rule.action),
                        self.refs[&(i, direction, index)],
                    ),
                    selection: self.selection(i, direction, index),
                });
            }
        }
        let entries = Arc::new(self.entries(&rules, direction, &key.3));
        self.programs.insert(key, entries.clone());
        (!entries.is_empty()).then_some(entries)
    }

    fn labels_of(&mut self, namespace: &str) -> Labels {
        let set = self.set;
        self.namespace_labels
            .entry(namespace.to_string())
            .or_insert_with(|| set.namespace_labels(namespace))
            .clone()
    }

    /// What rule `index` of policy `i` in `direction` selects (computed once per compile).
    fn selection(&mut self, i: usize, direction: Direction, index: usize) -> Arc<Selection> {
        if let Some(s) = self.selections.get(&(i, direction, index)) {
            return s.clone();
        }
        let rule = &self.set.cluster_policies[i].rules(direction)[index];
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for peer in &rule.peers {
            match peer {
                ClusterPeer::Domains(patterns) => {
                    if direction == Direction::Egress {
                        names.extend(patterns.iter().map(|p| p.identity()));
                    }
                }
                ClusterPeer::Networks(cidrs) => {
                    let blocks: Vec<Block> = cidrs.iter().map(|c| Block::new(*c, &[])).collect();
                    ids.extend(self.identities.select_blocks(&blocks));
                }
                ClusterPeer::Nodes(selector) => {
                    let blocks = node_blocks(self.set, selector);
                    ids.extend(self.identities.select_blocks(&blocks));
                }
                ClusterPeer::Workloads(selector) => {
                    // Every workload identity's namespace has its labels here (new).
                    let labels = &self.namespace_labels;
                    ids.extend(self.identities.select_workloads(|namespace, workload| {
                        labels
                            .get(namespace)
                            .is_some_and(|ns| selector.matches(ns, workload))
                    }));
                }
            }
        }
        // An egress rule with named ports claims per peer: never an any-peer rule.
        let mut any = 0;
        if !(direction == Direction::Egress && rule_has_named(rule)) {
            for (bit, size) in [V4, V6].into_iter().zip(self.family_sizes) {
                let selected = ids
                    .iter()
                    .filter(|id| self.families.get(id).is_some_and(|f| f & bit != 0))
                    .count();
                if size > 0 && selected == size {
                    any |= bit;
                }
            }
        }
        let s = Arc::new(Selection { ids, any, names });
        self.selections.insert((i, direction, index), s.clone());
        s
    }

    /// The flattened entries of a program's rules.
    fn entries(
        &self,
        rules: &[ProgramRule],
        direction: Direction,
        local_ports: &[NamedPort],
    ) -> TierEntrySet {
        let mut entries = TierEntrySet::new();
        // Any-peer partitions, one per family, of the any-peer rules alone.
        for (bit, family) in [(V4, FAMILY_V4), (V6, FAMILY_V6)] {
            let any = rules
                .iter()
                .filter(|r| r.selection.any & bit != 0)
                .map(|r| (r.value, Claims::of(r.rule, local_ports)));
            for (protocol, ports, value) in flatten(any) {
                entries.insert((identity_any(family), protocol, ports), value);
            }
        }
        // Identities that some rule not any-peer for all their families claims something
        // for: those get their whole partition.
        let declared = |id: u32| match direction {
            Direction::Ingress => local_ports,
            Direction::Egress => self.identities.named_ports(id),
        };
        let mut own: BTreeSet<u32> = BTreeSet::new();
        for r in rules {
            for &id in &r.selection.ids {
                let families = self.families.get(&id).copied().unwrap_or(0);
                if families & !r.selection.any != 0
                    && !own.contains(&id)
                    && !Claims::of(r.rule, declared(id)).is_empty()
                {
                    own.insert(id);
                }
            }
        }
        for id in own {
            let partition = rules
                .iter()
                .filter(|r| r.selection.ids.contains(&id))
                .map(|r| (r.value, Claims::of(r.rule, declared(id))));
            for (protocol, ports, value) in flatten(partition) {
                entries.insert((id, protocol, ports), value);
            }
        }
        // Name identities: the partition of the rules that name each, alone. The kernel
        // reads them beside the address lookups, and the smallest rule reference of all
        // its hits wins (references are monotone in precedence): the rules by address
        // are found there, not repeated here.
        let names: BTreeSet<u32> = rules
            .iter()
            .flat_map(|r| r.selection.names.iter().copied())
            .collect();
        for id in names {
            let partition = rules
                .iter()
                .filter(|r| r.selection.names.contains(&id))
                .map(|r| (r.value, Claims::of(r.rule, &[])));
            for (protocol, ports, value) in flatten(partition) {
                entries.insert((id, protocol, ports), value);
            }
        }
        entries
    }
}

fn rule_has_named(rule: &ClusterRule) -> bool {
    rule.protocols
        .iter()
        .any(|p| matches!(p, ClusterPort::Named(_)))
}

fn has_named(policy: &ClusterNetworkPolicy, direction: Direction) -> bool {
    policy.rules(direction).iter().any(rule_has_named)
}

/// Sets the tier ids of an endpoint (with `audited`, of its shadow programs): each
/// program gets the id its entries already have, or the next free one (`next_id`, shared
/// with NetworkPolicy ids).
pub(super) fn assign(
    compiler: &mut TierCompiler,
    local: &Workload,
    audited: bool,
    ids: &mut BTreeMap<(Direction, Arc<TierEntrySet>), u32>,
    next_id: &mut u32,
) -> TierIds {
    let mut tier_ids = TierIds::default();
    for tier in [Tier::Admin, Tier::Baseline] {
        for direction in [Direction::Ingress, Direction::Egress] {
            if let Some(entries) = compiler.program(local, tier, direction, audited) {
                let id = *ids.entry((direction, entries)).or_insert_with(|| {
                    *next_id += 1;
                    *next_id
                });
                tier_ids.set(tier, direction, id);
            }
        }
    }
    tier_ids
}

#[cfg(test)]
mod tests;
