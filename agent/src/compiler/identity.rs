//! Identities: what a remote address is, as a number the kernel's policy keys use.
//!
//! Every address of a workload maps to a workload identity and every prefix an ipBlock
//! names maps to a CIDR identity; the kernel finds the longest prefix that holds an
//! address (IPCACHE), so one lookup names any peer. Addresses outside every prefix are
//! WORLD.
//!
//! A workload identity is the workload's (namespace, labels) *and* the set of ipBlocks its
//! address lies in: two workloads with equal labels but addresses on either side of an
//! ipBlock boundary get different identities, so an ipBlock rule can never allow an address
//! outside its block through a shared identity. A ClusterNetworkPolicy's `networks` are
//! blocks here too (without exceptions), and so are its `nodes` peers, as the host
//! prefixes of the matching nodes' addresses (`node_blocks`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use stagewall_common::{
    IDENTITY_FIRST_ALLOCATED, IDENTITY_NODE_FIRST, IDENTITY_WORLD_V4, IDENTITY_WORLD_V6,
};

use crate::policy::model::{
    ClusterPeer, LabelSelector, Labels, NamedPort, ObjectName, Peer, PolicySet,
};

/// An ipBlock as rules name it (the block and its exceptions).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl Block {
    /// The ipBlock `cidr` except `except`, its exceptions sorted and without repeats (so
    /// equal blocks compare equal).
    pub fn new(cidr: IpNet, except: &[IpNet]) -> Block {
        let mut except = except.to_vec();
        except.sort();
        except.dedup();
        Block { cidr, except }
    }

    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.cidr.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

fn subnet_of(inner: &IpNet, outer: &IpNet) -> bool {
    match (inner, outer) {
        (IpNet::V4(i), IpNet::V4(o)) => o.contains(i),
        (IpNet::V6(i), IpNet::V6(o)) => o.contains(i),
        _ => false,
    }
}

/// A set of ipBlocks (indices into `Identities::blocks`) as bits: an address can lie in
/// thousands of blocks (`0.0.0.0/0` or `10.0.0.0/8` with a different `except` each), and
/// a set per address must not cost a tree node per block (16,000 blocks and 1,000 pods
/// took 2 GB that way); this is 2 KB.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSet(Vec<u64>);

impl BlockSet {
    /// The blocks of `blocks` that hold `addr`.
    fn of(blocks: &[Block], addr: IpAddr) -> BlockSet {
        let mut set = BlockSet::default();
        for (i, block) in blocks.iter().enumerate() {
            if block.contains_addr(addr) {
                set.insert(i);
            }
        }
        set
    }

    fn insert(&mut self, index: usize) {
        let word = index / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (index % 64);
    }

    fn intersects(&self, other: &BlockSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    pub fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdentityKind {
    /// Workloads with these labels and declared ports in this namespace whose addresses
    /// lie in exactly the ipBlocks `blocks` (indices into `Identities::blocks`). The ports
    /// are part of it because named-port egress rules resolve against them.
    Workloads {
        namespace: String,
        labels: Labels,
        ports: Vec<NamedPort>,
        blocks: BlockSet,
    },
    /// This node's own addresses that lie in exactly the ipBlocks `blocks`.
    Node {
        blocks: BlockSet,
    },
    /// Addresses whose longest known prefix is this one.
    Cidr(IpNet),
    WorldV4,
    WorldV6,
}

/// The identities of one compiled policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    pub blocks: Vec<Block>,
    pub kinds: BTreeMap<u32, IdentityKind>,
    /// IPCACHE contents: prefix -> identity.
    pub ipcache: BTreeMap<IpNet, u32>,
    /// Which workload owns each address (for naming peers in events).
    pub owners: BTreeMap<IpAddr, ObjectName>,
    /// CIDR identities are allocated last, from this id: the identities below it are the
    /// few that selection walks one by one.
    first_cidr: u32,
}

fn host_prefix(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// A `nodes` peer resolved at compile time: one block per address of a node whose labels
/// match (none when no node matches), so it selects exactly as `networks` of those /32
/// and /128 would. A change of the nodes' labels or addresses changes the blocks, hence
/// the identities, and the next compile follows it.
pub(super) fn node_blocks(set: &PolicySet, selector: &LabelSelector) -> Vec<Block> {
    set.node_peer_addresses(selector)
        .into_iter()
        .map(|a| Block::new(host_prefix(a), &[]))
        .collect()
}

impl Identities {
    pub fn allocate(set: &PolicySet) -> Identities {
        let mut blocks = BTreeSet::new();
        for p in &set.policies {
            for rule in p.ingress.iter().chain(&p.egress) {
                for peer in &rule.peers {
                    if let Peer::IpBlock { cidr, except } = peer {
                        blocks.insert(Block::new(*cidr, except));
                    }
                }
            }
        }
        // A ClusterNetworkPolicy's `networks` and `nodes` split identities as ipBlocks
        // do, so that every identity is wholly inside or outside each of them.
        for p in &set.cluster_policies {
            for rule in p.ingress.iter().chain(&p.egress) {
                for peer in &rule.peers {
                    match peer {
                        ClusterPeer::Networks(cidrs) => {
                            blocks.extend(cidrs.iter().map(|c| Block::new(*c, &[])));
                        }
                        ClusterPeer::Nodes(selector) => blocks.extend(node_blocks(set, selector)),
                        ClusterPeer::Workloads(_) | ClusterPeer::Domains(_) => {}
                    }
                }
            }
        }
        let blocks: Vec<Block> = blocks.into_iter().collect();

        // Workload addresses, keyed so that equal keys share one identity.
        let mut workload_keys: BTreeMap<IdentityKind, Vec<IpAddr>> = BTreeMap::new();
        let mut owners = BTreeMap::new();
        for w in &set.workloads {
            for &addr in &w.addresses {
                let in_blocks = BlockSet::of(&blocks, addr);
                let mut ports = w.ports.clone();
                ports.sort();
                let key = IdentityKind::Workloads {
                    namespace: w.name.namespace.clone(),
                    labels: w.labels.clone(),
                    ports,
                    blocks: in_blocks,
                };
                workload_keys.entry(key).or_default().push(addr);
                owners.insert(addr, w.name.clone());
            }
        }

        let mut ids = Identities {
            blocks,
            owners,
            ..Default::default()
        };
        ids.kinds.insert(IDENTITY_WORLD_V4, IdentityKind::WorldV4);
        ids.kinds.insert(IDENTITY_WORLD_V6, IdentityKind::WorldV6);
        // The node's addresses, by the ipBlocks they lie in, in the range the kernel knows
        // as the node's. An address a workload has stays the workload's.
        let mut node_keys: BTreeMap<BlockSet, Vec<IpAddr>> = BTreeMap::new();
        for &addr in &set.node_addresses {
            if ids.owners.contains_key(&addr) {
                continue;
            }
            let in_blocks = BlockSet::of(&ids.blocks, addr);
            node_keys.entry(in_blocks).or_default().push(addr);
        }
        // More distinct sets than the range holds (hundreds of ipBlocks around the node's
        // addresses) is a policy no one writes; addresses beyond it stay what they are.
        for (id, (blocks, addrs)) in (IDENTITY_NODE_FIRST..IDENTITY_FIRST_ALLOCATED).zip(node_keys)
        {
            for addr in addrs {
                ids.ipcache.insert(host_prefix(addr), id);
            }
            ids.kinds.insert(id, IdentityKind::Node { blocks });
        }
        let mut next = IDENTITY_FIRST_ALLOCATED;
        for (kind, addrs) in workload_keys {
            for addr in addrs {
                ids.ipcache.insert(host_prefix(addr), next);
            }
            ids.kinds.insert(next, kind);
            next += 1;
        }
        ids.first_cidr = next;
        // Every prefix an ipBlock names; /0 is WORLD, a host prefix of a workload stays the
        // workload's.
        let prefixes: BTreeSet<IpNet> = ids
            .blocks
            .iter()
            .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
            .filter(|p| p.prefix_len() > 0)
            .collect();
        for prefix in prefixes {
            if ids.ipcache.contains_key(&prefix) {
                continue;
            }
            ids.ipcache.insert(prefix, next);
            ids.kinds.insert(next, IdentityKind::Cidr(prefix));
            next += 1;
        }
        ids
    }

    /// Identities an ipBlock selects: the workload identities whose addresses lie in it,
    /// the CIDR identities of the IPCACHE prefixes inside it, WORLD for a /0. Sorted.
    pub fn select_block(&self, block: &Block) -> Vec<u32> {
        self.select_blocks(std::slice::from_ref(block))
    }

    /// Identities at least one of `blocks` selects (a rule's ipBlock peers together).
    /// Sorted. One pass per distinct CIDR, not per block: a rule of 16,000 ipBlocks that
    /// share `10.0.0.0/8` and differ in their `except` would otherwise walk every prefix
    /// of the /8 16,000 times.
    pub fn select_blocks(&self, blocks: &[Block]) -> Vec<u32> {
        let mut indices = BlockSet::default();
        for block in blocks {
            if let Ok(i) = self.blocks.binary_search(block) {
                indices.insert(i);
            }
        }
        let world_v4 = blocks
            .iter()
            .any(|b| b.cidr == IpNet::V4(Default::default()));
        let world_v6 = blocks
            .iter()
            .any(|b| b.cidr == IpNet::V6(Default::default()));
        let mut ids = self.select_kinds(|kind| match kind {
            IdentityKind::Workloads { blocks, .. } | IdentityKind::Node { blocks } => {
                blocks.intersects(&indices)
            }
            IdentityKind::WorldV4 => world_v4,
            IdentityKind::WorldV6 => world_v6,
            IdentityKind::Cidr(_) => false,
        });
        // CIDR identities, by the blocks' CIDRs: a prefix inside the CIDR is selected
        // unless every block of that CIDR excepts it.
        let mut by_cidr: BTreeMap<IpNet, Vec<&Block>> = BTreeMap::new();
        for block in blocks {
            by_cidr.entry(block.cidr).or_default().push(block);
        }
        for (cidr, with_cidr) in by_cidr {
            let mut excepted_by: BTreeMap<IpNet, usize> = BTreeMap::new();
            for block in &with_cidr {
                let mut inside: BTreeSet<IpNet> = BTreeSet::new();
                for except in &block.except {
                    inside.extend(self.cidr_prefixes_in(except).map(|(p, _)| p));
                }
                for prefix in inside {
                    *excepted_by.entry(prefix).or_default() += 1;
                }
            }
            ids.extend(
                self.cidr_prefixes_in(&cidr)
                    .filter(|(prefix, _)| {
                        excepted_by.get(prefix).copied().unwrap_or(0) < with_cidr.len()
                    })
                    .map(|(_, id)| id),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The CIDR identities' prefixes inside `outer`, with their identities. Prefixes are
    /// stored truncated and ordered by (address, length), so those inside `outer` form
    /// one run starting at its network address: a range, not a scan of every identity.
    fn cidr_prefixes_in<'a>(&'a self, outer: &'a IpNet) -> impl Iterator<Item = (IpNet, u32)> + 'a {
        let first = IpNet::new(outer.network(), 0).expect("length 0 is valid");
        self.ipcache
            .range(first..)
            .take_while(|(prefix, _)| prefix.network() <= outer.broadcast())
            .filter(|(prefix, id)| {
                subnet_of(prefix, outer)
                    && matches!(self.kinds.get(id), Some(IdentityKind::Cidr(_)))
            })
            .map(|(prefix, id)| (*prefix, *id))
    }

    /// The ports declared by the workloads of an identity (none for CIDRs and WORLD).
    pub fn named_ports(&self, identity: u32) -> &[NamedPort] {
        match self.kinds.get(&identity) {
            Some(IdentityKind::Workloads { ports, .. }) => ports,
            _ => &[],
        }
    }

    /// Workload identities whose namespace and labels satisfy `matches`.
    pub fn select_workloads(&self, matches: impl Fn(&str, &Labels) -> bool) -> Vec<u32> {
        self.select_kinds(|kind| match kind {
            IdentityKind::Workloads {
                namespace, labels, ..
            } => matches(namespace, labels),
            _ => false,
        })
    }

    /// Identities other than CIDR identities (which are many and found by prefix) whose
    /// kind satisfies `matches`.
    fn select_kinds(&self, matches: impl Fn(&IdentityKind) -> bool) -> Vec<u32> {
        self.kinds
            .range(..self.first_cidr)
            .filter(|(_, kind)| matches(kind))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The identity of a remote address, as the kernel finds it (longest prefix, else
    /// WORLD).
    pub fn lookup(&self, addr: IpAddr) -> u32 {
        let max_len = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max_len)
            .rev()
            .find_map(|len| {
                let prefix = IpNet::new(addr, len).ok()?.trunc();
                self.ipcache.get(&prefix).copied()
            })
            .unwrap_or(match addr {
                IpAddr::V4(_) => IDENTITY_WORLD_V4,
                IpAddr::V6(_) => IDENTITY_WORLD_V6,
            })
    }

    /// How events name a remote address: its workload, the CIDR it fell in, or "world".
    pub fn peer_name(&self, addr: IpAddr) -> String {
        if let Some(owner) = self.owners.get(&addr) {
            return owner.to_string();
        }
        match self.kinds.get(&self.lookup(addr)) {
            Some(IdentityKind::Node { .. }) => "node".to_string(),
            Some(IdentityKind::Cidr(prefix)) => prefix.to_string(),
            _ => "world".to_string(),
        }
    }
}
