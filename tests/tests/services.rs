//! Services seen from an egress-isolated pod, on the real control plane and the real
//! kube-proxy (nftables, in the hub namespace: the node's network): Kubernetes judges a
//! call to a Service by the pod it reaches, so a pod allowed to reach `app: server` pods
//! and `k8s-app: kube-dns` pods reaches them through their Services' ClusterIPs, TCP and
//! UDP, and a real resolver (dig) gets its answer from a real DNS server (dnsmasq) through
//! the DNS Service. The agent translates the call at the socket (connect, sendmsg) to one
//! of the Service's ready pods, decides on that pod, and shows the Service's address
//! again to recvmsg and getpeername.

use std::{net::IpAddr, time::Duration};

use stagewall_tests::{Testbed, cluster::Cluster, metric_sum, privileged, until, until_within};

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: ml}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: TCP, port: 8080}, {protocol: UDP, port: 8080}]
  - to: [{podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
";

/// server: both protocols to app=server; backend: TCP to app=server and app=other (the
/// policy allows one of its two pods); other: app=other only; dns: the DNS server.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: server, namespace: ml}
spec:
  selector: {app: server}
  ports:
  - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
  - {name: udp, protocol: UDP, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: server-v6, namespace: ml}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  selector: {app: server}
  ports:
  - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
  - {name: udp, protocol: UDP, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: ml}
spec:
  selector: {tier: backend}
  ports:
  - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: ml}
spec:
  selector: {app: other}
  ports:
  - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: ml}
spec:
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: 53}
  - {name: dns-tcp, protocol: TCP, port: 53, targetPort: 53}
";

/// The name dnsmasq answers, and its address.
const RECORD: (&str, &str) = ("model-registry.ml.svc.cluster.local", "10.96.77.77");

#[test]
fn an_egress_isolated_pod_reaches_services_by_the_pods_its_policy_allows() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed =
        Testbed::new(&["client", "server", "other", "dns"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let mut cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    cluster
        .start_kube_proxy(&bed, "node-a")
        .expect("starting kube-proxy");
    cluster.create_namespace("ml").expect("namespace");
    for (name, labels) in [
        ("client", "{app: client}"),
        ("server", "{app: server, tier: backend}"),
        ("other", "{app: other, tier: backend}"),
        ("dns", "{k8s-app: kube-dns}"),
    ] {
        cluster.run_bed_pod(&mut bed, &base, name, "node-a", labels);
        cluster
            .report_dual_stack(&bed, name, "ml", name)
            .expect("the pod's IPv6 address");
    }
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], POLICY)
        .expect("the policy");
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], SERVICES)
        .expect("the Services");
    let vip = |name: &str| -> IpAddr {
        cluster
            .kubectl(&[
                "get",
                "service",
                name,
                "-n",
                "ml",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .expect("the ClusterIP")
            .parse()
            .expect("an address")
    };
    let (server_vip, backend_vip, other_vip, dns_vip) =
        (vip("server"), vip("backend"), vip("other"), vip("dns"));
    let server_vip6 = vip("server-v6");
    assert!(server_vip6.is_ipv6(), "{server_vip6}");
    bed.serve("server", &[8080], &[8080]).unwrap();
    bed.serve("other", &[8080], &[8080]).unwrap();
    let server = bed.node("server").v4;
    let other = bed.node("other").v4;
    let dns = bed.node("dns").v4;
    let record = format!("--host-record={},{}", RECORD.0, RECORD.1);
    let listen = format!("--listen-address={dns}");
    bed.spawn(
        "dns",
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--port=53",
            "--user=root",
            "--pid-file=",
            &record,
        ],
    )
    .expect("starting dnsmasq (Debian's dnsmasq-base)");

    let endpoints = |service: &str| {
        let mut found: Vec<String> = cluster
            .kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "ml",
                "-l",
                &format!("kubernetes.io/service-name={service}"),
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        found.sort();
        found
    };
    let mut both = vec![server.to_string(), other.to_string()];
    both.sort();
    until_within(
        "the Services' EndpointSlices",
        Duration::from_secs(60),
        || cluster.log("kube-controller-manager"),
        || {
            endpoints("server") == [server.to_string()]
                && endpoints("server-v6") == [bed.node("server").v6.to_string()]
                && endpoints("backend") == both
                && endpoints("other") == [other.to_string()]
                && endpoints("dns") == [dns.to_string()]
        },
    );

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent with the ServiceAccount's token");
    let log = || format!("{}\n{}", agent.log(), cluster.log("kube-proxy"));
    until("the pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 4.0
    });
    // The policy is in force: straight to the pods, app=server is allowed, app=other not.
    assert!(bed.tcp("client", server, 8080).is("ok"), "{}", log());
    assert!(bed.tcp("client", other, 8080).is("eperm"), "{}", log());

    // Through the Services: the agent has their backends once it has seen the
    // EndpointSlices (the `kubernetes` Service's one entry besides these nine).
    until("the Services' backends in the kernel", log, || {
        metric_sum(
            &agent.metrics(),
            "stagewall_map_entries",
            &[("map", "services")],
        ) >= 10.0
    });
    let tcp = bed.tcp("client", server_vip, 80);
    assert!(
        tcp.is("ok"),
        "TCP to the server's ClusterIP: {tcp:?}\n{}",
        log()
    );
    assert_eq!(
        tcp.body.trim(),
        format!("peer {server_vip}:80"),
        "getpeername says the address the client called"
    );
    let udp = bed.udp("client", server_vip, 80, 3);
    assert!(
        udp.is("ok"),
        "UDP to the server's ClusterIP: {udp:?}\n{}",
        log()
    );
    assert_eq!(
        udp.body.trim(),
        format!("from {server_vip}:80"),
        "recvmsg says the echo came from the address the client called"
    );

    // IPv6: the same through an IPv6-only Service, to the server's IPv6 address.
    let tcp6 = bed.tcp("client", server_vip6, 80);
    assert!(
        tcp6.is("ok"),
        "TCP to [{server_vip6}]:80: {tcp6:?}\n{}",
        log()
    );
    assert_eq!(tcp6.body.trim(), format!("peer [{server_vip6}]:80"));
    let udp6 = bed.udp("client", server_vip6, 80, 3);
    assert!(
        udp6.is("ok"),
        "UDP to [{server_vip6}]:80: {udp6:?}\n{}",
        log()
    );
    assert_eq!(udp6.body.trim(), format!("from [{server_vip6}]:80"));

    // DNS through its Service, with a real resolver and a real server, over UDP and TCP.
    for transport in ["+notcp", "+tcp"] {
        let mut dig = bed.command("client", "dig").expect("dig (bind9-dnsutils)");
        dig.args([
            &format!("@{dns_vip}"),
            RECORD.0,
            "A",
            "+short",
            "+time=2",
            "+tries=1",
            transport,
        ]);
        let out = dig.output().expect("running dig");
        let answer = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            answer.trim(),
            RECORD.1,
            "dig {transport} through the DNS Service {dns_vip}: {answer}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    }

    // A Service whose only pod the policy does not allow: refused at connect, and the
    // event names the Service and the pod the call would have reached.
    let before = agent.events().len();
    assert!(bed.tcp("client", other_vip, 80).is("eperm"), "{}", log());

    // A Service with one allowed pod of two: each call draws a pod, so some are refused;
    // every refusal names the Service and the pod that was drawn, never the allowed one.
    let outcomes: Vec<String> = (0..24)
        .map(|_| bed.tcp("client", backend_vip, 80).word)
        .collect();
    let allowed = outcomes.iter().filter(|w| *w == "ok").count();
    let refused = outcomes.iter().filter(|w| *w == "eperm").count();
    assert_eq!(allowed + refused, outcomes.len(), "{outcomes:?}\n{}", log());
    assert!(allowed > 0 && refused > 0, "{outcomes:?}\n{}", log());
    let events = agent.wait_events(before + 1 + refused);
    let denials: Vec<_> = events[before..]
        .iter()
        .filter(|e| e["verdict"] == "dropped" && e["workload"] == "ml/client")
        .collect();
    let by_service = |service: &str| {
        denials
            .iter()
            .filter(|e| e["service"] == service)
            .collect::<Vec<_>>()
    };
    assert_eq!(by_service("ml/other").len(), 1, "{denials:#?}");
    assert!(!by_service("ml/backend").is_empty(), "{denials:#?}");
    for e in &denials {
        assert_eq!(e["hook"], "connect", "{e:#}");
        assert_eq!(e["dst"], other.to_string(), "the pod drawn: {e:#}");
        assert_eq!(e["dst_port"], 8080, "{e:#}");
        assert_eq!(e["peer"], "ml/other", "{e:#}");
    }
}
