//! The upstream tests, one function each, named after them (CNPAdminTierIngressTCP is
//! `cnp_admin_tier_ingress_tcp`); their manifests (`conformance/base/`), their
//! subtests' names, patches and pokes as upstream has them. A poke is (client, server,
//! protocol, port, upstream's expectation), pods written `g0` for harry-potter-0 of
//! gryffindor (see `Pod::code`). Patches accumulate, as upstream's do: a subtest runs on
//! what the subtests before it left.

use super::{
    Action::{self, Accept, Deny, Pass},
    Cnp,
    Dir::{self, Egress, Ingress},
    GRYFFINDOR, HOUSE_LABEL, HOUSES, HUFFLEPUFF, NAME_LABEL, Np, Peer, Pod, Port,
    Proto::{self, Sctp, Tcp, Udp},
    RAVENCLAW, Rule, SLYTHERIN, Select, Tier, World, namespace,
};

/// (client, server, protocol, port, whether upstream expects the connection to pass).
pub type Poke = (&'static str, &'static str, Proto, u16, bool);

pub struct Step {
    pub subtest: &'static str,
    /// The patch the subtest applies before its pokes.
    pub change: Option<fn(&mut World)>,
    pub pokes: &'static [Poke],
}

pub struct Scenario {
    /// The upstream test's ShortName.
    pub upstream: &'static str,
    /// The policies its manifest applies.
    pub manifest: fn() -> World,
    pub steps: Vec<Step>,
}

fn step(subtest: &'static str, pokes: &'static [Poke]) -> Step {
    Step {
        subtest,
        change: None,
        pokes,
    }
}

fn patched(subtest: &'static str, change: fn(&mut World), pokes: &'static [Poke]) -> Step {
    Step {
        subtest,
        change: Some(change),
        pokes,
    }
}

/// Every ported upstream test.
pub fn all() -> Vec<Scenario> {
    vec![
        cnp_admin_tier_ingress_tcp(),
        cnp_admin_tier_ingress_udp(),
        cnp_admin_tier_ingress_sctp(),
        cnp_admin_tier_egress_tcp(),
        cnp_admin_tier_egress_udp(),
        cnp_admin_tier_egress_sctp(),
        cnp_admin_tier_gress(),
        cnp_admin_tier_ingress_named_port(),
        cnp_admin_tier_egress_named_port(),
        cnp_admin_tier_egress_inline_cidr_peers(),
        cnp_admin_tier_priority_field(),
        cnp_admin_tier_integration(),
        cnp_baseline_tier_ingress_tcp(),
        cnp_baseline_tier_ingress_udp(),
        cnp_baseline_tier_ingress_sctp(),
        cnp_baseline_tier_egress_tcp(),
        cnp_baseline_tier_egress_udp(),
        cnp_baseline_tier_egress_sctp(),
        cnp_baseline_tier_gress(),
        cnp_baseline_tier_ingress_named_port(),
        cnp_baseline_tier_egress_named_port(),
        cnp_baseline_tier_egress_inline_cidr_peers(),
    ]
}

// Selectors and rules as the manifests write them.

fn house(h: usize) -> String {
    HOUSES[h].0.to_string()
}

/// `namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-<h>}}`
fn named(h: usize) -> Select {
    Select::Namespaces(vec![(NAME_LABEL, namespace(h))])
}

/// `namespaces: {matchLabels: {conformance-house: <h>}}`
fn of_house(h: usize) -> Select {
    Select::Namespaces(vec![(HOUSE_LABEL, house(h))])
}

/// `pods: {namespaceSelector: {matchLabels: {conformance-house: <h>}}, podSelector:
/// {matchLabels: {conformance-house: <h>}}}`
fn pods_of_house(h: usize) -> Select {
    Select::Pods {
        namespaces: vec![(HOUSE_LABEL, house(h))],
        pods: vec![(HOUSE_LABEL, house(h))],
    }
}

fn rule(name: impl Into<String>, action: Action, peer: Select, protocols: Vec<Port>) -> Rule {
    Rule {
        name: name.into(),
        action,
        peers: vec![Peer::Select(peer)],
        protocols,
    }
}

fn world(cnps: Vec<Cnp>) -> World {
    World {
        cnps,
        ..World::default()
    }
}

/// The rules of the per-protocol manifests (`{admin,baseline}_tier/standard-{ingress,
/// egress}-{tcp,udp,sctp}-rules.yaml`) and the combined ones (`standard-gress-rules-
/// combined.yaml`): everything of house `x` accepted, denied, then (Admin tier) passed;
/// house `y` denied (then passed) at `y_ports`; house `z` accepted at `z_ports`, the rest
/// of `z` denied. The port rules' names are the manifests'.
struct Gress {
    dir: Dir,
    x: usize,
    y: usize,
    y_ports: Vec<Port>,
    y_deny: &'static str,
    y_pass: &'static str,
    z: usize,
    z_ports: Vec<Port>,
    z_accept: &'static str,
}

impl Gress {
    fn rules(self, tier: Tier) -> Vec<Rule> {
        let word = match self.dir {
            Ingress => "from",
            Egress => "to",
        };
        let (x, z) = (house(self.x), house(self.z));
        let mut rules = vec![
            rule(
                format!("allow-{word}-{x}-everything"),
                Accept,
                named(self.x),
                vec![],
            ),
            rule(
                format!("deny-{word}-{x}-everything"),
                Deny,
                named(self.x),
                vec![],
            ),
        ];
        if tier == Tier::Admin {
            rules.push(rule(
                format!("pass-{word}-{x}-everything"),
                Pass,
                named(self.x),
                vec![],
            ));
        }
        rules.push(rule(self.y_deny, Deny, named(self.y), self.y_ports.clone()));
        if tier == Tier::Admin {
            rules.push(rule(self.y_pass, Pass, named(self.y), self.y_ports));
        }
        rules.push(rule(self.z_accept, Accept, named(self.z), self.z_ports));
        rules.push(rule(
            format!("deny-{word}-{z}-everything-else"),
            Deny,
            named(self.z),
            vec![],
        ));
        rules
    }
}

/// A per-protocol manifest: one policy (Admin: `<dir>-<proto>` at `priority`; Baseline:
/// `default` at 10) on the namespace of `subject`, rules in one direction.
#[allow(clippy::too_many_arguments)]
fn per_protocol(
    tier: Tier,
    name: &'static str,
    priority: u32,
    subject: usize,
    dir: Dir,
    x: usize,
    (y, proto, y_port): (usize, Proto, u16),
    (z, z_port): (usize, u16),
) -> World {
    let word = match dir {
        Ingress => "from",
        Egress => "to",
    };
    let name_of = |action: &str, h: usize, port: u16| -> &'static str {
        format!("{action}-{word}-{}-at-port-{port}", house(h)).leak()
    };
    let rules = Gress {
        dir,
        x,
        y,
        y_ports: vec![Port::Number(proto, y_port)],
        y_deny: name_of("deny", y, y_port),
        y_pass: name_of("pass", y, y_port),
        z,
        z_ports: vec![Port::Number(proto, z_port)],
        z_accept: name_of("allow", z, z_port),
    }
    .rules(tier);
    let (ingress, egress) = match dir {
        Ingress => (rules, vec![]),
        Egress => (vec![], rules),
    };
    world(vec![Cnp {
        name,
        tier,
        priority,
        subject: named(subject),
        ingress,
        egress,
    }])
}

pub fn admin_ingress_tcp() -> World {
    per_protocol(
        Tier::Admin,
        "ingress-tcp",
        3,
        GRYFFINDOR,
        Ingress,
        RAVENCLAW,
        (SLYTHERIN, Tcp, 80),
        (HUFFLEPUFF, 80),
    )
}

fn admin_ingress_udp() -> World {
    per_protocol(
        Tier::Admin,
        "ingress-udp",
        4,
        HUFFLEPUFF,
        Ingress,
        RAVENCLAW,
        (SLYTHERIN, Udp, 5353),
        (GRYFFINDOR, 53),
    )
}

fn admin_ingress_sctp() -> World {
    per_protocol(
        Tier::Admin,
        "ingress-sctp",
        5,
        RAVENCLAW,
        Ingress,
        GRYFFINDOR,
        (SLYTHERIN, Sctp, 9003),
        (HUFFLEPUFF, 9003),
    )
}

fn admin_egress_tcp() -> World {
    per_protocol(
        Tier::Admin,
        "egress-tcp",
        6,
        GRYFFINDOR,
        Egress,
        RAVENCLAW,
        (SLYTHERIN, Tcp, 80),
        (HUFFLEPUFF, 8080),
    )
}

fn admin_egress_udp() -> World {
    per_protocol(
        Tier::Admin,
        "egress-udp",
        7,
        HUFFLEPUFF,
        Egress,
        RAVENCLAW,
        (SLYTHERIN, Udp, 5353),
        (GRYFFINDOR, 53),
    )
}

fn admin_egress_sctp() -> World {
    per_protocol(
        Tier::Admin,
        "egress-sctp",
        8,
        RAVENCLAW,
        Egress,
        GRYFFINDOR,
        (SLYTHERIN, Sctp, 9003),
        (HUFFLEPUFF, 9003),
    )
}

fn baseline_ingress_tcp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        GRYFFINDOR,
        Ingress,
        RAVENCLAW,
        (SLYTHERIN, Tcp, 80),
        (HUFFLEPUFF, 80),
    )
}

fn baseline_ingress_udp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        HUFFLEPUFF,
        Ingress,
        RAVENCLAW,
        (SLYTHERIN, Udp, 5353),
        (GRYFFINDOR, 53),
    )
}

fn baseline_ingress_sctp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        RAVENCLAW,
        Ingress,
        GRYFFINDOR,
        (SLYTHERIN, Sctp, 9003),
        (HUFFLEPUFF, 9003),
    )
}

fn baseline_egress_tcp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        GRYFFINDOR,
        Egress,
        RAVENCLAW,
        (SLYTHERIN, Tcp, 80),
        (HUFFLEPUFF, 8080),
    )
}

pub fn baseline_egress_udp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        HUFFLEPUFF,
        Egress,
        RAVENCLAW,
        (SLYTHERIN, Udp, 5353),
        (GRYFFINDOR, 53),
    )
}

fn baseline_egress_sctp() -> World {
    per_protocol(
        Tier::Baseline,
        "default",
        10,
        RAVENCLAW,
        Egress,
        GRYFFINDOR,
        (SLYTHERIN, Sctp, 9003),
        (HUFFLEPUFF, 9003),
    )
}

/// `standard-gress-rules-combined.yaml`: gryffindor's ingress and egress, three
/// protocols per port rule.
fn gress(tier: Tier, name: &'static str, priority: u32, egress_accept: &'static str) -> World {
    let slytherin_ports = vec![
        Port::Number(Tcp, 80),
        Port::Number(Udp, 53),
        Port::Number(Sctp, 9003),
    ];
    let ingress = Gress {
        dir: Ingress,
        x: RAVENCLAW,
        y: SLYTHERIN,
        y_ports: slytherin_ports.clone(),
        y_deny: "deny-from-slytherin-at-port-80-53-9003",
        y_pass: "pass-from-slytherin-at-port-80-53-9003",
        z: HUFFLEPUFF,
        z_ports: vec![
            Port::Number(Tcp, 80),
            Port::Number(Udp, 5353),
            Port::Number(Sctp, 9003),
        ],
        z_accept: "allow-from-hufflepuff-at-port-80-5353-9003",
    }
    .rules(tier);
    let egress = Gress {
        dir: Egress,
        x: RAVENCLAW,
        y: SLYTHERIN,
        y_ports: slytherin_ports,
        y_deny: "deny-to-slytherin-at-ports-80-53-9003",
        y_pass: "pass-to-slytherin-at-port-80-53-9003",
        z: HUFFLEPUFF,
        z_ports: vec![
            Port::Number(Tcp, 8080),
            Port::Number(Udp, 5353),
            Port::Number(Sctp, 9003),
        ],
        z_accept: egress_accept,
    }
    .rules(tier);
    world(vec![Cnp {
        name,
        tier,
        priority,
        subject: named(GRYFFINDOR),
        ingress,
        egress,
    }])
}

fn admin_gress() -> World {
    gress(
        Tier::Admin,
        "gress-rules",
        15,
        "allow-to-hufflepuff-at-ports-8080-5353-9003",
    )
}

fn baseline_gress() -> World {
    gress(
        Tier::Baseline,
        "default",
        10,
        "allow-to-hufflepuff-at-ports-8080-5353",
    )
}

/// `standard-egress-inline-cidr-rules.yaml`: gryffindor's pods may reach slytherin's,
/// nothing else (`networks: [0.0.0.0/0, ::/0]` holds pods' addresses too).
fn inline_cidr(tier: Tier, name: &'static str, priority: u32, subject: Select) -> World {
    world(vec![Cnp {
        name,
        tier,
        priority,
        subject,
        ingress: vec![],
        egress: vec![
            rule(
                "allow-egress-to-slytherin",
                Accept,
                pods_of_house(SLYTHERIN),
                vec![],
            ),
            Rule {
                name: "deny-egress-to-internet".into(),
                action: Deny,
                peers: vec![Peer::Networks(vec!["0.0.0.0/0".into(), "::/0".into()])],
                protocols: vec![],
            },
        ],
    }])
}

fn admin_inline_cidr() -> World {
    inline_cidr(
        Tier::Admin,
        "inline-cidr-as-peers-example",
        85,
        pods_of_house(GRYFFINDOR),
    )
}

fn baseline_inline_cidr() -> World {
    inline_cidr(Tier::Baseline, "default", 10, named(GRYFFINDOR))
}

/// The patches of the inline CIDR tests: slytherin relabelled (its pods no longer match
/// the Accept), its label back, and a rule inserted first that accepts luna-lovegood-0's
/// and cedric-diggory-0's addresses (/32 each).
fn relabel_slytherin(w: &mut World) {
    w.relabeled.insert(
        SLYTHERIN,
        vec![(HOUSE_LABEL, "denied-namespace-label".into())],
    );
}

fn restore_slytherin(w: &mut World) {
    w.relabeled
        .insert(SLYTHERIN, vec![(HOUSE_LABEL, house(SLYTHERIN))]);
}

fn accept_two_pod_addresses(w: &mut World) {
    let cnp = &mut w.cnps[0];
    cnp.egress.insert(
        0,
        Rule {
            name: "allow-egress-to-specific-podIPs".into(),
            action: Accept,
            peers: vec![Peer::Networks(vec![
                format!("{}/32", Pod::code("r0").v4()),
                format!("{}/32", Pod::code("h0").v4()),
            ])],
            protocols: vec![],
        },
    );
}

/// `standard-priority-field.yaml`: a Deny at 50, a Pass at 60 (to become 40), a
/// Baseline Accept, all on gryffindor's pods and slytherin's.
fn priority_field() -> World {
    let both = |name_in: &str, name_out: &str, action| {
        (
            vec![rule(name_in, action, pods_of_house(SLYTHERIN), vec![])],
            vec![rule(name_out, action, pods_of_house(SLYTHERIN), vec![])],
        )
    };
    let cnp = |name, tier, priority, (ingress, egress)| Cnp {
        name,
        tier,
        priority,
        subject: pods_of_house(GRYFFINDOR),
        ingress,
        egress,
    };
    world(vec![
        cnp(
            "priority-50-example",
            Tier::Admin,
            50,
            both(
                "deny-all-ingress-from-slytherin",
                "deny-all-egress-to-slytherin",
                Deny,
            ),
        ),
        cnp(
            "old-priority-60-new-priority-40-example",
            Tier::Admin,
            60,
            both(
                "pass-all-ingress-from-slytherin",
                "pass-all-egress-to-slytherin",
                Pass,
            ),
        ),
        cnp(
            "default",
            Tier::Baseline,
            10,
            both(
                "allow-all-ingress-from-slytherin",
                "allow-all-egress-to-slytherin",
                Accept,
            ),
        ),
    ])
}

/// `api_integration/standard-anp-np-banp.yaml`: an Admin Deny (to become Pass), a
/// NetworkPolicy that opens gryffindor to slytherin, a Baseline Deny.
fn integration() -> World {
    let deny = |name| {
        (
            vec![rule(
                format!("deny-all-ingress-from-{name}"),
                Deny,
                of_house(SLYTHERIN),
                vec![],
            )],
            vec![rule(
                format!("deny-all-egress-to-{name}"),
                Deny,
                of_house(SLYTHERIN),
                vec![],
            )],
        )
    };
    let cnp = |name, tier, (ingress, egress)| Cnp {
        name,
        tier,
        priority: 10,
        subject: of_house(GRYFFINDOR),
        ingress,
        egress,
    };
    World {
        cnps: vec![
            cnp("pass-example", Tier::Admin, deny("slytherin")),
            cnp("default", Tier::Baseline, deny("slytherin")),
        ],
        nps: vec![Np {
            name: "allow-gress-from-to-slytherin-to-gryffindor",
            house: GRYFFINDOR,
            peers: vec![(HOUSE_LABEL, house(SLYTHERIN))],
        }],
        ..World::default()
    }
}

pub fn cnp_admin_tier_egress_named_port() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierEgressNamedPort",
        manifest: admin_egress_tcp,
        steps: vec![patched(
            "Should support an 'allow-egress' policy for named port",
            |w| w.cnp("egress-tcp").egress[5].protocols = vec![Port::Named("web")],
            &[("g0", "h1", Tcp, 80, true), ("g1", "h1", Tcp, 8080, false)],
        )],
    }
}

pub fn cnp_admin_tier_ingress_named_port() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierIngressNamedPort",
        manifest: admin_ingress_udp,
        steps: vec![patched(
            "Should support an 'allow-ingress' policy for named port",
            |w| w.cnp("ingress-udp").ingress[5].protocols = vec![Port::Named("dns")],
            &[("g0", "h1", Udp, 53, true), ("g1", "h1", Udp, 5353, false)],
        )],
    }
}

pub fn cnp_admin_tier_egress_inline_cidr_peers() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierEgressInlineCIDRPeers",
        manifest: admin_inline_cidr,
        steps: vec![
            step(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer",
                &[
                    ("g1", "r0", Tcp, 80, false),
                    ("g1", "r0", Udp, 53, false),
                    ("g1", "r0", Sctp, 9003, false),
                    ("g1", "h0", Tcp, 80, false),
                    ("g1", "h0", Udp, 53, false),
                    ("g1", "h0", Sctp, 9003, false),
                    ("g1", "s0", Tcp, 80, true),
                    ("g1", "s0", Udp, 53, true),
                    ("g1", "s0", Sctp, 9003, true),
                ],
            ),
            patched(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer (slytherin relabelled)",
                relabel_slytherin,
                &[
                    ("g1", "s0", Tcp, 80, false),
                    ("g1", "s0", Udp, 53, false),
                    ("g1", "s0", Sctp, 9003, false),
                ],
            ),
            patched(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer (slytherin's label back)",
                restore_slytherin,
                &[
                    ("g1", "s0", Tcp, 80, true),
                    ("g1", "s0", Udp, 53, true),
                    ("g1", "s0", Sctp, 9003, true),
                ],
            ),
            patched(
                "Should support an 'allow-egress' rule policy for egress-cidr-peer",
                accept_two_pod_addresses,
                &[
                    ("g1", "r0", Tcp, 80, true),
                    ("g1", "r0", Udp, 53, true),
                    ("g1", "r0", Sctp, 9003, true),
                    ("g1", "h0", Tcp, 80, true),
                    ("g1", "h0", Udp, 53, true),
                    ("g1", "h0", Sctp, 9003, true),
                    ("g1", "r1", Tcp, 80, false),
                    ("g1", "r1", Udp, 53, false),
                    ("g1", "r1", Sctp, 9003, false),
                    ("g1", "h1", Tcp, 80, false),
                    ("g1", "h1", Udp, 53, false),
                    ("g1", "h1", Sctp, 9003, false),
                ],
            ),
        ],
    }
}

pub fn cnp_admin_tier_egress_sctp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierEgressSCTP",
        manifest: admin_egress_sctp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected",
                &[
                    ("r0", "g0", Sctp, 9003, true),
                    ("r1", "g0", Sctp, 9005, true),
                ],
            ),
            step(
                "Should support an 'allow-egress' policy for SCTP protocol at the specified port",
                &[
                    ("r0", "h1", Sctp, 9003, true),
                    ("r1", "h1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-sctp").rules_mut(Egress).swap(0, 1),
                &[
                    ("r0", "g1", Sctp, 9003, false),
                    ("r1", "g1", Sctp, 9005, false),
                ],
            ),
            step(
                "Should support a 'deny-egress' policy for SCTP protocol at the specified port",
                &[
                    ("r0", "s0", Sctp, 9003, false),
                    ("r1", "s0", Sctp, 9005, true),
                ],
            ),
            patched(
                "Should support an 'pass-egress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-sctp").rules_mut(Egress).swap(0, 2),
                &[
                    ("r0", "g1", Sctp, 9003, true),
                    ("r1", "g1", Sctp, 9005, true),
                ],
            ),
            patched(
                "Should support a 'pass-egress' policy for SCTP protocol at the specified port",
                |w| w.cnp("egress-sctp").rules_mut(Egress).swap(3, 4),
                &[
                    ("r0", "s0", Sctp, 9003, true),
                    ("r1", "s0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_admin_tier_egress_tcp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierEgressTCP",
        manifest: admin_egress_tcp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected",
                &[("g0", "r0", Tcp, 80, true), ("g1", "r0", Tcp, 8080, true)],
            ),
            step(
                "Should support an 'allow-egress' policy for TCP protocol at the specified port",
                &[("g0", "h1", Tcp, 8080, true), ("g1", "h1", Tcp, 80, false)],
            ),
            patched(
                "Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-tcp").rules_mut(Egress).swap(0, 1),
                &[("g0", "r1", Tcp, 80, false), ("g1", "r1", Tcp, 8080, false)],
            ),
            step(
                "Should support a 'deny-egress' policy for TCP protocol at the specified port",
                &[("g0", "s0", Tcp, 80, false), ("g1", "s0", Tcp, 8080, true)],
            ),
            patched(
                "Should support an 'pass-egress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-tcp").rules_mut(Egress).swap(0, 2),
                &[("g0", "r0", Tcp, 80, true), ("g1", "r0", Tcp, 8080, true)],
            ),
            patched(
                "Should support a 'pass-egress' policy for TCP protocol at the specified port",
                |w| w.cnp("egress-tcp").rules_mut(Egress).swap(3, 4),
                &[("g0", "s0", Tcp, 80, true), ("g1", "s0", Tcp, 8080, true)],
            ),
        ],
    }
}

pub fn cnp_admin_tier_egress_udp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierEgressUDP",
        manifest: admin_egress_udp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected",
                &[("h0", "r0", Udp, 53, true), ("h1", "r0", Udp, 5353, true)],
            ),
            step(
                "Should support an 'allow-egress' policy for UDP protocol at the specified port",
                &[("h0", "g1", Udp, 53, true), ("h1", "g1", Udp, 5353, false)],
            ),
            patched(
                "Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-udp").rules_mut(Egress).swap(0, 1),
                &[("h0", "r1", Udp, 53, false), ("h1", "r1", Udp, 5353, false)],
            ),
            step(
                "Should support a 'deny-egress' policy for UDP protocol at the specified port",
                &[("h0", "s0", Udp, 5353, false), ("h1", "s0", Udp, 53, true)],
            ),
            patched(
                "Should support an 'pass-egress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("egress-udp").rules_mut(Egress).swap(0, 2),
                &[("h0", "r1", Udp, 5353, true), ("h1", "r1", Udp, 53, true)],
            ),
            patched(
                "Should support a 'pass-egress' policy for UDP protocol at the specified port",
                |w| w.cnp("egress-udp").rules_mut(Egress).swap(3, 4),
                &[("h0", "s0", Udp, 5353, true), ("h1", "s0", Udp, 53, true)],
            ),
        ],
    }
}

pub fn cnp_admin_tier_gress() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierGress",
        manifest: admin_gress,
        steps: vec![
            step(
                "Should support an 'allow-gress' policy across different protocols",
                &[
                    ("g0", "r0", Tcp, 80, true),
                    ("g1", "r0", Udp, 53, true),
                    ("g0", "r0", Sctp, 9003, true),
                    ("r0", "g0", Tcp, 80, true),
                    ("r1", "g0", Udp, 53, true),
                    ("r1", "g0", Sctp, 9003, true),
                ],
            ),
            step(
                "Should support an 'allow-gress' policy across different protocols at the specified ports",
                &[
                    ("g0", "h1", Tcp, 8080, true),
                    ("g1", "h1", Tcp, 80, false),
                    ("g0", "h1", Udp, 5353, true),
                    ("g1", "h1", Udp, 53, false),
                    ("g0", "h1", Sctp, 9003, true),
                    ("g1", "h1", Sctp, 9005, false),
                    ("h0", "g1", Tcp, 80, true),
                    ("h1", "g1", Tcp, 8080, false),
                    ("h0", "g1", Udp, 5353, true),
                    ("h1", "g1", Udp, 53, false),
                    ("h0", "g1", Sctp, 9003, true),
                    ("h1", "g1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-gress' policy across different protocols",
                |w| {
                    w.cnp("gress-rules").rules_mut(Egress).swap(0, 1);
                    w.cnp("gress-rules").rules_mut(Ingress).swap(0, 1);
                },
                &[
                    ("g0", "r1", Tcp, 80, false),
                    ("g1", "r1", Udp, 53, false),
                    ("g0", "r1", Sctp, 9003, false),
                    ("r0", "g1", Tcp, 80, false),
                    ("r1", "g1", Udp, 53, false),
                    ("r1", "g1", Sctp, 9003, false),
                ],
            ),
            step(
                "Should support a 'deny-gress' policy across different protocols at the specified ports",
                &[
                    ("g0", "s0", Tcp, 80, false),
                    ("g1", "s0", Tcp, 8080, true),
                    ("g0", "s0", Udp, 53, false),
                    ("g1", "s0", Udp, 5353, true),
                    ("g0", "s0", Sctp, 9003, false),
                    ("g1", "s0", Sctp, 9005, true),
                    ("s0", "g0", Tcp, 80, false),
                    ("s1", "g0", Tcp, 8080, true),
                    ("s0", "g0", Udp, 53, false),
                    ("s1", "g0", Udp, 5353, true),
                    ("s0", "g0", Sctp, 9003, false),
                    ("s1", "g0", Sctp, 9005, true),
                ],
            ),
            patched(
                "Should support an 'pass-gress' policy across different protocols",
                |w| {
                    w.cnp("gress-rules").rules_mut(Egress).swap(0, 2);
                    w.cnp("gress-rules").rules_mut(Ingress).swap(0, 2);
                },
                &[
                    ("g0", "r0", Tcp, 80, true),
                    ("g0", "r0", Udp, 5353, true),
                    ("g0", "r0", Sctp, 9003, true),
                    ("r0", "g0", Tcp, 80, true),
                    ("r1", "g0", Udp, 53, true),
                    ("r1", "g0", Sctp, 9003, true),
                ],
            ),
            patched(
                "Should support a 'pass-gress' policy across different protocols at the specified ports",
                |w| {
                    w.cnp("gress-rules").rules_mut(Egress).swap(3, 4);
                    w.cnp("gress-rules").rules_mut(Ingress).swap(3, 4);
                },
                &[
                    ("g0", "s0", Tcp, 80, true),
                    ("g1", "s0", Tcp, 8080, true),
                    ("g0", "s0", Udp, 53, true),
                    ("g1", "s0", Udp, 5353, true),
                    ("g0", "s0", Sctp, 9003, true),
                    ("g1", "s0", Sctp, 9005, true),
                    ("s0", "g0", Tcp, 80, true),
                    ("s1", "g0", Tcp, 8080, true),
                    ("s0", "g0", Udp, 53, true),
                    ("s1", "g0", Udp, 5353, true),
                    ("s0", "g0", Sctp, 9003, true),
                    ("s1", "g0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_admin_tier_ingress_sctp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierIngressSCTP",
        manifest: admin_ingress_sctp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected",
                &[
                    ("g0", "r0", Sctp, 9003, true),
                    ("g1", "r0", Sctp, 9005, true),
                ],
            ),
            step(
                "Should support an 'allow-ingress' policy for SCTP protocol at the specified port",
                &[
                    ("h0", "r1", Sctp, 9003, true),
                    ("h1", "r1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-sctp").rules_mut(Ingress).swap(0, 1),
                &[
                    ("g0", "r1", Sctp, 9003, false),
                    ("g1", "r1", Sctp, 9005, false),
                ],
            ),
            step(
                "Should support a 'deny-ingress' policy for SCTP protocol at the specified port",
                &[
                    ("s0", "r0", Sctp, 9003, false),
                    ("s1", "r0", Sctp, 9005, true),
                ],
            ),
            patched(
                "Should support an 'pass-ingress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-sctp").rules_mut(Ingress).swap(0, 2),
                &[
                    ("g0", "r1", Sctp, 9003, true),
                    ("g1", "r1", Sctp, 9005, true),
                ],
            ),
            patched(
                "Should support a 'pass-ingress' policy for SCTP protocol at the specified port",
                |w| w.cnp("ingress-sctp").rules_mut(Ingress).swap(3, 4),
                &[
                    ("s0", "r0", Sctp, 9003, true),
                    ("s1", "r0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_admin_tier_ingress_tcp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierIngressTCP",
        manifest: admin_ingress_tcp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected",
                &[("r0", "g0", Tcp, 80, true), ("r1", "g0", Tcp, 8080, true)],
            ),
            step(
                "Should support an 'allow-ingress' policy for TCP protocol at the specified port",
                &[("h0", "g1", Tcp, 80, true), ("h1", "g1", Tcp, 8080, false)],
            ),
            patched(
                "Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-tcp").rules_mut(Ingress).swap(0, 1),
                &[("r0", "g1", Tcp, 80, false), ("r1", "g1", Tcp, 8080, false)],
            ),
            step(
                "Should support a 'deny-ingress' policy for TCP protocol at the specified port",
                &[("s0", "g0", Tcp, 80, false), ("s1", "g0", Tcp, 8080, true)],
            ),
            patched(
                "Should support an 'pass-ingress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-tcp").rules_mut(Ingress).swap(0, 2),
                &[("r0", "g0", Tcp, 80, true), ("r1", "g0", Tcp, 8080, true)],
            ),
            patched(
                "Should support a 'pass-ingress' policy for TCP protocol at the specified port",
                |w| w.cnp("ingress-tcp").rules_mut(Ingress).swap(3, 4),
                &[("s0", "g0", Tcp, 80, true), ("s1", "g0", Tcp, 8080, true)],
            ),
        ],
    }
}

pub fn cnp_admin_tier_ingress_udp() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierIngressUDP",
        manifest: admin_ingress_udp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected",
                &[("r0", "h0", Udp, 53, true), ("r1", "h0", Udp, 5353, true)],
            ),
            step(
                "Should support an 'allow-ingress' policy for UDP protocol at the specified port",
                &[("g0", "h1", Udp, 53, true), ("g1", "h1", Udp, 5353, false)],
            ),
            patched(
                "Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-udp").rules_mut(Ingress).swap(0, 1),
                &[("r0", "h1", Udp, 53, false), ("r1", "h1", Udp, 5353, false)],
            ),
            step(
                "Should support a 'deny-ingress' policy for UDP protocol at the specified port",
                &[("s0", "h0", Udp, 5353, false), ("s1", "h0", Udp, 53, true)],
            ),
            patched(
                "Should support an 'pass-ingress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("ingress-udp").rules_mut(Ingress).swap(0, 2),
                &[("r0", "h1", Udp, 5353, true), ("r1", "h1", Udp, 53, true)],
            ),
            patched(
                "Should support a 'pass-ingress' policy for UDP protocol at the specified port",
                |w| w.cnp("ingress-udp").rules_mut(Ingress).swap(3, 4),
                &[("s0", "h0", Udp, 5353, true), ("s1", "h0", Udp, 53, true)],
            ),
        ],
    }
}

pub fn cnp_admin_tier_integration() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierIntegration",
        manifest: integration,
        steps: vec![
            step(
                "Should Deny traffic from slytherin to gryffindor respecting admin CNP",
                &[("s0", "g0", Tcp, 80, false), ("s1", "g0", Tcp, 8080, false)],
            ),
            step(
                "Should Deny traffic to slytherin from gryffindor respecting admin CNP",
                &[("g0", "s0", Tcp, 80, false), ("g1", "s0", Tcp, 8080, false)],
            ),
            patched(
                "Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy",
                |w| w.cnp("pass-example").ingress[0].action = Pass,
                &[("s0", "g0", Tcp, 80, true), ("s1", "g0", Tcp, 8080, true)],
            ),
            patched(
                "Should support a 'pass-egress' policy for admin CNP and respect the match for network policy",
                |w| w.cnp("pass-example").egress[0].action = Pass,
                &[("g0", "s0", Tcp, 80, true), ("g1", "s0", Tcp, 8080, true)],
            ),
            patched(
                "Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster network policy",
                |w| w.nps.clear(),
                &[("s0", "g0", Tcp, 80, false), ("s1", "g0", Tcp, 8080, false)],
            ),
            step(
                "Should support a 'pass-egress' policy for admin CNP and respect the match for baseline cluster network policy",
                &[("g0", "s0", Tcp, 80, false), ("g1", "s0", Tcp, 8080, false)],
            ),
        ],
    }
}

pub fn cnp_admin_tier_priority_field() -> Scenario {
    Scenario {
        upstream: "CNPAdminTierPriorityField",
        manifest: priority_field,
        steps: vec![
            step(
                "Should Deny traffic from slytherin to gryffindor respecting admin CNP",
                &[("s0", "g0", Tcp, 80, false), ("s1", "g0", Tcp, 8080, false)],
            ),
            step(
                "Should Deny traffic to slytherin from gryffindor respecting admin CNP",
                &[("g0", "s0", Tcp, 80, false), ("g1", "s0", Tcp, 8080, false)],
            ),
            patched(
                "Should respect admin CNP priority field; thus passing both ingress and egress traffic over to baseline CNP",
                |w| w.cnp("old-priority-60-new-priority-40-example").priority = 40,
                &[
                    ("s0", "g0", Tcp, 80, true),
                    ("s1", "g0", Tcp, 8080, true),
                    ("g0", "s0", Tcp, 80, true),
                    ("g1", "s0", Tcp, 8080, true),
                ],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_egress_named_port() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierEgressNamedPort",
        manifest: baseline_egress_udp,
        steps: vec![patched(
            "Should support an 'allow-egress' policy for named port",
            |w| w.cnp("default").egress[3].protocols = vec![Port::Named("dns")],
            &[("h0", "g1", Udp, 53, true), ("h1", "g1", Udp, 5353, false)],
        )],
    }
}

pub fn cnp_baseline_tier_ingress_named_port() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierIngressNamedPort",
        manifest: baseline_ingress_tcp,
        steps: vec![patched(
            "Should support an 'allow-ingress' policy for named port",
            |w| w.cnp("default").ingress[3].protocols = vec![Port::Named("web")],
            &[("h0", "g1", Tcp, 80, true), ("h1", "g1", Tcp, 8080, false)],
        )],
    }
}

pub fn cnp_baseline_tier_egress_inline_cidr_peers() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierEgressInlineCIDRPeers",
        manifest: baseline_inline_cidr,
        steps: vec![
            step(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer",
                &[
                    ("g1", "r0", Tcp, 80, false),
                    ("g1", "r0", Udp, 53, false),
                    ("g1", "r0", Sctp, 9003, false),
                    ("g1", "h0", Tcp, 80, false),
                    ("g1", "h0", Udp, 53, false),
                    ("g1", "h0", Sctp, 9003, false),
                    ("g1", "s0", Tcp, 80, true),
                    ("g1", "s0", Udp, 53, true),
                    ("g1", "s0", Sctp, 9003, true),
                ],
            ),
            patched(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer (slytherin relabelled)",
                relabel_slytherin,
                &[
                    ("g1", "s0", Tcp, 80, false),
                    ("g1", "s0", Udp, 53, false),
                    ("g1", "s0", Sctp, 9003, false),
                ],
            ),
            patched(
                "Should support a 'deny-egress' rule policy for egress-cidr-peer (slytherin's label back)",
                restore_slytherin,
                &[
                    ("g1", "s0", Tcp, 80, true),
                    ("g1", "s0", Udp, 53, true),
                    ("g1", "s0", Sctp, 9003, true),
                ],
            ),
            patched(
                "Should support an 'allow-egress' rule policy for egress-cidr-peer",
                accept_two_pod_addresses,
                &[
                    ("g1", "r0", Tcp, 80, true),
                    ("g1", "r0", Udp, 53, true),
                    ("g1", "r0", Sctp, 9003, true),
                    ("g1", "h0", Tcp, 80, true),
                    ("g1", "h0", Udp, 53, true),
                    ("g1", "h0", Sctp, 9003, true),
                    ("g1", "r1", Tcp, 80, false),
                    ("g1", "r1", Udp, 53, false),
                    ("g1", "r1", Sctp, 9003, false),
                    ("g1", "h1", Tcp, 80, false),
                    ("g1", "h1", Udp, 53, false),
                    ("g1", "h1", Sctp, 9003, false),
                ],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_egress_sctp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierEgressSCTP",
        manifest: baseline_egress_sctp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected",
                &[
                    ("r0", "g0", Sctp, 9003, true),
                    ("r1", "g0", Sctp, 9005, true),
                ],
            ),
            step(
                "Should support an 'allow-egress' policy for SCTP protocol at the specified port",
                &[
                    ("r0", "h1", Sctp, 9003, true),
                    ("r1", "h1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Egress).swap(0, 1),
                &[
                    ("r0", "g1", Sctp, 9003, false),
                    ("r1", "g1", Sctp, 9005, false),
                ],
            ),
            step(
                "Should support a 'deny-egress' policy for SCTP protocol at the specified port",
                &[
                    ("r0", "s0", Sctp, 9003, false),
                    ("r1", "s0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_egress_tcp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierEgressTCP",
        manifest: baseline_egress_tcp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected",
                &[("g0", "r0", Tcp, 80, true), ("g1", "r0", Tcp, 8080, true)],
            ),
            step(
                "Should support an 'allow-egress' policy for TCP protocol at the specified port",
                &[("g0", "h1", Tcp, 8080, true), ("g1", "h1", Tcp, 80, false)],
            ),
            patched(
                "Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Egress).swap(0, 1),
                &[("g0", "r1", Tcp, 80, false), ("g1", "r1", Tcp, 8080, false)],
            ),
            step(
                "Should support a 'deny-egress' policy for TCP protocol at the specified port",
                &[("g0", "s0", Tcp, 80, false), ("g1", "s0", Tcp, 8080, true)],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_egress_udp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierEgressUDP",
        manifest: baseline_egress_udp,
        steps: vec![
            step(
                "Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected",
                &[("h0", "r0", Udp, 53, true), ("h1", "r0", Udp, 5353, true)],
            ),
            step(
                "Should support an 'allow-egress' policy for UDP protocol at the specified port",
                &[("h0", "g1", Udp, 53, true), ("h1", "g1", Udp, 5353, false)],
            ),
            patched(
                "Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Egress).swap(0, 1),
                &[("h0", "r1", Udp, 53, false), ("h1", "r1", Udp, 5353, false)],
            ),
            step(
                "Should support a 'deny-egress' policy for UDP protocol at the specified port",
                &[("h0", "s0", Udp, 5353, false), ("h1", "s0", Udp, 53, true)],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_gress() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierGress",
        manifest: baseline_gress,
        steps: vec![
            step(
                "Should support an 'allow-gress' policy across different protocols",
                &[
                    ("g0", "r0", Tcp, 80, true),
                    ("g1", "r0", Udp, 53, true),
                    ("g0", "r0", Sctp, 9003, true),
                    ("r0", "g0", Tcp, 80, true),
                    ("r1", "g0", Udp, 53, true),
                    ("r1", "g0", Sctp, 9003, true),
                ],
            ),
            step(
                "Should support an 'allow-gress' policy across different protocols at the specified ports",
                &[
                    ("g0", "h1", Tcp, 8080, true),
                    ("g1", "h1", Tcp, 80, false),
                    ("g0", "h1", Udp, 5353, true),
                    ("g1", "h1", Udp, 53, false),
                    ("g0", "h1", Sctp, 9003, true),
                    ("g1", "h1", Sctp, 9005, false),
                    ("h0", "g1", Tcp, 80, true),
                    ("h1", "g1", Tcp, 8080, false),
                    ("h0", "g1", Udp, 5353, true),
                    ("h1", "g1", Udp, 53, false),
                    ("h0", "g1", Sctp, 9003, true),
                    ("h1", "g1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-gress' policy across different protocols",
                |w| {
                    w.cnp("default").rules_mut(Egress).swap(0, 1);
                    w.cnp("default").rules_mut(Ingress).swap(0, 1);
                },
                &[
                    ("g0", "r1", Tcp, 80, false),
                    ("g1", "r1", Udp, 53, false),
                    ("g0", "r1", Sctp, 9003, false),
                    ("r0", "g1", Tcp, 80, false),
                    ("r1", "g1", Udp, 53, false),
                    ("r1", "g1", Sctp, 9003, false),
                ],
            ),
            step(
                "Should support a 'deny-gress' policy across different protocols at the specified ports",
                &[
                    ("g0", "s0", Tcp, 80, false),
                    ("g1", "s0", Tcp, 8080, true),
                    ("g0", "s0", Udp, 53, false),
                    ("g1", "s0", Udp, 5353, true),
                    ("g0", "s0", Sctp, 9003, false),
                    ("g1", "s0", Sctp, 9005, true),
                    ("s0", "g0", Tcp, 80, false),
                    ("s1", "g0", Tcp, 8080, true),
                    ("s0", "g0", Udp, 53, false),
                    ("s1", "g0", Udp, 5353, true),
                    ("s0", "g0", Sctp, 9003, false),
                    ("s1", "g0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_ingress_sctp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierIngressSCTP",
        manifest: baseline_ingress_sctp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected",
                &[
                    ("g0", "r0", Sctp, 9003, true),
                    ("g1", "r0", Sctp, 9005, true),
                ],
            ),
            step(
                "Should support an 'allow-ingress' policy for SCTP protocol at the specified port",
                &[
                    ("h0", "r1", Sctp, 9003, true),
                    ("h1", "r1", Sctp, 9005, false),
                ],
            ),
            patched(
                "Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Ingress).swap(0, 1),
                &[
                    ("g0", "r1", Sctp, 9003, false),
                    ("g1", "r1", Sctp, 9005, false),
                ],
            ),
            step(
                "Should support a 'deny-ingress' policy for SCTP protocol at the specified port",
                &[
                    ("s0", "r0", Sctp, 9003, false),
                    ("s1", "r0", Sctp, 9005, true),
                ],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_ingress_tcp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierIngressTCP",
        manifest: baseline_ingress_tcp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected",
                &[("r0", "g0", Tcp, 80, true), ("r1", "g0", Tcp, 8080, true)],
            ),
            step(
                "Should support an 'allow-ingress' policy for TCP protocol at the specified port",
                &[("h0", "g1", Tcp, 80, true), ("h1", "g1", Tcp, 8080, false)],
            ),
            patched(
                "Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Ingress).swap(0, 1),
                &[("r0", "g1", Tcp, 80, false), ("r1", "g1", Tcp, 8080, false)],
            ),
            step(
                "Should support a 'deny-ingress' policy for TCP protocol at the specified port",
                &[("s0", "g0", Tcp, 80, false), ("s1", "g0", Tcp, 8080, true)],
            ),
        ],
    }
}

pub fn cnp_baseline_tier_ingress_udp() -> Scenario {
    Scenario {
        upstream: "CNPBaselineTierIngressUDP",
        manifest: baseline_ingress_udp,
        steps: vec![
            step(
                "Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected",
                &[("r0", "h0", Udp, 53, true), ("r1", "h0", Udp, 5353, true)],
            ),
            step(
                "Should support an 'allow-ingress' policy for UDP protocol at the specified port",
                &[("g0", "h1", Udp, 53, true), ("g1", "h1", Udp, 5353, false)],
            ),
            patched(
                "Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected",
                |w| w.cnp("default").rules_mut(Ingress).swap(0, 1),
                &[("r0", "h1", Udp, 53, false), ("r1", "h1", Udp, 5353, false)],
            ),
            step(
                "Should support a 'deny-ingress' policy for UDP protocol at the specified port",
                &[("s0", "h0", Udp, 5353, false), ("s1", "h0", Udp, 53, true)],
            ),
        ],
    }
}
