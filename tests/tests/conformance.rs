//! NetworkPolicy conformance: the model of the upstream Kubernetes network policy tests —
//! namespaces x, y, z with pods a, b, c, each serving TCP and UDP on ports 80 and 81 — and,
//! per case, the full reachability matrix (every pod to every pod, both protocols, both
//! ports) measured with real traffic and compared with the matrix the case expects.
//!
//! Pods of x and y are cgroups (cgroup_skb and connect/sendmsg hooks), pods of z are
//! interfaces (TC), so both data paths answer to the same semantics. A pod's traffic to
//! itself is always allowed (upstream leaves loopback undefined; stagewall defines it).

use std::{collections::BTreeMap, net::IpAddr};

use stagewall_tests::{
    Agent, Layout, Testbed,
    cluster::{Cluster, PodSpec},
    privileged,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOCOLS: [&str; 2] = ["tcp", "udp"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pod {
    ns: &'static str,
    pod: &'static str,
}

impl Pod {
    fn is(&self, name: &str) -> bool {
        format!("{}/{}", self.ns, self.pod) == name
    }
    fn node(&self) -> String {
        format!("{}-{}", self.ns, self.pod)
    }
}

fn pods() -> Vec<Pod> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| Pod { ns, pod }))
        .collect()
}

/// What a case expects for (from, to, protocol, port); traffic to itself aside.
type Expect = fn(Pod, Pod, &str, u16) -> bool;

struct Case {
    name: &'static str,
    policies: String,
    expect: Expect,
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n{spec}---\n"
    )
}

fn cases() -> Vec<Case> {
    let deny_ingress_x = np(
        "x",
        "deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    );
    vec![
        Case {
            name: "default deny ingress in x",
            policies: deny_ingress_x.clone(),
            expect: |_, t, _, _| t.ns != "x",
        },
        Case {
            name: "default deny egress in x",
            policies: np(
                "x",
                "deny-egress",
                "  podSelector: {}\n  policyTypes: [Egress]\n",
            ),
            expect: |f, _, _, _| f.ns != "x",
        },
        Case {
            name: "default deny both ways in x",
            policies: np(
                "x",
                "deny-all",
                "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
            ),
            expect: |f, t, _, _| f.ns != "x" && t.ns != "x",
        },
        Case {
            name: "allow all ingress to x/a on top of a default deny (ingress: [{}])",
            policies: deny_ingress_x.clone()
                + &np(
                    "x",
                    "allow-a",
                    "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n",
                ),
            expect: |_, t, _, _| t.ns != "x" || t.pod == "a",
        },
        Case {
            name: "x/a from pods b of its namespace",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.is("x/b"),
        },
        Case {
            name: "x/a from namespace y",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.ns == "y",
        },
        Case {
            name: "x/a from namespace y AND pod b (one peer)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.is("y/b"),
        },
        Case {
            name: "x/a from namespace y OR pod b (two peers)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.ns == "y" || f.is("x/b"),
        },
        Case {
            name: "x/a from namespaces NotIn [y] (matchExpressions)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [\"y\"]}]}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.ns != "y",
        },
        Case {
            name: "x/a from pods In [b, c] of every namespace, by the name label",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: Exists}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.pod != "a",
        },
        Case {
            name: "x/a from pods without a pod label (DoesNotExist: none)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}}]}]\n",
            ),
            expect: |_, t, _, _| !t.is("x/a"),
        },
        Case {
            name: "x/a from every pod of every namespace on c ({} namespaceSelector)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || f.pod == "c",
        },
        Case {
            name: "x/a on TCP 80 only (protocol defaults to TCP)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}]}]\n",
            ),
            expect: |_, t, proto, port| !t.is("x/a") || (proto == "tcp" && port == 80),
        },
        Case {
            name: "x/a on UDP 81 only",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: 81}]}]\n",
            ),
            expect: |_, t, proto, port| !t.is("x/a") || (proto == "udp" && port == 81),
        },
        Case {
            name: "x/a on TCP 80-81 (endPort)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80, endPort: 81}]}]\n",
            ),
            expect: |_, t, proto, _| !t.is("x/a") || proto == "tcp",
        },
        Case {
            name: "x/a on every TCP port (protocol without port)",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: TCP}]}]\n",
            ),
            expect: |_, t, proto, _| !t.is("x/a") || proto == "tcp",
        },
        Case {
            name: "x/a on the named port serve-81-udp",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: serve-81-udp}]}]\n",
            ),
            expect: |_, t, proto, port| !t.is("x/a") || (proto == "udp" && port == 81),
        },
        Case {
            name: "egress of x to the named port serve-80-tcp of any pod",
            policies: np(
                "x",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}]\n",
            ),
            expect: |f, _, proto, port| f.ns != "x" || (proto == "tcp" && port == 80),
        },
        Case {
            name: "egress of y to namespace z on the named port serve-81-tcp",
            policies: np(
                "y",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: serve-81-tcp}]}]\n",
            ),
            expect: |f, t, proto, port| {
                f.ns != "y" || (t.ns == "z" && proto == "tcp" && port == 81)
            },
        },
        Case {
            name: "x/a from an ipBlock except y/b",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.21/32]}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") || !f.is("y/b"),
        },
        Case {
            name: "egress of x/a to z's block only",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 198.18.0.24/30}}]}]\n",
            ),
            expect: |f, t, _, _| !f.is("x/a") || t.ns == "z",
        },
        Case {
            name: "two policies on x/a: their union",
            policies: np(
                "x",
                "p1",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
            ) + &np(
                "x",
                "p2",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: UDP}]}]\n",
            ),
            expect: |f, t, proto, _| !t.is("x/a") || f.is("x/b") || (f.ns == "z" && proto == "udp"),
        },
        Case {
            name: "policyTypes inferred: an egress section isolates egress, ingress isolated too",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
            ),
            expect: |f, t, _, _| !t.is("x/a") && (!f.is("x/a") || t.is("x/b")),
        },
        Case {
            name: "both ends must allow: x/a may send only to y/b, y/b accepts only z",
            policies: np(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]}]\n",
            ) + &np(
                "y",
                "p",
                "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n",
            ),
            expect: |f, t, _, _| (!f.is("x/a") || t.is("y/b")) && (!t.is("y/b") || f.ns == "z"),
        },
        Case {
            name: "z (tc) isolated both ways except within z",
            policies: np(
                "z",
                "p",
                "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {}}]}]\n  egress: [{to: [{podSelector: {}}]}]\n",
            ),
            expect: |f, t, _, _| (f.ns == "z") == (t.ns == "z"),
        },
    ]
}

/// Node numbers: x/a..c = .16-.18, y = .20-.22, z = .24-.26, so each namespace is a /30.
fn address_number(p: Pod) -> u8 {
    let ns = NAMESPACES.iter().position(|n| *n == p.ns).unwrap() as u8;
    let pod = PODS.iter().position(|n| *n == p.pod).unwrap() as u8;
    16 + ns * 4 + pod
}

fn inventory(bed: &Testbed) -> String {
    let mut out = String::new();
    for ns in NAMESPACES {
        out += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
        );
    }
    for p in pods() {
        let node = bed.node(&p.node());
        let attachment = if p.ns == "z" {
            format!("interface: {}", node.host_if)
        } else {
            format!("cgroup: {}", node.cgroup_path)
        };
        out += &format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: {}, labels: {{pod: {}}}}}\nspec:\n  {attachment}\n  addresses: [\"{}\"]\n  ports:\n    - {{name: serve-80-tcp, port: 80}}\n    - {{name: serve-81-tcp, port: 81}}\n    - {{name: serve-80-udp, port: 80, protocol: UDP}}\n    - {{name: serve-81-udp, port: 81, protocol: UDP}}\n---\n",
            p.pod, p.ns, p.pod, node.v4
        );
    }
    out
}

type Matrix = BTreeMap<(Pod, Pod, &'static str, u16), bool>;

/// Probes every pod from every pod, both protocols and ports, all at once.
fn measure(bed: &Testbed) -> Matrix {
    let all = pods();
    let mut matrix = Matrix::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .iter()
            .map(|&from| {
                let all = &all;
                scope.spawn(move || {
                    let mut targets = Vec::new();
                    let mut keys = BTreeMap::new();
                    for &to in all {
                        let addr: IpAddr = bed.node(&to.node()).v4;
                        for proto in PROTOCOLS {
                            for port in PORTS {
                                let target = format!("{proto}/{addr}/{port}");
                                keys.insert(target.clone(), (from, to, proto, port));
                                targets.push(target);
                            }
                        }
                    }
                    let mut args = vec!["matrix".to_string(), "400".to_string()];
                    args.extend(targets);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = bed.probe_output(&from.node(), &args);
                    out.lines()
                        .map(|line| {
                            let mut parts = line.split_whitespace();
                            let target = parts.next().unwrap_or_default().to_string();
                            let outcome = parts.next().unwrap_or_default().to_string();
                            let key = keys[&target];
                            let allowed = match outcome.as_str() {
                                "ok" => true,
                                "eperm" | "timeout" => false,
                                other => {
                                    panic!("{target} from {from:?}: unexpected outcome {other}")
                                }
                            };
                            (key, allowed)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            matrix.extend(h.join().expect("probe thread"));
        }
    });
    assert_eq!(matrix.len(), 9 * 9 * 4, "every probe answered");
    matrix
}

fn expected(expect: Expect) -> Matrix {
    let mut m = Matrix::new();
    for from in pods() {
        for to in pods() {
            for proto in PROTOCOLS {
                for port in PORTS {
                    m.insert(
                        (from, to, proto, port),
                        from == to || expect(from, to, proto, port),
                    );
                }
            }
        }
    }
    m
}

/// The test bed of the model: one node per pod.
fn conformance_bed() -> Testbed {
    let mut layout = Layout::for_test(
        &pods()
            .iter()
            .map(|p| p.node())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    for (spec, p) in layout.nodes.iter_mut().zip(pods()) {
        spec.n = address_number(p);
    }
    Testbed::with_layout(layout).expect("creating the test bed")
}

/// Every pod serves both ports and protocols (in the cgroup its node has now: a server
/// started before a node's cgroup moved stays in the old one).
fn serve_all(bed: &mut Testbed) {
    for p in pods() {
        bed.serve(&p.node(), &PORTS, &PORTS).unwrap();
    }
}

/// Runs every case: `enforce` puts the case's policies in force and gives the agent that
/// enforces them, `clear` takes them away after the matrix was measured. Fails listing
/// every probe whose verdict differs from the case's expectation.
fn run_cases(bed: &Testbed, mut enforce: impl FnMut(&Case) -> Agent, mut clear: impl FnMut(&Case)) {
    let cases = cases();
    let mut failures = Vec::new();
    let mut probes = 0;
    for case in &cases {
        let mut agent = enforce(case);
        let got = measure(bed);
        agent
            .stop()
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Each case starts from nothing: the pinned flow table would otherwise carry the
        // last case's UDP exchanges, and a probe that happens to reuse a source port is
        // then, rightly, the reply of an established flow, not a new one.
        bed.uninstall()
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        clear(case);
        probes += got.len();
        let want = expected(case.expect);
        let wrong: Vec<String> = want
            .iter()
            .filter(|(k, v)| got[k] != **v)
            .map(|((f, t, proto, port), v)| {
                format!(
                    "{}/{} -> {}/{} {proto}/{port}: expected {}",
                    f.ns,
                    f.pod,
                    t.ns,
                    t.pod,
                    if *v { "allowed" } else { "denied" }
                )
            })
            .collect();
        let allowed = got.values().filter(|v| **v).count();
        eprintln!(
            "{:<80} {allowed:>3}/{} allowed, {} wrong",
            case.name,
            got.len(),
            wrong.len()
        );
        if !wrong.is_empty() {
            failures.push(format!("{}:\n  {}", case.name, wrong.join("\n  ")));
        }
    }
    eprintln!("{} cases, {probes} probes", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn networkpolicy_conformance_matrix() {
    if !privileged() {
        return;
    }
    let mut bed = conformance_bed();
    serve_all(&mut bed);
    let inventory = inventory(&bed);

    // Without policy, everything is reachable: the test bed itself works.
    bed.write_policy("inventory.yaml", &inventory).unwrap();
    let baseline = measure(&bed);
    assert!(
        baseline.values().all(|&v| v),
        "test bed broken without the agent"
    );

    run_cases(
        &bed,
        |case| {
            bed.write_policy("case.yaml", &case.policies).unwrap();
            bed.start_agent(&[])
                .unwrap_or_else(|e| panic!("{}: {e}", case.name))
        },
        |_| {},
    );
}

/// The same matrix in Kubernetes mode on a real API server: namespaces and Pod objects
/// (named ports in their containers' ports), policies applied with kubectl, the agent
/// with the shipped RBAC's token. Every pod is this node's and enforced by its cgroup
/// (the file-mode run above covers TC).
#[test]
fn networkpolicy_conformance_matrix_on_a_real_api_server() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = conformance_bed();
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    for ns in NAMESPACES {
        cluster.create_namespace(ns).expect("namespace");
        cluster
            .kubectl(&["label", "namespace", ns, &format!("ns={ns}")])
            .expect("namespace label");
    }
    let ports = "[{name: serve-80-tcp, containerPort: 80}, {name: serve-81-tcp, containerPort: 81}, {name: serve-80-udp, containerPort: 80, protocol: UDP}, {name: serve-81-udp, containerPort: 81, protocol: UDP}]";
    for p in pods() {
        let node = p.node();
        let labels = format!("{{pod: {}}}", p.pod);
        let pod = PodSpec {
            bed_node: &node,
            namespace: p.ns,
            name: p.pod,
            node: "node-a",
            labels: &labels,
            ports,
        };
        cluster
            .run_pod(&mut bed, "node-a", &base, &pod)
            .unwrap_or_else(|e| panic!("running {node}: {e:#}"));
    }
    serve_all(&mut bed);
    let baseline = measure(&bed);
    assert!(
        baseline.values().all(|&v| v),
        "test bed broken without the agent"
    );

    let agent_args = ["--node-name", "node-a", "--pods-cgroup-base", &base];
    run_cases(
        &bed,
        |case| {
            cluster
                .kubectl_stdin(&["apply", "-f", "-"], &case.policies)
                .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
            bed.start_agent_kubernetes(&kubeconfig, &agent_args)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name))
        },
        |case| {
            for ns in NAMESPACES {
                cluster
                    .kubectl(&["delete", "networkpolicy", "--all", "--namespace", ns])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
            }
        },
    );
}
