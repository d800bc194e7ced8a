//! Kubernetes mode on a real node: kubelet, containerd, runc and the CNI bridge plugin
//! (tests/src/node.rs) beside the real control plane (tests/src/cluster.rs), all in the test
//! bed's hub namespace. Pods are real pods from locally written images, their probes are
//! kubelet's own, and the agent finds them in the cgroups kubelet made.

use std::{net::IpAddr, time::Duration};

use stagewall_tests::{
    Testbed,
    cluster::Cluster,
    metric_sum,
    node::{KubeletNode, NodeNetwork},
    privileged, raw, until, until_within,
};

/// Creates a real pod of the probe image in `namespace`, serving TCP on `port` with a
/// tcpSocket readiness probe, and waits until kubelet reports it Ready; gives its UID and
/// address.
fn run_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    labels: &str,
    port: u16,
) -> (String, IpAddr) {
    run_pod_on(cluster, None, namespace, name, labels, port)
}

/// As [`run_pod`], on the node `node` when given (else where the scheduler puts it).
fn run_pod_on(
    cluster: &Cluster,
    node: Option<&str>,
    namespace: &str,
    name: &str,
    labels: &str,
    port: u16,
) -> (String, IpAddr) {
    let node_name = node.map_or(String::new(), |n| format!("  nodeName: {n}\n"));
    run_manifest_pod(
        cluster,
        namespace,
        name,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec:\n{node_name}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: probe:1\n    imagePullPolicy: Never\n    args: [serve, --tcp, \"{port}\"]\n    ports: [{{containerPort: {port}}}]\n    readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}\n"
        ),
    )
}

/// Creates the pod `manifest` describes, waits until it is Ready and returns its UID and
/// address.
fn run_manifest_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    manifest: &str,
) -> (String, IpAddr) {
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], manifest)
        .unwrap_or_else(|e| panic!("creating pod {name}: {e:#}"));
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            "--namespace",
            namespace,
            &format!("pod/{name}"),
        ])
        .unwrap_or_else(|e| {
            let described = cluster
                .kubectl(&["describe", "pod", name, "--namespace", namespace])
                .unwrap_or_default();
            panic!("pod {name} not Ready: {e:#}\n{described}")
        });
    let get = |path: &str| {
        cluster
            .kubectl(&[
                "get",
                "pod",
                name,
                "--namespace",
                namespace,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ])
            .expect("kubectl get pod")
    };
    (
        get(".metadata.uid"),
        get(".status.podIP").parse().expect("a pod IP"),
    )
}

/// The server's ingress from app=client on TCP 80, in namespace ml.
const SERVER_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-80, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 80}]\n";

/// A test bed with the real control plane and deploy/kubernetes installed: the bed, its
/// cgroup, the cluster and the agent's kubeconfig (a token of the shipped ServiceAccount).
fn control_plane() -> (Testbed, String, Cluster, std::path::PathBuf) {
    let bed = Testbed::new(&[]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    (bed, base, cluster, agent_kubeconfig)
}

fn node_log(cluster: &Cluster, node: &KubeletNode) -> String {
    format!(
        "{}\n{}\n{}",
        node.log("kubelet"),
        node.log("containerd"),
        cluster.log("kube-apiserver")
    )
}

#[test]
fn real_pods_on_a_real_kubelet_are_enforced() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let (bed, base, mut cluster, agent_kubeconfig) = control_plane();
    let node = cluster
        .start_kubelet(&bed, "node-a")
        .expect("starting kubelet and containerd");
    cluster.create_namespace("ml").expect("namespace ml");

    // Real pods, Ready by kubelet's own tcpSocket probes.
    let (server, server_ip) = run_pod(&cluster, "ml", "server", "{app: server}", 80);
    let (client, client_ip) = run_pod(&cluster, "ml", "client", "{app: client}", 80);
    let (other, other_ip) = run_pod(&cluster, "ml", "other", "{app: other}", 80);
    assert!(
        node.pod_cgroup(&server)
            .is_some_and(|c| c.to_string_lossy().contains("/kubepods/besteffort/pod")),
        "kubelet's cgroupfs layout below the bed's cgroup"
    );
    assert!(
        node.tcp(&client, server_ip, 80).is("ok"),
        "{}",
        node_log(&cluster, &node)
    );
    assert!(node.tcp(&other, server_ip, 80).is("ok"));

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent");
    let log = || format!("{}\n{}", agent.log(), node_log(&cluster, &node));
    until("the three pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 3.0
    });
    // Until then a pod (fail mode closed) was denied everything, kubelet's probes too,
    // for the moment between its programs' attach and its policy: not what is tested
    // below.
    let programmed_at = agent.events().len();

    cluster
        .kubectl_stdin(&["apply", "-f", "-"], SERVER_80)
        .expect("the policy");
    until("app=other cut off from the server", log, || {
        node.tcp(&other, server_ip, 80).is("timeout")
    });
    assert!(node.tcp(&client, server_ip, 80).is("ok"), "{}", log());

    // kubelet's readiness probe comes from the node's address, which the policy does not
    // name: Kubernetes lets a pod's node into an ingress-isolated pod, so the server
    // stays Ready. Three failed probes a second apart would make it NotReady: watched for
    // five.
    let ready = || {
        cluster
            .kubectl(&[
                "get",
                "pod",
                "server",
                "--namespace",
                "ml",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .unwrap_or_default()
    };
    let watched = std::time::Instant::now();
    while watched.elapsed() < std::time::Duration::from_secs(5) {
        assert_eq!(ready(), "True", "kubelet's probes denied: {}", log());
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let from_node = agent
        .events()
        .into_iter()
        .skip(programmed_at)
        .find(|e| e["verdict"] == "dropped" && e["src"] == stagewall_tests::HUB_GATEWAY);
    assert!(from_node.is_none(), "{from_node:?}\n{}", log());

    // This node bridges its pods: no route names a pod's veth. The agent finds it through
    // the pod's network namespace, and TC there is the backstop of the pod's cgroup
    // enforcement: what app=other sends through an AF_PACKET socket (which no cgroup hook
    // sees) once its egress is denied does not reach the client. Before that, it does.
    let line = af_packet_frames_delivered(
        (&node, &other, other_ip),
        (&node, &client, client_ip),
        pod_mac(&node, &client),
        4342,
    );
    assert_eq!(
        line,
        "counts 3",
        "AF_PACKET frames before any policy\n{}",
        log()
    );
    let links = stagewall_tests::pinned_links(&bed.bpffs);
    // Pins are named if-<index>-<program>: two programs on each interface.
    let veths: std::collections::BTreeSet<String> = std::fs::read_dir(&links)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some(name.strip_prefix("if-")?.split('-').next()?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        veths.len(),
        3,
        "TC on the three pods' veths (found through their namespaces), in {}\n{}",
        links.display(),
        log()
    );
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other-no-egress, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: other}}\n  policyTypes: [Egress]\n",
        )
        .expect("the policy");
    until("app=other's egress denied at connect", log, || {
        node.tcp(&other, client_ip, 80).is("eperm")
    });
    let line = af_packet_frames_delivered(
        (&node, &other, other_ip),
        (&node, &client, client_ip),
        pod_mac(&node, &client),
        4343,
    );
    assert_eq!(
        line,
        "counts 0",
        "AF_PACKET frames from an egress-denied bridged pod arrived\n{}",
        log()
    );

    // A pod kubelet deletes is forgotten.
    cluster
        .kubectl(&["delete", "pod", "other", "--namespace", "ml", "--wait=true"])
        .expect("deleting a pod");
    until("the deleted pod forgotten", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
    });
}

/// deploy/kubernetes/daemonset.yaml as shipped, but for where this test's node keeps
/// things; each change says why. Nothing else (capabilities, probes, mounts, the service
/// account) is touched.
fn daemonset_for_the_test_node(bed: &Testbed, base: &str) -> String {
    let shipped =
        std::fs::read_to_string(stagewall_tests::cluster::manifests().join("daemonset.yaml"))
            .expect("daemonset.yaml");
    let replaced = [
        // kubelet's cgroupfs driver below the test bed's cgroup, not the systemd driver at
        // the top of the tree; and the pods are found there.
        (
            "--guard-cgroup=/kubepods.slice",
            format!("--guard-cgroup={base}/kubepods\n            - --pods-cgroup-base={base}"),
        ),
        // The test bed's own directory of bpffs and its own state directory, so that
        // nothing outlives the test.
        (
            "hostPath: {path: /sys/fs/bpf, type: Directory}",
            format!(
                "hostPath: {{path: {}, type: Directory}}",
                bed.bpffs.display()
            ),
        ),
        (
            "hostPath: {path: /var/lib/stagewall, type: DirectoryOrCreate}",
            format!(
                "hostPath: {{path: {}, type: DirectoryOrCreate}}",
                bed.dir.join("state").display()
            ),
        ),
    ];
    let mut manifest = shipped.clone();
    for (from, to) in replaced {
        assert!(
            manifest.contains(from),
            "daemonset.yaml no longer has {from:?}"
        );
        manifest = manifest.replace(from, &to);
    }
    manifest
}

#[test]
fn the_shipped_daemonset_runs_as_a_real_pod_and_enforces() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let (bed, base, mut cluster, _) = control_plane();
    let mut node = cluster
        .start_kubelet(&bed, "node-a")
        .expect("starting kubelet and containerd");
    // The agent reaches the API server through the `kubernetes` Service, as in any
    // cluster: kube-proxy on the node.
    cluster
        .start_kube_proxy(&bed, "node-a")
        .expect("starting kube-proxy");
    // The agent's image: the binary the tests built and its shared libraries, run as the
    // Dockerfile's ENTRYPOINT does (no image builder here; see tests/src/node.rs); or,
    // given STAGEWALL_AGENT_IMAGE, the multi-arch archive of `cargo xtask image` (the
    // release build, static), whose amd64 image this node unpacks.
    match std::env::var_os("STAGEWALL_AGENT_IMAGE") {
        Some(archive) => node.import_archive(std::path::Path::new(&archive)),
        None => node.import_image(
            concat!("docker.io/library/stagewall:", env!("CARGO_PKG_VERSION")),
            "/usr/local/bin/stagewall",
            &stagewall_tests::agent_bin(),
        ),
    }
    .expect("the agent's image");
    std::fs::create_dir_all(&bed.bpffs).expect("the bed's bpffs directory");
    node.share(&bed.bpffs).expect("a shared bpffs mount");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &daemonset_for_the_test_node(&bed, &base),
        )
        .expect("applying the DaemonSet");
    let agent_pod = || {
        cluster
            .kubectl(&[
                "get",
                "pods",
                "--namespace",
                "stagewall-system",
                "-o",
                "jsonpath={.items[0].metadata.name} {.items[0].status.phase} {.items[0].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .unwrap_or_default()
    };
    let described = || {
        format!(
            "{}\n{}\n{}",
            cluster
                .kubectl(&["describe", "pods", "--namespace", "stagewall-system"])
                .unwrap_or_default(),
            cluster
                .kubectl(&[
                    "logs",
                    "daemonset/stagewall",
                    "--namespace",
                    "stagewall-system",
                    "--tail=40"
                ])
                .unwrap_or_else(|e| format!("{e:#}")),
            node_log(&cluster, &node)
        )
    };
    // Ready once the programs are loaded (the verifier takes seconds on 2 CPUs) and the
    // first policy is in force, at kubelet's next probe (every 5 s): as the test harness
    // waits for an agent it starts itself, a minute.
    until_within(
        "the agent's pod Ready (kubelet's readiness probe on /readyz)",
        Duration::from_secs(60),
        described,
        || agent_pod().ends_with(" Running True"),
    );

    cluster.create_namespace("ml").expect("namespace ml");
    let (_server, server_ip) = run_pod(&cluster, "ml", "server", "{app: server}", 80);
    let (client, _) = run_pod(&cluster, "ml", "client", "{app: client}", 80);
    let (other, _) = run_pod(&cluster, "ml", "other", "{app: other}", 80);
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], SERVER_80)
        .expect("the policy");
    until(
        "app=other cut off from the server by the DaemonSet's agent",
        described,
        || node.tcp(&other, server_ip, 80).is("timeout"),
    );
    assert!(node.tcp(&client, server_ip, 80).is("ok"), "{}", described());
    // Still Ready: its probes and its API connection are not cut by its own guard.
    assert!(agent_pod().ends_with(" Running True"), "{}", described());

    // A host-network pod (kube-proxy, node-local DNS, a GPU operator's daemons) is the
    // node: below the guard like every pod, never denied by it.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: node-daemon, namespace: ml}\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: probe:1\n    imagePullPolicy: Never\n    args: [serve, --tcp, \"9100\"]\n    readinessProbe: {tcpSocket: {port: 9100}, periodSeconds: 1}\n",
        )
        .expect("a host-network pod");
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            "--namespace",
            "ml",
            "pod/node-daemon",
        ])
        .unwrap_or_else(|e| panic!("the host-network pod not Ready: {e:#}\n{}", described()));
    let daemon = cluster
        .kubectl(&[
            "get",
            "pod",
            "node-daemon",
            "--namespace",
            "ml",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect("its uid");
    // The node's address: the API server (TLS) and the agent's own HTTP endpoint.
    let node_ip: IpAddr = stagewall_tests::HUB_GATEWAY.parse().expect("an address");
    let agent_healthz = format!("{node_ip}:9742");
    let last = std::sync::Mutex::new(None);
    until(
        "the host-network pod reaches the agent's endpoint on the node",
        || format!("last: {:?}\n{}", last.lock().unwrap(), described()),
        || {
            let outcome = node.probe(&daemon, &["get", &agent_healthz, "/healthz", "1000"]);
            let ok = outcome.is("ok");
            *last.lock().unwrap() = Some(outcome);
            ok
        },
    );
    assert!(
        node.tcp(&daemon, server_ip, 80).is("ok"),
        "the node reaches its pods whatever their ingress policy says"
    );
    // While a cgroup below the guard that is no pod of this node is denied everything.
    let stray = node
        .pod_cgroup(&_server)
        .expect("the server's cgroup")
        .parent()
        .expect("its QoS class")
        .join("pod00000000-0000-0000-0000-000000000000");
    std::fs::create_dir_all(&stray).expect("a stray cgroup");
    let out = bed
        .hub_command_in(&stray, stagewall_tests::probe_bin())
        .expect("a process in it")
        .args(["get", &agent_healthz, "/healthz", "1000"])
        .output()
        .expect("running the probe");
    let said = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir(&stray);
    assert!(said.starts_with("eperm"), "unprogrammed: {said}");
}

#[test]
fn two_nodes_each_with_its_agent_enforce_cross_node_traffic_at_both_ends() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let (bed, base, mut cluster, agent_kubeconfig) = control_plane();
    // node-a bridges its pods (cgroup enforcement), node-b routes them (a host route per
    // pod: TC enforcement on the pod's veth).
    let node_a = cluster
        .start_kubelet(&bed, "node-a")
        .expect("starting node-a");
    let node_b = cluster
        .start_kubelet_on(&bed, "node-b", NodeNetwork::Routed { n: 2 })
        .expect("starting node-b");
    cluster.create_namespace("ml").expect("namespace ml");
    let (client, _) = run_pod_on(
        &cluster,
        Some("node-a"),
        "ml",
        "client",
        "{app: client}",
        80,
    );
    let (other, _) = run_pod_on(&cluster, Some("node-a"), "ml", "other", "{app: other}", 80);
    let (_, server_ip) = run_pod_on(
        &cluster,
        Some("node-b"),
        "ml",
        "server",
        "{app: server}",
        80,
    );
    assert!(
        server_ip.to_string().starts_with("198.19.2."),
        "node-b's range: {server_ip}"
    );
    assert!(node_a.tcp(&client, server_ip, 80).is("ok"), "across nodes");

    let guard_a = format!("{base}/kubepods");
    let agent_a = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &[
                "--node-name",
                "node-a",
                "--pods-cgroup-base",
                &base,
                "--guard-cgroup",
                &guard_a,
            ],
        )
        .expect("node-a's agent");
    let base_b = format!("{base}/node-b");
    let guard_b = format!("{base_b}/kubepods");
    let agent_b = bed
        .start_agent_kubernetes_in(
            &node_b.netns,
            "node-b",
            &agent_kubeconfig,
            &[
                "--node-name",
                "node-b",
                "--pods-cgroup-base",
                &base_b,
                "--guard-cgroup",
                &guard_b,
                "--pod-attachment",
                "tc",
            ],
        )
        .expect("node-b's agent");
    let log = || {
        format!(
            "--- node-a's agent\n{}\n--- node-b's agent\n{}\n{}\n{}",
            agent_a.log(),
            agent_b.log(),
            node_log(&cluster, &node_a),
            node_b.log("kubelet")
        )
    };
    until("each agent enforces its node's pods", log, || {
        metric_sum(&agent_a.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
            && metric_sum(&agent_b.metrics(), "stagewall_workloads_enforced", &[]) == 1.0
    });

    // The server's ingress is node-b's to enforce, the client's egress node-a's.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &(SERVER_80.to_string()
                + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-out, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{protocol: TCP, port: 80}]\n"),

        )
        .expect("the policies");
    until("app=other dropped by node-b on the way in", log, || {
        node_a.tcp(&other, server_ip, 80).is("timeout")
    });
    assert!(node_a.tcp(&client, server_ip, 80).is("ok"), "{}", log());
    assert!(
        node_a.tcp(&client, server_ip, 81).is("eperm"),
        "refused by node-a at connect: {}",
        log()
    );
    let dropped_at_b = agent_b.events().into_iter().any(|e| {
        e["verdict"] == "dropped" && e["workload"] == "ml/server" && e["direction"] == "ingress"
    });
    assert!(dropped_at_b, "node-b reports its drop: {}", log());
    // node-b enforces its routed pod on its veth: two TC links, and the guard's cgroup
    // links only.
    let links: Vec<String> =
        std::fs::read_dir(stagewall_tests::pinned_links(&bed.bpffs.join("node-b")))
            .expect("node-b's pins")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(
        links.iter().filter(|l| l.starts_with("if-")).count(),
        2,
        "{links:?}"
    );
}

/// The nat rules istio-init installs in a meshed pod for inbound traffic (its
/// ISTIO_INBOUND and ISTIO_IN_REDIRECT chains: every TCP connection but the proxy's own
/// ports goes to the proxy's inbound port 15006), as iptables-restore input. The
/// outbound half (ISTIO_OUTPUT to 15001) is left out: nothing here calls out of the pod.
const ISTIO_INBOUND_RULES: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
";

/// A meshed pod (an `istio-proxy` sidecar, istio-init's redirect of every inbound
/// connection to the proxy's port 15006 inside the pod) keeps its policy for the
/// application's port: the agent, enforcing pods by their cgroups, enforces this one by
/// TC on its host-side veth, which sees the port the client called before the redirect.
/// By its cgroup, the socket sees 15006 and the rule for 8500 never matches.
#[test]
fn a_meshed_pods_ingress_rule_holds_for_the_applications_port() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let (bed, base, mut cluster, agent_kubeconfig) = control_plane();
    let node_a = cluster
        .start_kubelet(&bed, "node-a")
        .expect("starting node-a");
    let node_b = cluster
        .start_kubelet_on(&bed, "node-b", NodeNetwork::Routed { n: 2 })
        .expect("starting node-b");
    cluster.create_namespace("ml").expect("namespace ml");
    let (client, client_ip) = run_pod_on(
        &cluster,
        Some("node-a"),
        "ml",
        "client",
        "{app: client}",
        80,
    );
    let (other, _) = run_pod_on(&cluster, Some("node-a"), "ml", "other", "{app: other}", 80);
    // The application listens on 8500, the sidecar (the probe standing in for Envoy: an
    // echo server on the proxy's inbound port) on 15006.
    let (server, server_ip) = run_manifest_pod(
        &cluster,
        "ml",
        "server",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: ml, labels: {app: server}}\nspec:\n  nodeName: node-b\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: probe:1\n    imagePullPolicy: Never\n    args: [serve, --tcp, \"8500\"]\n    ports: [{containerPort: 8500}]\n    readinessProbe: {tcpSocket: {port: 8500}, periodSeconds: 1}\n  - name: istio-proxy\n    image: probe:1\n    imagePullPolicy: Never\n    args: [serve, --tcp, \"15006\"]\n",
    );
    let mut restore = node_b
        .pod_command(&server, "iptables-restore")
        .expect("a command in the server pod's network namespace");
    restore
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = restore.spawn().expect("iptables-restore");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("piped"),
        ISTIO_INBOUND_RULES.as_bytes(),
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "istio-init's rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        node_a.tcp(&client, server_ip, 8500).is("ok"),
        "through the redirect to the sidecar"
    );

    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-8500, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 8500}]\n",
        )
        .expect("the policy");
    // node-b's agent enforces pods by their cgroups (the default), with the guard.
    let base_b = format!("{base}/node-b");
    let guard_b = format!("{base_b}/kubepods");
    let agent_b = bed
        .start_agent_kubernetes_in(
            &node_b.netns,
            "node-b",
            &agent_kubeconfig,
            &[
                "--node-name",
                "node-b",
                "--pods-cgroup-base",
                &base_b,
                "--guard-cgroup",
                &guard_b,
            ],
        )
        .expect("node-b's agent");
    let log = || {
        format!(
            "{}\n{}\n{}",
            agent_b.log(),
            node_log(&cluster, &node_a),
            node_b.log("kubelet")
        )
    };
    until("the meshed pod enforced", log, || {
        metric_sum(&agent_b.metrics(), "stagewall_workloads_enforced", &[]) == 1.0
    });
    until("app=other dropped on the way in", log, || {
        node_a.tcp(&other, server_ip, 8500).is("timeout")
    });
    let client_call = node_a.tcp(&client, server_ip, 8500);
    assert!(
        client_call.is("ok"),
        "app=client to the application's port: {client_call:?}\n{}",
        log()
    );
    // Decided on the port the client called, by TC on the pod's veth.
    let events = agent_b.events();
    assert!(
        events.iter().any(|e| e["verdict"] == "dropped"
            && e["workload"] == "ml/server"
            && e["direction"] == "ingress"
            && e["dst_port"] == 8500
            && e["hook"] == "tc"),
        "{events:#?}"
    );
    let links: Vec<String> =
        std::fs::read_dir(stagewall_tests::pinned_links(&bed.bpffs.join("node-b")))
            .expect("node-b's pins")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(
        links.iter().filter(|l| l.starts_with("if-")).count(),
        2,
        "{links:?}"
    );
    // A pod enforced by its cgroup on this routed node gets TC on its veth as the
    // backstop: what it sends through an AF_PACKET socket (which no cgroup hook sees) is
    // decided there too. Its egress is denied; a hand-made UDP frame from it to the
    // client pod must not arrive.
    let (raw_pod, raw_ip) = run_pod_on(&cluster, Some("node-b"), "ml", "raw", "{app: raw}", 80);
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: raw-no-egress, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: raw}}\n  policyTypes: [Egress]\n",
        )
        .expect("the policy");
    until("the raw pod enforced", log, || {
        metric_sum(&agent_b.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
    });
    until("the raw pod's egress denied at connect", log, || {
        node_b.tcp(&raw_pod, client_ip, 80).is("eperm")
    });
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            &node_b.netns,
            "-o",
            "route",
            "get",
            &raw_ip.to_string(),
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    let veth = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no device in {route:?}"))
        .to_string();
    let gateway_mac = mac_of(
        std::process::Command::new("ip")
            .args(["-n", &node_b.netns, "-br", "link", "show", "dev", &veth])
            .output()
            .unwrap(),
    );
    let line = af_packet_frames_delivered(
        (&node_b, &raw_pod, raw_ip),
        (&node_a, &client, client_ip),
        gateway_mac,
        4242,
    );
    assert_eq!(
        line,
        "counts 0",
        "AF_PACKET frames from an egress-denied pod arrived\n{}",
        log()
    );
}

/// A MAC address in what `ip -br link` printed.
fn mac_of(out: std::process::Output) -> raw::Mac {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(raw::parse_mac)
        .unwrap_or_else(|| panic!("no MAC address in {out:?}"))
}

/// The MAC address of pod `uid`'s eth0.
fn pod_mac(node: &KubeletNode, uid: &str) -> raw::Mac {
    mac_of(
        node.pod_command(uid, "ip")
            .unwrap()
            .args(["-br", "link", "show", "dev", "eth0"])
            .output()
            .unwrap(),
    )
}

/// Sends three hand-made UDP frames (to port 80, IP identification `marker`) from pod
/// `from` through an AF_PACKET socket on its eth0, with `next_hop` as the destination MAC
/// (the peer pod's on a bridge, the gateway's where routed), and counts those that reach
/// pod `to`'s eth0: gives the counter's `counts N` line.
fn af_packet_frames_delivered(
    (from_node, from, from_ip): (&KubeletNode, &str, IpAddr),
    (to_node, to, to_ip): (&KubeletNode, &str, IpAddr),
    next_hop: raw::Mac,
    marker: u16,
) -> String {
    let from_mac = pod_mac(from_node, from);
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (from_ip, to_ip) else {
        panic!("IPv4 pod addresses expected");
    };
    let packet = raw::ipv4(
        src,
        dst,
        raw::PROTO_UDP,
        marker,
        &[],
        0,
        &raw::udp(40000, 80, b"x"),
    );
    let frame = raw::hex(&raw::ethernet(next_hop, from_mac, &packet));
    let mut counter = to_node
        .pod_command(to, stagewall_tests::probe_bin())
        .unwrap();
    counter
        .args(["raw-count", "eth0", "2500", &marker.to_string()])
        .stdout(std::process::Stdio::piped());
    let mut counter = counter.spawn().unwrap();
    let mut out = std::io::BufReader::new(counter.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let sent = from_node
        .pod_command(from, stagewall_tests::probe_bin())
        .unwrap()
        .args(["raw-send", "eth0", &frame, &frame, &frame])
        .output()
        .unwrap();
    // Where the kernel runs BPF LSM, the packet-socket guard refuses an isolated pod the
    // socket itself (EPERM); nothing is sent then either.
    let said = String::from_utf8_lossy(&sent.stdout);
    assert!(
        said.starts_with("ok") || said.starts_with("eperm"),
        "raw-send: {sent:?}"
    );
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = counter.wait();
    line.trim().to_string()
}
