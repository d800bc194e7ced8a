//! The policy model every source parses into and the compiler reads: workloads (the
//! inventory), namespaces, Kubernetes NetworkPolicies, Pipelines (which expand into
//! NetworkPolicies) and ClusterNetworkPolicies (`cluster`: the tiers around them).

mod cluster;
mod domain;

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use ipnet::IpNet;

pub use self::cluster::{
    Action, ClusterNetworkPolicy, ClusterPeer, ClusterPort, ClusterRule, ClusterSelector,
    PRIORITY_MAX, PRIORITY_MIN, Tier,
};
pub use self::domain::{DOMAIN_MAX, DomainPattern, DomainPatternError, LABEL_MAX};

pub type Labels = BTreeMap<String, String>;

/// Where a document came from, for error messages and explanations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// `namespace/name`, how workloads and policies are named to users.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the kernel recognises a local workload's traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attachment {
    /// A cgroup, as a path below the cgroup2 mount (`/` is the mount itself).
    Cgroup(String),
    /// A systemd unit; its cgroup is found in the cgroup2 tree.
    SystemdUnit(String),
    /// A network interface, the host side of the workload's veth.
    Interface(String),
}

/// What a workload's traffic gets when the agent cannot decide it: in the moment between
/// its programs being attached and its policy programmed, and for a packet whose headers
/// cannot be parsed. Closed (the default) denies, open passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

/// Whether policy drops what it denies. The agent's `--mode` sets it for every workload;
/// the annotation `stagewall.io/mode` sets it for a namespace or a single policy.
///
/// Serialised (the flow records' `agent_mode`) as its `name`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop what policy denies.
    #[default]
    Enforce,
    /// Drop nothing; report what enforce mode would drop.
    Audit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// The annotation that puts a namespace, a NetworkPolicy, a ClusterNetworkPolicy or a
/// Pipeline in audit (or enforce) mode. For NetworkPolicy denials audit anywhere wins: a
/// workload's direction is audited when the agent, its namespace, or any policy that
/// isolates it in that direction is in audit mode. A ClusterNetworkPolicy's denials only
/// by the agent or the namespace, and an audited ClusterNetworkPolicy only reports
/// (`PolicySet::audited`, `tiers_audited`, `cluster_audited`).
pub const MODE_ANNOTATION: &str = "stagewall.io/mode";

/// The annotation that sets a namespace's fail mode (a Workload's `spec.failMode` wins).
pub const FAIL_MODE_ANNOTATION: &str = "stagewall.io/fail-mode";

/// A `Workload` document: a named, labelled workload and its addresses. Without an
/// attachment it is only known as a peer (a workload on another host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: ObjectName,
    pub labels: Labels,
    pub attachment: Option<Attachment>,
    /// With a cgroup (or unit) attachment: the host side of the workload's veth, where TC
    /// decides too, for what raw sockets (AF_PACKET, AF_XDP) send and receive past the
    /// cgroup hooks.
    pub backstop: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// Ports declared by name, which named-port rules resolve against.
    pub ports: Vec<NamedPort>,
    pub fail_mode: Option<FailMode>,
    pub origin: Origin,
}

/// A v1 `Namespace` document; only its labels matter. A namespace that no document
/// declares still exists with the one label Kubernetes gives every namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// From the `stagewall.io/fail-mode` annotation.
    pub fail_mode: Option<FailMode>,
    /// From the `stagewall.io/mode` annotation.
    pub mode: Option<Mode>,
    pub origin: Origin,
}

/// A v1 `Node` document (or Kubernetes Node object): its labels and addresses
/// (status.addresses of type InternalIP and ExternalIP), which a ClusterNetworkPolicy's
/// `nodes` peer selects by. Not this host's own addresses (`PolicySet::node_addresses`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
    pub origin: Origin,
}

/// The label Kubernetes sets on every namespace (used by namespaceSelectors).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    /// Kubernetes semantics: all matchLabels and all expressions must hold; an empty
    /// selector matches everything.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A direction of traffic, seen from the local workload. Events, flow records and metrics
/// name it "ingress" or "egress" (`name`, Display and serde agree).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: widths ({:<7}) apply, as to a string.
        f.pad(self.name())
    }
}

/// A peer of a rule (`from` for ingress, `to` for egress).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Workloads: `namespace_selector` None means the policy's own namespace; both
    /// selectors given means both must match (Kubernetes ANDs them within one peer).
    Workloads {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// Destinations by name (egress only; a Pipeline flow's `fqdn`): the addresses the
    /// workload's own DNS answers gave for a name the pattern matches.
    Domain(DomainPattern),
}

/// Protocols a NetworkPolicy port may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => stagewall_common::PROTO_TCP,
            Protocol::Udp => stagewall_common::PROTO_UDP,
            Protocol::Sctp => stagewall_common::PROTO_SCTP,
        }
    }
}

/// Which ports of a protocol a rule's port entry names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (a range of one) or `port`..=`endPort`.
    Range(u16, u16),
    /// A named port, resolved against the destination workload's declared ports.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl PortSpec {
    /// Does this entry name `port` of `protocol` on a destination that declares `named`?
    pub fn matches(&self, protocol: u8, port: u16, named: &[NamedPort]) -> bool {
        self.protocol.number() == protocol
            && match &self.port {
                PortMatch::All => true,
                PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
                PortMatch::Named(name) => named
                    .iter()
                    .any(|n| &n.name == name && n.protocol == self.protocol && n.port == port),
            }
    }
}

/// A port a workload declares by name (a Kubernetes containerPort), for named-port rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One ingress or egress rule. Empty `peers` means every peer; empty `ports` means every
/// protocol and port (Kubernetes semantics).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
    /// Line of the rule in its policy's file, for explanations.
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub name: ObjectName,
    pub pod_selector: LabelSelector,
    /// policyTypes, given or inferred: Ingress always unless given otherwise, Egress when
    /// the policy has an egress section.
    pub ingress_isolates: bool,
    pub egress_isolates: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// From the `stagewall.io/mode` annotation (of the policy, or of the Pipeline it was
    /// expanded from).
    pub mode: Option<Mode>,
    pub origin: Origin,
}

impl NetworkPolicy {
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_isolates,
            Direction::Egress => self.egress_isolates,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A `Pipeline` document: an ML pipeline as stages and the flows allowed between them and
/// to outside peers. It expands into plain NetworkPolicies (policy::pipeline), so
/// everything downstream sees one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    pub name: ObjectName,
    pub stages: Vec<Stage>,
    pub flows: Vec<Flow>,
    /// Namespace label naming the tenant: workload peers outside the pipeline must be in
    /// namespaces of the pipeline namespace's tenant.
    pub tenant_label: Option<String>,
    /// Also isolate every other workload of the namespace (a default-deny policy).
    pub default_deny: bool,
    /// From the `stagewall.io/mode` annotation; the policies it expands into carry it.
    pub mode: Option<Mode>,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    /// Selects the stage's workloads in the pipeline's namespace.
    pub selector: LabelSelector,
}

/// Traffic allowed from one end to the other, on these ports (none: every port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub from: FlowEnd,
    pub to: FlowEnd,
    pub ports: Vec<PortSpec>,
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// A stage of the pipeline, by name.
    Stage(String),
    /// Anything a NetworkPolicy peer can name: a CIDR or workloads outside the pipeline.
    Peer(Peer),
}

/// A Service frontend (Kubernetes mode): a virtual address, protocol and port that
/// clients call, and the ready pods behind it (address and port), from the Service and
/// its EndpointSlices. A local workload's call to it goes to one of the backends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceFrontend {
    pub service: ObjectName,
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub backends: Vec<std::net::SocketAddr>,
}

/// Everything the compiler needs: the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub workloads: Vec<Workload>,
    pub namespaces: Vec<Namespace>,
    /// NetworkPolicies as written, and those the pipelines expand into.
    pub policies: Vec<NetworkPolicy>,
    pub pipelines: Vec<Pipeline>,
    /// ClusterNetworkPolicies of both tiers, in no particular order (policy::tiers sorts
    /// them by precedence).
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// The cluster's nodes, which ClusterNetworkPolicies' `nodes` peers select.
    pub nodes: Vec<Node>,
    /// Cgroups (paths below the cgroup2 mount) that a guard above them must not deny:
    /// host-network pods, which are the node as far as network policy goes (neither
    /// workloads nor peers), and pods enforced by TC on their interface (their policy is
    /// applied there).
    pub unguarded_cgroups: Vec<String>,
    /// This node's own addresses, when the node counts as a peer of its own (Kubernetes
    /// mode, or `--node-ingress` on a host): ingress into every workload allows them, as
    /// Kubernetes lets a pod's node (kubelet's probes) into an ingress-isolated pod.
    pub node_addresses: Vec<IpAddr>,
    /// Services' frontends and their backends (Kubernetes mode).
    pub services: Vec<ServiceFrontend>,
}

impl PolicySet {
    /// Adds copies of everything `other` holds.
    pub fn extend_from(&mut self, other: &PolicySet) {
        self.workloads.extend_from_slice(&other.workloads);
        self.namespaces.extend_from_slice(&other.namespaces);
        self.policies.extend_from_slice(&other.policies);
        self.pipelines.extend_from_slice(&other.pipelines);
        self.cluster_policies
            .extend_from_slice(&other.cluster_policies);
        self.nodes.extend_from_slice(&other.nodes);
        self.unguarded_cgroups
            .extend_from_slice(&other.unguarded_cgroups);
        self.node_addresses.extend_from_slice(&other.node_addresses);
        self.services.extend_from_slice(&other.services);
    }

    /// The workload named `namespace/name`.
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        let (namespace, name) = name.split_once('/')?;
        self.workloads
            .iter()
            .find(|w| w.name.namespace == namespace && w.name.name == name)
    }

    /// The policies that select `workload` for `direction`: those that isolate it there.
    pub fn isolating(&self, workload: &Workload, direction: Direction) -> Vec<&NetworkPolicy> {
        self.policies
            .iter()
            .filter(|p| {
                p.name.namespace == workload.name.namespace
                    && p.isolates(direction)
                    && p.pod_selector.matches(&workload.labels)
            })
            .collect()
    }

    /// A workload's fail mode: its own, else its namespace's, else closed.
    pub fn fail_mode(&self, workload: &Workload) -> FailMode {
        workload
            .fail_mode
            .or_else(|| {
                self.namespaces
                    .iter()
                    .find(|n| n.name == workload.name.namespace)
                    .and_then(|n| n.fail_mode)
            })
            .unwrap_or_default()
    }

    /// Whether the NetworkPolicy denials of `workload`'s `direction` are audited: by its
    /// namespace, or by a NetworkPolicy that isolates it there (the agent's own `--mode
    /// audit` aside). ClusterNetworkPolicy denials are audited only by the namespace
    /// (`tiers_audited`) or by the agent: a NetworkPolicy is the namespace owner's, and a
    /// guardrail is what they cannot weaken. An audited ClusterNetworkPolicy only reports
    /// (`ClusterNetworkPolicy::mode`).
    pub fn audited(&self, workload: &Workload, direction: Direction) -> bool {
        self.tiers_audited(workload)
            || self
                .isolating(workload, direction)
                .iter()
                .any(|p| p.mode == Some(Mode::Audit))
    }

    /// Whether every denial of `workload`, ClusterNetworkPolicies' too, is audited: its
    /// namespace's annotation (the agent's own `--mode audit` aside).
    pub fn tiers_audited(&self, workload: &Workload) -> bool {
        self.namespaces
            .iter()
            .find(|n| n.name == workload.name.namespace)
            .and_then(|n| n.mode)
            == Some(Mode::Audit)
    }

    /// Whether a ClusterNetworkPolicy in audit mode holds `workload` for `direction`: its
    /// would-be denials are reported, nothing else changes.
    pub fn cluster_audited(&self, workload: &Workload, direction: Direction) -> bool {
        self.cluster_policies_of(workload, direction)
            .iter()
            .any(|p| p.mode == Some(Mode::Audit))
    }

    /// The ClusterNetworkPolicies whose subject holds `workload` and that have rules for
    /// `direction`, in the order they are written.
    pub fn cluster_policies_of(
        &self,
        workload: &Workload,
        direction: Direction,
    ) -> Vec<&ClusterNetworkPolicy> {
        let namespace_labels = self.namespace_labels(&workload.name.namespace);
        self.cluster_policies
            .iter()
            .filter(|p| p.applies(&namespace_labels, &workload.labels, direction))
            .collect()
    }

    /// The addresses of the nodes whose labels match `selector` (a `nodes` peer), sorted,
    /// without repeats.
    pub fn node_peer_addresses(&self, selector: &LabelSelector) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = self
            .nodes
            .iter()
            .filter(|n| selector.matches(&n.labels))
            .flat_map(|n| n.addresses.iter().copied())
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// A namespace's labels, with the name label Kubernetes always sets.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name == namespace)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
        labels
    }
}
