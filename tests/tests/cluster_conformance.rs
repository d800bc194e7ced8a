//! ClusterNetworkPolicy conformance on the real kernel: the upstream conformance tests of
//! kubernetes-sigs/network-policy-api (`conformance/tests/`, ClusterNetworkPolicy
//! `policy.networking.k8s.io/v1alpha2`, tiers Admin and Baseline; their manifests in
//! `conformance/base/`) ported to the test bed, and the examples of `policies/cluster/`.
//!
//! Upstream's model: namespaces network-policy-conformance-{gryffindor, hufflepuff,
//! ravenclaw, slytherin}, labelled `conformance-house: <house>`, with two pods each
//! (harry-potter-0/1, cedric-diggory-0/1, luna-lovegood-0/1, draco-malfoy-0/1) serving TCP
//! 80 and 8080, UDP 53 and 5353, SCTP 9003 and 9005, with the named ports `web` (TCP 80)
//! and `dns` (UDP 53). Here each pod is a node of the test bed: gryffindor, hufflepuff and
//! slytherin pods are cgroups (cgroup_skb and connect/sendmsg hooks), ravenclaw's are
//! interfaces (TC), so both data paths answer to the same semantics. Policies are files
//! the agent reads.
//!
//! An upstream test applies its manifest, then runs subtests in order, each patching the
//! policies further (swapping rules, changing an action or a priority, relabelling a
//! namespace, deleting a NetworkPolicy) and poking a few connections. Each port
//! (`scenarios.rs`) keeps the upstream test's name, its subtests' names, their patches
//! and their pokes verbatim. For every state the patches lead to, the whole matrix (every
//! pod to every pod, all six served ports: 384 connections) is measured with real traffic
//! and compared with what the tiers' semantics give for it (`World::allows`, written here
//! from the API's definition, independently of the agent's code); upstream's own pokes
//! are then checked against the measurement. `upstream_pokes_agree_with_the_semantics_here`
//! (no root needed) checks those pokes against `World::allows`, so the matrix rests on
//! upstream's expectations.
//!
//! SCTP: this kernel may lack an SCTP stack; the probe sends real SCTP packets (INIT,
//! answered by an INIT ACK) through raw sockets (tests/src/sctp.rs says what that covers).
//!
//! Not ported: CNPAdminTierEgressNodePeers and CNPBaselineTierEgressNodePeers (the `nodes`
//! peer, experimental upstream: their servers are host-network pods, which stagewall
//! treats as the node; the peer itself is checked on the kernel by cluster_guardrails.rs,
//! against outside addresses that Node documents name).

#[path = "cluster_conformance/scenarios.rs"]
mod scenarios;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use stagewall_tests::{Agent, Layout, Testbed, privileged};

use scenarios::Scenario;

// The model's topology.

/// The houses: (house, the pods' StatefulSet name).
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
    ("slytherin", "draco-malfoy"),
];
const GRYFFINDOR: usize = 0;
const HUFFLEPUFF: usize = 1;
const RAVENCLAW: usize = 2;
const SLYTHERIN: usize = 3;

const HOUSE_LABEL: &str = "conformance-house";
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn namespace(house: usize) -> String {
    format!("network-policy-conformance-{}", HOUSES[house].0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn word(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// What every pod serves, as upstream's containers do.
const SERVED: [(Proto, u16); 6] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 8080),
    (Proto::Udp, 53),
    (Proto::Udp, 5353),
    (Proto::Sctp, 9003),
    (Proto::Sctp, 9005),
];

/// The named container ports of every pod: web (TCP 80) and dns (UDP 53).
const NAMED_PORTS: [(&str, Proto, u16); 2] = [("web", Proto::Tcp, 80), ("dns", Proto::Udp, 53)];

/// A pod: its house and its ordinal (harry-potter-0 is gryffindor's 0). Written `g0` in
/// the scenarios: the house's initial and the ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    house: usize,
    ordinal: u8,
}

impl Pod {
    fn code(code: &str) -> Pod {
        let (initial, ordinal) = code.split_at(1);
        let house = HOUSES
            .iter()
            .position(|(h, _)| h.starts_with(initial))
            .unwrap_or_else(|| panic!("no house for {code}"));
        Pod {
            house,
            ordinal: ordinal.parse().expect("a pod's ordinal"),
        }
    }

    /// The test bed node (and the scenarios' short name).
    fn node(self) -> String {
        format!("{}{}", &HOUSES[self.house].0[..1], self.ordinal)
    }

    fn name(self) -> String {
        format!("{}-{}", HOUSES[self.house].1, self.ordinal)
    }

    fn full(self) -> String {
        format!("{}/{}", HOUSES[self.house].0, self.name())
    }

    /// 198.18.0.16/30 is gryffindor's, .20/30 hufflepuff's, .24/30 ravenclaw's,
    /// .28/30 slytherin's.
    fn v4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 16 + 4 * self.house as u8 + self.ordinal)
    }

    /// Ravenclaw's pods are enforced at their interface (TC), the others by cgroup.
    fn by_interface(self) -> bool {
        self.house == RAVENCLAW
    }
}

fn pods() -> Vec<Pod> {
    (0..HOUSES.len())
        .flat_map(|house| (0..2).map(move |ordinal| Pod { house, ordinal }))
        .collect()
}

// The policies: the part of the API the upstream tests use, as data, so a patch is a
// change to a value, and both the YAML and the expected verdicts come from one place.

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
pub enum Select {
    Namespaces(Labels),
    Pods { namespaces: Labels, pods: Labels },
}

#[derive(Clone, Debug)]
pub enum Peer {
    Select(Select),
    Networks(Vec<String>),
}

#[derive(Clone, Debug)]
pub enum Port {
    Number(Proto, u16),
    Named(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

#[derive(Clone, Debug)]
pub struct Rule {
    name: String,
    action: Action,
    peers: Vec<Peer>,
    protocols: Vec<Port>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Admin,
    Baseline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(Clone, Debug)]
pub struct Cnp {
    name: &'static str,
    tier: Tier,
    priority: u32,
    subject: Select,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

impl Cnp {
    fn rules(&self, dir: Dir) -> &Vec<Rule> {
        match dir {
            Dir::Ingress => &self.ingress,
            Dir::Egress => &self.egress,
        }
    }

    fn rules_mut(&mut self, dir: Dir) -> &mut Vec<Rule> {
        match dir {
            Dir::Ingress => &mut self.ingress,
            Dir::Egress => &mut self.egress,
        }
    }
}

/// The one NetworkPolicy shape upstream uses (api_integration/standard-anp-np-banp.yaml):
/// every pod of its namespace isolated both ways, open from and to the namespaces
/// labelled `peers`.
#[derive(Clone, Debug)]
pub struct Np {
    name: &'static str,
    house: usize,
    peers: Labels,
}

/// Everything a state of an upstream test consists of.
#[derive(Clone, Debug, Default)]
pub struct World {
    cnps: Vec<Cnp>,
    nps: Vec<Np>,
    /// Houses whose namespace's labels a patch replaced.
    relabeled: BTreeMap<usize, Labels>,
}

fn subset(want: &Labels, have: &[(String, String)]) -> bool {
    want.iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn cidr_contains(cidr: &str, addr: Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').expect("a CIDR");
    // IPv6 blocks (upstream's "::/0") hold no IPv4 pod.
    let Ok(net) = net.parse::<Ipv4Addr>() else {
        return false;
    };
    let len: u32 = len.parse().expect("a prefix length");
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

impl World {
    pub fn cnp(&mut self, name: &str) -> &mut Cnp {
        self.cnps
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no ClusterNetworkPolicy {name}"))
    }

    fn namespace_labels(&self, house: usize) -> Vec<(String, String)> {
        let mut labels: Vec<(String, String)> = match self.relabeled.get(&house) {
            Some(l) => l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            None => vec![(HOUSE_LABEL.into(), HOUSES[house].0.into())],
        };
        // The API server sets it on every namespace, whatever a patch says.
        labels.push((NAME_LABEL.into(), namespace(house)));
        labels
    }

    fn selects(&self, s: &Select, p: Pod) -> bool {
        let pod_labels = [(HOUSE_LABEL.to_string(), HOUSES[p.house].0.to_string())];
        match s {
            Select::Namespaces(ns) => subset(ns, &self.namespace_labels(p.house)),
            Select::Pods { namespaces, pods } => {
                subset(namespaces, &self.namespace_labels(p.house)) && subset(pods, &pod_labels)
            }
        }
    }

    /// The first rule of `tier` that matches `local`'s side of a connection with
    /// `remote` to destination port (`proto`, `port`): the tier's policies whose subject
    /// holds `local` by priority, each one's rules in order.
    fn first_match(
        &self,
        tier: Tier,
        local: Pod,
        remote: Pod,
        dir: Dir,
        proto: Proto,
        port: u16,
    ) -> Option<Action> {
        let mut policies: Vec<&Cnp> = self
            .cnps
            .iter()
            .filter(|p| p.tier == tier && self.selects(&p.subject, local))
            .collect();
        policies.sort_by_key(|p| (p.priority, p.name));
        policies
            .iter()
            .flat_map(|p| p.rules(dir))
            .find(|r| {
                let peer = r.peers.iter().any(|peer| match peer {
                    Peer::Select(s) => self.selects(s, remote),
                    Peer::Networks(cidrs) => cidrs.iter().any(|c| cidr_contains(c, remote.v4())),
                });
                // Named ports are the destination's; every pod declares the same.
                let ports = r.protocols.is_empty()
                    || r.protocols.iter().any(|p| match p {
                        Port::Number(pr, n) => (*pr, *n) == (proto, port),
                        Port::Named(name) => NAMED_PORTS.contains(&(*name, proto, port)),
                    });
                peer && ports
            })
            .map(|r| r.action)
    }

    /// One side of a connection: Admin tier, then the NetworkPolicies that isolate the
    /// pod, then the Baseline tier, then allowed.
    fn side(&self, local: Pod, remote: Pod, dir: Dir, proto: Proto, port: u16) -> bool {
        match self.first_match(Tier::Admin, local, remote, dir, proto, port) {
            Some(Action::Accept) => return true,
            Some(Action::Deny) => return false,
            Some(Action::Pass) | None => {}
        }
        let isolating: Vec<&Np> = self.nps.iter().filter(|n| n.house == local.house).collect();
        if !isolating.is_empty() {
            let remote_ns = self.namespace_labels(remote.house);
            return isolating.iter().any(|n| subset(&n.peers, &remote_ns));
        }
        !matches!(
            self.first_match(Tier::Baseline, local, remote, dir, proto, port),
            Some(Action::Deny)
        )
    }

    /// Whether `from` reaches `to` on (`proto`, `port`): both ends must allow it. A pod's
    /// traffic to itself never leaves it (stagewall allows it; upstream pokes none).
    pub fn allows(&self, from: Pod, to: Pod, proto: Proto, port: u16) -> bool {
        from == to
            || (self.side(from, to, Dir::Egress, proto, port)
                && self.side(to, from, Dir::Ingress, proto, port))
    }

    /// The state as policy documents: the namespaces (their labels are part of it),
    /// ClusterNetworkPolicies and NetworkPolicies.
    fn yaml(&self) -> String {
        let mut out = String::new();
        for (house, (name, _)) in HOUSES.iter().enumerate() {
            let labels: Labels = match self.relabeled.get(&house) {
                Some(l) => l.clone(),
                None => vec![(HOUSE_LABEL, name.to_string())],
            };
            out += &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {}}}\n---\n",
                namespace(house),
                labels_yaml(&labels)
            );
        }
        for p in &self.cnps {
            out += &cnp_yaml(p);
        }
        for n in &self.nps {
            let peers = format!(
                "[{{namespaceSelector: {{matchLabels: {}}}}}]",
                labels_yaml(&n.peers)
            );
            out += &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{{from: {peers}}}]\n  egress: [{{to: {peers}}}]\n---\n",
                n.name,
                namespace(n.house)
            );
        }
        out
    }
}

fn labels_yaml(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn select_yaml(s: &Select) -> String {
    match s {
        Select::Namespaces(l) => format!("namespaces: {{matchLabels: {}}}", labels_yaml(l)),
        Select::Pods { namespaces, pods } => format!(
            "pods: {{namespaceSelector: {{matchLabels: {}}}, podSelector: {{matchLabels: {}}}}}",
            labels_yaml(namespaces),
            labels_yaml(pods)
        ),
    }
}

fn cnp_yaml(p: &Cnp) -> String {
    let mut out = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {}}}\nspec:\n  tier: {:?}\n  priority: {}\n  subject:\n    {}\n",
        p.name,
        p.tier,
        p.priority,
        select_yaml(&p.subject)
    );
    for (dir, field) in [(Dir::Ingress, "from"), (Dir::Egress, "to")] {
        let rules = p.rules(dir);
        if rules.is_empty() {
            continue;
        }
        out += &format!("  {}:\n", format!("{dir:?}").to_lowercase());
        for r in rules {
            out += &format!(
                "    - name: \"{}\"\n      action: {:?}\n      {field}:\n",
                r.name, r.action
            );
            for peer in &r.peers {
                let peer = match peer {
                    Peer::Select(s) => select_yaml(s),
                    Peer::Networks(cidrs) => {
                        let quoted: Vec<String> =
                            cidrs.iter().map(|c| format!("\"{c}\"")).collect();
                        format!("networks: [{}]", quoted.join(", "))
                    }
                };
                out += &format!("        - {peer}\n");
            }
            if !r.protocols.is_empty() {
                out += "      protocols:\n";
                for port in &r.protocols {
                    out += &match port {
                        Port::Number(proto, n) => format!(
                            "        - {}: {{destinationPort: {{number: {n}}}}}\n",
                            proto.word()
                        ),
                        Port::Named(name) => format!("        - destinationNamedPort: {name}\n"),
                    };
                }
            }
        }
    }
    out + "---\n"
}

// The test bed.

/// One node per pod, at the pod's address; each serves every port.
fn conformance_bed() -> Testbed {
    let nodes: Vec<String> = pods().iter().map(|p| p.node()).collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut layout = Layout::for_test(&names);
    for (spec, p) in layout.nodes.iter_mut().zip(pods()) {
        spec.n = p.v4().octets()[3];
    }
    let mut bed = Testbed::with_layout(layout).expect("creating the test bed");
    let ports = |proto: Proto| -> Vec<u16> {
        SERVED
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|(_, n)| *n)
            .collect()
    };
    for p in pods() {
        bed.serve_with_sctp(
            &p.node(),
            &ports(Proto::Tcp),
            &ports(Proto::Udp),
            &ports(Proto::Sctp),
        )
        .unwrap();
    }
    bed
}

/// The pods as Workloads (the namespaces are part of each state: patches relabel them).
fn inventory(bed: &Testbed) -> String {
    let mut out = String::new();
    for p in pods() {
        let node = bed.node(&p.node());
        let attachment = if p.by_interface() {
            format!("interface: {}", node.host_if)
        } else {
            format!("cgroup: {}", node.cgroup_path)
        };
        out += &format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: {}, labels: {{{HOUSE_LABEL}: {}}}}}\nspec:\n  {attachment}\n  addresses: [\"{}\"]\n  ports:\n    - {{name: web, port: 80}}\n    - {{name: dns, port: 53, protocol: UDP}}\n---\n",
            p.name(),
            namespace(p.house),
            HOUSES[p.house].0,
            p.v4()
        );
    }
    out
}

/// (from node, to node, protocol, port) -> what the probe saw.
type Measured = BTreeMap<(String, String, Proto, u16), String>;

/// Probes, from every source node at once, each target on each (protocol, port);
/// `expect` says what should pass. A probe that should pass but timed out is tried
/// once more, alone and with five times the time, before it counts: on a loaded
/// machine an answer can be late. A probe that passed is never tried again.
fn measure(
    bed: &Testbed,
    sources: &[String],
    targets: &[(String, IpAddr)],
    conns: &[(Proto, u16)],
    expect: &dyn Fn(&str, &str, Proto, u16) -> bool,
) -> Measured {
    const TIMEOUT_MS: u32 = 500;
    let probe = |from: &str, wanted: &[(String, Proto, u16)], ms: u32| -> Measured {
        let mut args = vec!["matrix".to_string(), ms.to_string()];
        let mut keys = BTreeMap::new();
        for (to, proto, port) in wanted {
            let addr = targets.iter().find(|(n, _)| n == to).expect("a target").1;
            let target = format!("{}/{addr}/{port}", proto.word());
            keys.insert(target.clone(), (to.clone(), *proto, *port));
            args.push(target);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bed.probe_output(from, &args)
            .lines()
            .map(|line| {
                let mut parts = line.split_whitespace();
                let target = parts.next().unwrap_or_default();
                let outcome = parts.next().unwrap_or_default().to_string();
                let (to, proto, port) = keys
                    .get(target)
                    .unwrap_or_else(|| panic!("probe from {from} printed {line:?}"))
                    .clone();
                ((from.to_string(), to, proto, port), outcome)
            })
            .collect()
    };
    let all: Vec<(String, Proto, u16)> = targets
        .iter()
        .flat_map(|(to, _)| {
            conns
                .iter()
                .map(move |(proto, port)| (to.clone(), *proto, *port))
        })
        .collect();
    let mut measured = Measured::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|from| {
                let (all, probe) = (&all, &probe);
                scope.spawn(move || probe(from, all, TIMEOUT_MS))
            })
            .collect();
        for h in handles {
            measured.extend(h.join().expect("probe thread"));
        }
    });
    assert_eq!(
        measured.len(),
        sources.len() * all.len(),
        "every probe answered"
    );
    let late: Vec<(String, String, Proto, u16)> = measured
        .iter()
        .filter(|((f, t, proto, port), o)| *o == "timeout" && expect(f, t, *proto, *port))
        .map(|(k, _)| k.clone())
        .collect();
    for (from, to, proto, port) in late {
        let again = probe(&from, &[(to.clone(), proto, port)], TIMEOUT_MS * 5);
        eprintln!(
            "late: {from} -> {to} {}/{port} timed out, then {}",
            proto.word(),
            again.values().next().map_or("nothing", String::as_str)
        );
        measured.extend(again);
    }
    for ((f, t, proto, port), o) in &measured {
        assert!(
            matches!(o.as_str(), "ok" | "eperm" | "timeout"),
            "{f} -> {t} {}/{port}: unexpected outcome {o}",
            proto.word()
        );
    }
    measured
}

fn passed(outcome: &str) -> bool {
    outcome == "ok"
}

/// Puts `policies` in force (with the inventory), gives the agent enforcing them.
fn enforce(bed: &Testbed, policies: &str) -> Agent {
    bed.write_policy("case.yaml", policies).unwrap();
    bed.start_agent(&[]).expect("starting the agent")
}

/// Stops the agent and removes everything it left in the kernel: each state starts from
/// nothing (the pinned flow table would otherwise carry the last state's flows).
fn clear(bed: &Testbed, mut agent: Agent) {
    agent.stop().expect("stopping the agent");
    bed.uninstall().expect("uninstalling");
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// Runs an upstream test: every state its patches lead to, measured whole.
fn run(scenario: Scenario) {
    if !privileged() {
        return;
    }
    let bed = conformance_bed();
    bed.write_policy("inventory.yaml", &inventory(&bed))
        .unwrap();
    let nodes: Vec<String> = pods().iter().map(|p| p.node()).collect();
    let targets: Vec<(String, IpAddr)> = pods().iter().map(|p| (p.node(), p.v4().into())).collect();

    // Without policy everything is reachable: the test bed itself works.
    let open = World::default();
    let agent = enforce(&bed, &open.yaml());
    let got = measure(&bed, &nodes, &targets, &SERVED, &|_, _, _, _| true);
    clear(&bed, agent);
    let closed: Vec<String> = got
        .iter()
        .filter(|(_, o)| !passed(o))
        .map(|((f, t, proto, port), o)| format!("{f} -> {t} {}/{port}: {o}", proto.word()))
        .collect();
    assert!(
        closed.is_empty(),
        "test bed broken without policy:\n{}",
        closed.join("\n")
    );

    let mut world = (scenario.manifest)();
    let mut failures = Vec::new();
    let mut states = 0;
    let mut last: Option<(String, Measured)> = None;
    for step in &scenario.steps {
        if let Some(change) = step.change {
            change(&mut world);
        }
        let yaml = world.yaml();
        if last.as_ref().is_none_or(|(y, _)| *y != yaml) {
            states += 1;
            let expect = |f: &str, t: &str, proto, port| {
                world.allows(Pod::code(f), Pod::code(t), proto, port)
            };
            let agent = enforce(&bed, &yaml);
            let got = measure(&bed, &nodes, &targets, &SERVED, &expect);
            clear(&bed, agent);
            let wrong: Vec<String> = got
                .iter()
                .filter(|((f, t, proto, port), o)| passed(o) != expect(f, t, *proto, *port))
                .map(|((f, t, proto, port), o)| {
                    format!(
                        "{} -> {} {}/{port}: expected {}, measured {o}",
                        Pod::code(f).full(),
                        Pod::code(t).full(),
                        proto.word(),
                        verdict(expect(f, t, *proto, *port))
                    )
                })
                .collect();
            let allowed = got.values().filter(|o| passed(o)).count();
            eprintln!(
                "{} state {states} ({}): {allowed}/{} allowed, {} wrong",
                scenario.upstream,
                step.subtest,
                got.len(),
                wrong.len()
            );
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} state {states} (from subtest {:?}), matrix:\n  {}",
                    scenario.upstream,
                    step.subtest,
                    wrong.join("\n  ")
                ));
            }
            last = Some((yaml, got));
        }
        let (_, got) = last.as_ref().expect("measured");
        for &(from, to, proto, port, want) in step.pokes {
            let outcome = &got[&(from.to_string(), to.to_string(), proto, port)];
            if passed(outcome) != want {
                failures.push(format!(
                    "{} / {:?}: {} -> {} {}/{port}: upstream expects {}, measured {outcome}",
                    scenario.upstream,
                    step.subtest,
                    Pod::code(from).full(),
                    Pod::code(to).full(),
                    proto.word(),
                    verdict(want)
                ));
            }
        }
    }
    eprintln!("{}: {states} states measured", scenario.upstream);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Upstream's own expectations, against the semantics the matrices are measured
/// against: the manifests and patches here are upstream's, and `World::allows` reads
/// them as upstream does.
#[test]
fn upstream_pokes_agree_with_the_semantics_here() {
    let mut wrong = Vec::new();
    let mut pokes = 0;
    for scenario in scenarios::all() {
        let mut world = (scenario.manifest)();
        for step in &scenario.steps {
            if let Some(change) = step.change {
                change(&mut world);
            }
            for &(from, to, proto, port, want) in step.pokes {
                pokes += 1;
                if world.allows(Pod::code(from), Pod::code(to), proto, port) != want {
                    wrong.push(format!(
                        "{} / {:?}: {from} -> {to} {}/{port} upstream {}",
                        scenario.upstream,
                        step.subtest,
                        proto.word(),
                        verdict(want)
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        pokes, 292,
        "every upstream poke, the EgressNodePeers tests' aside"
    );
}

/// Every state renders to policies the agent's parser accepts, with the inventory: a
/// measurement never runs on a policy set the agent refused.
#[test]
fn every_state_parses() {
    let dir =
        std::env::temp_dir().join(format!("stagewall-cnp-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut seen = BTreeSet::new();
    for scenario in scenarios::all() {
        let mut world = (scenario.manifest)();
        for step in &scenario.steps {
            if let Some(change) = step.change {
                change(&mut world);
            }
            let yaml = world.yaml();
            if !seen.insert(yaml.clone()) {
                continue;
            }
            std::fs::write(dir.join("case.yaml"), &yaml).unwrap();
            let loaded = stagewall::policy::parse::load_dir(&dir, &mut Default::default());
            if let Err(e) = loaded {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{} / {:?}: {e}\n{yaml}", scenario.upstream, step.subtest);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// The upstream tests, one each (the names are upstream's ShortNames).

#[test]
fn cnp_admin_tier_ingress_tcp() {
    run(scenarios::cnp_admin_tier_ingress_tcp());
}

#[test]
fn cnp_admin_tier_ingress_udp() {
    run(scenarios::cnp_admin_tier_ingress_udp());
}

#[test]
fn cnp_admin_tier_ingress_sctp() {
    run(scenarios::cnp_admin_tier_ingress_sctp());
}

#[test]
fn cnp_admin_tier_egress_tcp() {
    run(scenarios::cnp_admin_tier_egress_tcp());
}

#[test]
fn cnp_admin_tier_egress_udp() {
    run(scenarios::cnp_admin_tier_egress_udp());
}

#[test]
fn cnp_admin_tier_egress_sctp() {
    run(scenarios::cnp_admin_tier_egress_sctp());
}

#[test]
fn cnp_admin_tier_gress() {
    run(scenarios::cnp_admin_tier_gress());
}

#[test]
fn cnp_admin_tier_ingress_named_port() {
    run(scenarios::cnp_admin_tier_ingress_named_port());
}

#[test]
fn cnp_admin_tier_egress_named_port() {
    run(scenarios::cnp_admin_tier_egress_named_port());
}

#[test]
fn cnp_admin_tier_egress_inline_cidr_peers() {
    run(scenarios::cnp_admin_tier_egress_inline_cidr_peers());
}

#[test]
fn cnp_admin_tier_priority_field() {
    run(scenarios::cnp_admin_tier_priority_field());
}

#[test]
fn cnp_admin_tier_integration() {
    run(scenarios::cnp_admin_tier_integration());
}

#[test]
fn cnp_baseline_tier_ingress_tcp() {
    run(scenarios::cnp_baseline_tier_ingress_tcp());
}

#[test]
fn cnp_baseline_tier_ingress_udp() {
    run(scenarios::cnp_baseline_tier_ingress_udp());
}

#[test]
fn cnp_baseline_tier_ingress_sctp() {
    run(scenarios::cnp_baseline_tier_ingress_sctp());
}

#[test]
fn cnp_baseline_tier_egress_tcp() {
    run(scenarios::cnp_baseline_tier_egress_tcp());
}

#[test]
fn cnp_baseline_tier_egress_udp() {
    run(scenarios::cnp_baseline_tier_egress_udp());
}

#[test]
fn cnp_baseline_tier_egress_sctp() {
    run(scenarios::cnp_baseline_tier_egress_sctp());
}

#[test]
fn cnp_baseline_tier_gress() {
    run(scenarios::cnp_baseline_tier_gress());
}

#[test]
fn cnp_baseline_tier_ingress_named_port() {
    run(scenarios::cnp_baseline_tier_ingress_named_port());
}

#[test]
fn cnp_baseline_tier_egress_named_port() {
    run(scenarios::cnp_baseline_tier_egress_named_port());
}

#[test]
fn cnp_baseline_tier_egress_inline_cidr_peers() {
    run(scenarios::cnp_baseline_tier_egress_inline_cidr_peers());
}

// The examples of policies/cluster, each on a small bed of its own: the example file as
// shipped, the workloads it speaks of, the whole matrix measured.

type Expect = fn(&str, &str, Proto, u16) -> bool;

/// A node of an example's bed: a workload (namespace, labels as a YAML flow map, enforced
/// by interface or cgroup) or an outside address.
enum Member {
    Workload {
        namespace: &'static str,
        labels: &'static str,
        by_interface: bool,
    },
    Outside(&'static str),
}

/// Builds the bed, checks that without the example everything passes, then measures
/// each state (policies added to the inventory) against what it expects.
fn run_example(
    members: &[(&'static str, Member)],
    namespaces: &str,
    serve: &[(Proto, u16)],
    states: &[(&str, String, Expect)],
) {
    let names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
    let mut bed = Testbed::new(&names).expect("creating the test bed");
    let mut inventory = namespaces.to_string();
    let mut sources = Vec::new();
    for (name, member) in members {
        match member {
            Member::Workload {
                namespace,
                labels,
                by_interface,
            } => {
                inventory += &bed.workload_yaml(name, namespace, labels, *by_interface);
                sources.push(name.to_string());
            }
            Member::Outside(addr) => bed.make_outside(name, addr).unwrap(),
        }
    }
    let ports = |proto: Proto| -> Vec<u16> {
        serve
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|(_, n)| *n)
            .collect()
    };
    for name in &names {
        bed.serve_with_sctp(
            name,
            &ports(Proto::Tcp),
            &ports(Proto::Udp),
            &ports(Proto::Sctp),
        )
        .unwrap();
    }
    let targets: Vec<(String, IpAddr)> = names
        .iter()
        .map(|n| (n.to_string(), bed.node(n).v4))
        .collect();
    bed.write_policy("inventory.yaml", &inventory).unwrap();

    let agent = enforce(&bed, "");
    let got = measure(&bed, &sources, &targets, serve, &|_, _, _, _| true);
    clear(&bed, agent);
    assert!(
        got.values().all(|o| passed(o)),
        "test bed broken without policy: {got:?}"
    );

    let mut failures = Vec::new();
    for (state, policies, expect) in states {
        let want = |f: &str, t: &str, proto, port| f == t || expect(f, t, proto, port);
        let agent = enforce(&bed, policies);
        let got = measure(&bed, &sources, &targets, serve, &want);
        clear(&bed, agent);
        let wrong: Vec<String> = got
            .iter()
            .filter(|((f, t, proto, port), o)| passed(o) != want(f, t, *proto, *port))
            .map(|((f, t, proto, port), o)| {
                format!(
                    "{f} -> {t} {}/{port}: expected {}, measured {o}",
                    proto.word(),
                    verdict(want(f, t, *proto, *port))
                )
            })
            .collect();
        let allowed = got.values().filter(|o| passed(o)).count();
        eprintln!(
            "{state}: {allowed}/{} allowed, {} wrong",
            got.len(),
            wrong.len()
        );
        if !wrong.is_empty() {
            failures.push(format!("{state}:\n  {}", wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn namespace_yaml(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n---\n")
}

/// baseline-default-deny.yaml: team-sandbox (the example's namespace) takes nothing in
/// from workloads and sends nothing out but DNS, except where its NetworkPolicy opens
/// `web` on TCP 8080 (that NetworkPolicy then decides web's ingress alone; web's egress
/// stays under the Baseline).
#[test]
fn example_baseline_default_deny() {
    if !privileged() {
        return;
    }
    let workload = |namespace, labels, by_interface| Member::Workload {
        namespace,
        labels,
        by_interface,
    };
    run_example(
        &[
            ("web", workload("team-sandbox", "{app: web}", false)),
            ("db", workload("team-sandbox", "{app: db}", false)),
            ("dns", workload("kube-system", "{k8s-app: kube-dns}", false)),
            ("other", workload("elsewhere", "{app: other}", true)),
        ],
        &(namespace_yaml("kube-system", "{}") + &namespace_yaml("elsewhere", "{}")),
        &[
            (Proto::Tcp, 53),
            (Proto::Tcp, 80),
            (Proto::Tcp, 8080),
            (Proto::Udp, 53),
        ],
        &[(
            "baseline-default-deny.yaml",
            include_str!("../../policies/cluster/baseline-default-deny.yaml").to_string(),
            |f, t, proto, port| {
                let sandbox = |n| n == "web" || n == "db";
                let egress = !sandbox(f) || (t == "dns" && port == 53);
                let ingress = match t {
                    "web" => proto == Proto::Tcp && port == 8080,
                    "db" => false,
                    _ => true,
                };
                egress && ingress
            },
        )],
    );
}

/// blocked-addresses.yaml: nobody reaches 192.0.2.0/24, even with a NetworkPolicy that
/// allows every egress (Admin tier first); other outside addresses stay reachable.
#[test]
fn example_blocked_addresses() {
    if !privileged() {
        return;
    }
    let open_egress = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all-out, namespace: app}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n---\n";
    let example = include_str!("../../policies/cluster/blocked-addresses.yaml");
    let expect: Expect = |_, t, _, _| t != "blocked";
    run_example(
        &[
            (
                "a",
                Member::Workload {
                    namespace: "app",
                    labels: "{app: a}",
                    by_interface: false,
                },
            ),
            (
                "b",
                Member::Workload {
                    namespace: "app",
                    labels: "{app: b}",
                    by_interface: true,
                },
            ),
            ("blocked", Member::Outside("192.0.2.10")),
            ("open", Member::Outside("203.0.113.10")),
        ],
        &namespace_yaml("app", "{}"),
        &[(Proto::Tcp, 80), (Proto::Udp, 53), (Proto::Sctp, 9003)],
        &[
            ("blocked-addresses.yaml", example.to_string(), expect),
            (
                "blocked-addresses.yaml and a NetworkPolicy allowing every egress",
                format!("{example}\n---\n{open_egress}"),
                expect,
            ),
        ],
    );
}

/// cloud-metadata.yaml: 169.254.169.254 only for namespaces labelled for it, and there
/// only on TCP 80 (the exception at priority 1 is read before the Deny at 2).
#[test]
fn example_cloud_metadata() {
    if !privileged() {
        return;
    }
    run_example(
        &[
            (
                "agent",
                Member::Workload {
                    namespace: "node-agents",
                    labels: "{app: agent}",
                    by_interface: false,
                },
            ),
            (
                "app",
                Member::Workload {
                    namespace: "app",
                    labels: "{app: app}",
                    by_interface: true,
                },
            ),
            ("metadata", Member::Outside("169.254.169.254")),
        ],
        &(namespace_yaml("node-agents", "{stagewall.io/metadata-access: allowed}")
            + &namespace_yaml("app", "{}")),
        &[(Proto::Tcp, 80), (Proto::Tcp, 8080), (Proto::Udp, 53)],
        &[(
            "cloud-metadata.yaml",
            include_str!("../../policies/cluster/cloud-metadata.yaml").to_string(),
            |f, t, proto, port| {
                t != "metadata" || (f == "agent" && proto == Proto::Tcp && port == 80)
            },
        )],
    );
}

/// tenant-isolation.yaml: tenants a and b never reach each other; inside a tenant the
/// Admin tier passes, so a NetworkPolicy there decides (a default deny into tenant-a2
/// closes it to tenant-a1 too); a namespace of no tenant is left alone.
#[test]
fn example_tenant_isolation() {
    if !privileged() {
        return;
    }
    fn tenant(n: &str) -> Option<char> {
        match n {
            "a1" | "a2" => Some('a'),
            "b1" => Some('b'),
            _ => None,
        }
    }
    let example = include_str!("../../policies/cluster/tenant-isolation.yaml");
    let deny_into_a2 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-in, namespace: tenant-a2}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n---\n";
    let workload = |namespace, by_interface| Member::Workload {
        namespace,
        labels: "{app: x}",
        by_interface,
    };
    run_example(
        &[
            ("a1", workload("tenant-a1", false)),
            ("a2", workload("tenant-a2", false)),
            ("b1", workload("tenant-b1", true)),
            ("shared", workload("shared", false)),
        ],
        &(namespace_yaml("tenant-a1", "{tenant: a}")
            + &namespace_yaml("tenant-a2", "{tenant: a}")
            + &namespace_yaml("tenant-b1", "{tenant: b}")
            + &namespace_yaml("shared", "{}")),
        &[(Proto::Tcp, 80), (Proto::Udp, 53)],
        &[
            (
                "tenant-isolation.yaml",
                example.to_string(),
                |f, t, _, _| !matches!((tenant(f), tenant(t)), (Some(x), Some(y)) if x != y),
            ),
            (
                "tenant-isolation.yaml and a default deny into tenant-a2",
                format!("{example}\n---\n{deny_into_a2}"),
                |f, t, _, _| {
                    !matches!((tenant(f), tenant(t)), (Some(x), Some(y)) if x != y) && t != "a2"
                },
            ),
        ],
    );
}

// Events.

/// A denial by a ClusterNetworkPolicy is an event whose reason names the tier
/// (admin-deny, baseline-deny) and whose `rule` names the tier, the policy, the rule and
/// its action (`{tier, policy, name, action}`); the ingress side (the receiver's
/// cgroup_skb program drops the SYN) and the egress side (the sender's sendmsg is
/// refused) alike.
#[test]
fn denials_are_events_naming_the_tier_policy_and_rule() {
    if !privileged() {
        return;
    }
    let bed = conformance_bed();
    bed.write_policy("inventory.yaml", &inventory(&bed))
        .unwrap();
    let world = World {
        cnps: [
            scenarios::admin_ingress_tcp(),
            scenarios::baseline_egress_udp(),
        ]
        .into_iter()
        .flat_map(|w| w.cnps)
        .collect(),
        ..World::default()
    };
    let agent = enforce(&bed, &world.yaml());
    let (g0, s0) = (Pod::code("g0"), Pod::code("s0"));
    // Admin tier, ingress-tcp's "deny-from-slytherin-at-port-80", at harry-potter-0.
    let admin = bed.tcp(&s0.node(), g0.v4().into(), 80);
    assert!(admin.is("timeout"), "{admin:?}");
    // Baseline tier, default's "deny-to-slytherin-at-port-5353", at cedric-diggory-0.
    let baseline = bed.udp("h0", s0.v4().into(), 5353, 1);
    assert!(baseline.is("eperm"), "{baseline:?}");

    let find = |workload: &str, reason: &str, port: u16| {
        agent
            .events()
            .into_iter()
            .find(|e| e["workload"] == workload && e["reason"] == reason && e["dst_port"] == port)
    };
    let wait = |workload: &str, reason: &str, port: u16| {
        stagewall_tests::until(
            &format!("a {reason} event of {workload} to port {port}"),
            || format!("events: {:#?}\n{}", agent.events(), agent.log()),
            || find(workload, reason, port).is_some(),
        );
        find(workload, reason, port).expect("found")
    };
    let slytherin_0 = "network-policy-conformance-slytherin/draco-malfoy-0";
    for (event, (direction, hook), tier, policy, rule) in [
        (
            wait(
                "network-policy-conformance-gryffindor/harry-potter-0",
                "admin-deny",
                80,
            ),
            ("ingress", "cgroup_skb"),
            "Admin",
            "ingress-tcp",
            "deny-from-slytherin-at-port-80",
        ),
        (
            wait(
                "network-policy-conformance-hufflepuff/cedric-diggory-0",
                "baseline-deny",
                5353,
            ),
            ("egress", "sendmsg"),
            "Baseline",
            "default",
            "deny-to-slytherin-at-port-5353",
        ),
    ] {
        assert_eq!(event["verdict"], "dropped", "{event:#}");
        assert_eq!(event["direction"], direction, "{event:#}");
        assert_eq!(event["hook"], hook, "{event:#}");
        assert_eq!(event["peer"], slytherin_0, "{event:#}");
        assert_eq!(
            event["rule"],
            serde_json::json!({"tier": tier, "policy": policy, "name": rule, "action": "Deny"}),
            "{event:#}"
        );
        // A ClusterNetworkPolicy's denial names no NetworkPolicy.
        assert_eq!(event["policies"], serde_json::json!([]), "{event:#}");
    }
}
