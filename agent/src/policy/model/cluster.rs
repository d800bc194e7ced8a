//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): cluster-wide guardrails in
//! two tiers around the namespaces' NetworkPolicies. The Admin tier decides first, the
//! NetworkPolicy tier next, the Baseline tier last; within a tier lower priorities first,
//! within a policy the rules in the order written. policy::tiers reads this directly.

use std::{cmp::Ordering, fmt};

use ipnet::IpNet;

use super::{DomainPattern, LabelSelector, Labels, Mode, NamedPort, Origin, Protocol};

/// Where a ClusterNetworkPolicy stands relative to the namespaces' NetworkPolicies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicy: what namespace owners cannot override.
    Admin,
    /// After NetworkPolicy: defaults that a NetworkPolicy selecting the pod replaces.
    Baseline,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What a matching rule does with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allowed; no later rule of any tier is read for this side of the connection.
    Accept,
    /// Denied; no later rule of any tier is read.
    Deny,
    /// The rest of this tier is skipped: the next tier decides.
    Pass,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The lowest and highest `spec.priority` (lower values are read first).
pub const PRIORITY_MIN: u16 = 0;
pub const PRIORITY_MAX: u16 = 1000;

/// Workloads chosen by namespace labels, or by namespace and workload labels together.
/// Used for `spec.subject` and for the `namespaces` and `pods` peers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterSelector {
    /// Every workload of the namespaces whose labels match.
    Namespaces(LabelSelector),
    /// The workloads whose labels match `pods`, in namespaces whose labels match
    /// `namespaces` (an empty selector: every namespace).
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

impl ClusterSelector {
    /// Does a workload with `labels`, in a namespace with `namespace_labels`, match?
    pub fn matches(&self, namespace_labels: &Labels, labels: &Labels) -> bool {
        match self {
            ClusterSelector::Namespaces(n) => n.matches(namespace_labels),
            ClusterSelector::Pods { namespaces, pods } => {
                namespaces.matches(namespace_labels) && pods.matches(labels)
            }
        }
    }
}

/// A peer of a ClusterNetworkPolicy rule (`from` of an ingress rule, `to` of an egress
/// rule).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterPeer {
    /// Workloads of the inventory (`namespaces` or `pods`).
    Workloads(ClusterSelector),
    /// Addresses (egress only): every address in one of these CIDRs, workloads' too.
    Networks(Vec<IpNet>),
    /// Nodes (egress only, the API's experimental `nodes`): the addresses of the nodes of
    /// the inventory (`PolicySet::nodes`) whose labels match.
    Nodes(LabelSelector),
    /// Names (egress only, `domainNames`, in Accept rules only): the addresses the
    /// workload's own DNS answers gave for a name one of these patterns matches.
    Domains(Vec<DomainPattern>),
}

/// One entry of a rule's `protocols`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPort {
    /// `tcp`, `udp` or `sctp` with `destinationPort` a `number` (first == last) or a
    /// `range` (first < last).
    Ports {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    /// `destinationNamedPort`: the port the destination workload declares by this name,
    /// whatever its protocol.
    Named(String),
}

impl ClusterPort {
    /// Does this entry name `port` of `protocol` on a destination that declares `named`?
    pub fn matches(&self, protocol: u8, port: u16, named: &[NamedPort]) -> bool {
        match self {
            ClusterPort::Ports {
                protocol: p,
                first,
                last,
            } => p.number() == protocol && (*first..=*last).contains(&port),
            ClusterPort::Named(name) => named
                .iter()
                .any(|n| &n.name == name && n.protocol.number() == protocol && n.port == port),
        }
    }
}

/// One ingress or egress rule. `peers` is never empty (the API requires one at least);
/// empty `protocols` means every protocol and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// The rule's `name`; the API makes it optional, explanations then say `#N`.
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    pub protocols: Vec<ClusterPort>,
    /// Line of the rule in its policy's file.
    pub line: u32,
}

/// A `ClusterNetworkPolicy` document. Cluster-scoped: its name has no namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub tier: Tier,
    /// PRIORITY_MIN..=PRIORITY_MAX; lower is read first.
    pub priority: u16,
    pub subject: ClusterSelector,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// Its `stagewall.io/mode` annotation. In audit mode it changes no verdict: the
    /// kernel decides without it, and reports as would-drop what it would deny were it
    /// enforced (the tiers read again with it).
    pub mode: Option<Mode>,
    pub origin: Origin,
}

impl ClusterNetworkPolicy {
    /// Does its subject hold a workload with `labels` in a namespace with
    /// `namespace_labels`, and has it rules for `direction`?
    pub fn applies(
        &self,
        namespace_labels: &Labels,
        labels: &Labels,
        direction: super::Direction,
    ) -> bool {
        !self.rules(direction).is_empty() && self.subject.matches(namespace_labels, labels)
    }

    pub fn rules(&self, direction: super::Direction) -> &[ClusterRule] {
        match direction {
            super::Direction::Ingress => &self.ingress,
            super::Direction::Egress => &self.egress,
        }
    }

    /// The order policies of one tier are read in: priority, then (the API leaves ties
    /// to the implementation) name, which is unique, so the order is total and the same
    /// on every node and every run.
    pub fn precedence(&self, other: &ClusterNetworkPolicy) -> Ordering {
        (self.tier, self.priority, &self.name).cmp(&(other.tier, other.priority, &other.name))
    }
}
