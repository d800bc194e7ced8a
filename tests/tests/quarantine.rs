//! Quarantine (assume breach): `stagewall quarantine` isolates a workload entirely in the
//! kernel within milliseconds, `stagewall release` lifts it, and only root can ask.

use std::{os::unix::process::CommandExt as _, process::Command, time::Instant};

use stagewall_tests::{Testbed, agent_bin, privileged};

fn stagewall(bed: &Testbed, args: &[&str]) -> (bool, String) {
    bed.control(args)
}

#[test]
fn quarantine_isolates_a_workload_at_once_and_release_lifts_it() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut p = bed.workload_yaml("client", "app", "{app: client}", false);
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";
    bed.write_policy("policy.yaml", &p).unwrap();
    bed.serve("server", &[80], &[80]).unwrap();
    bed.serve("client", &[80], &[]).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let (client, server) = (bed.node("client").v4, bed.node("server").v4);
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("server", client, 80).is("ok"));

    let started = Instant::now();
    let (ok, said) = stagewall(&bed, &["quarantine", "app/server"]);
    let took = started.elapsed();
    assert!(ok, "{said}");
    assert!(said.contains("app/server quarantined in"), "{said}");
    eprintln!(
        "quarantine: command answered after {took:?} ({})",
        said.trim()
    );
    // In force when the command returns: the very next packets are dropped, both ways.
    assert!(
        bed.tcp("client", server, 80).is("timeout"),
        "ingress of a quarantined workload"
    );
    assert!(bed.udp("client", server, 80, 1).is("timeout"));
    assert!(
        bed.tcp("server", client, 80).is("eperm"),
        "egress of a quarantined workload"
    );
    // Quarantine comes before everything, its own loopback traffic too: from a workload
    // in the node's network namespace, loopback reaches the node's own services.
    assert!(
        bed.tcp("server", server, 80).is("eperm"),
        "its traffic to itself is cut too"
    );
    assert!(
        bed.tcp("server", "127.0.0.1".parse().unwrap(), 80)
            .is("eperm"),
        "its loopback traffic is cut too"
    );
    let events = agent.wait_events(3);
    let quarantine: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "quarantine")
        .collect();
    assert!(quarantine.len() >= 3, "{events:#?}");
    assert!(
        quarantine
            .iter()
            .all(|e| e["workload"] == "app/server" && e["verdict"] == "dropped")
    );
    assert!(
        agent
            .metrics()
            .contains("stagewall_workloads_quarantined 1")
    );

    // A policy reload keeps the quarantine.
    bed.write_policy("policy.yaml", &(p.clone() + "\n"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        bed.tcp("client", server, 80).is("timeout"),
        "quarantine survives a policy change"
    );

    let (ok, said) = stagewall(&bed, &["release", "app/server"]);
    assert!(ok, "{said}");
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("server", client, 80).is("ok"));

    let (ok, said) = stagewall(&bed, &["quarantine", "app/nobody"]);
    assert!(
        !ok && said.contains("not a workload enforced on this node"),
        "{said}"
    );

    // Only root: the socket is 0600, and a non-root user cannot even connect.
    let mode = std::fs::metadata(&bed.control_socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);
    let out = Command::new(agent_bin())
        .args(["quarantine", "app/server", "--socket"])
        .arg(&bed.control_socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        bed.tcp("client", server, 80).is("ok"),
        "a refused request changed nothing"
    );
    // The HTTP endpoint is read-only.
    let post = bed.hub_get("127.0.0.1:9742", "/v1/quarantine");
    assert!(post.is_some_and(|b| b.contains("not found")));
}

/// `--auto-quarantine N/T`: a workload whose egress is denied N times within T is
/// quarantined by the agent itself; slower denials, and denials *to* a workload, are not.
#[test]
fn auto_quarantine_isolates_a_workload_that_keeps_breaking_its_egress_policy() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut p = bed.workload_yaml("client", "app", "{app: client}", false);
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    // The server may reach the client on TCP 80 only; the client may reach the server on
    // TCP 80 only.
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]\n  egress: [{to: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]\n---\n";
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: server}}}], ports: [{port: 80}]}]\n";
    bed.write_policy("policy.yaml", &p).unwrap();
    bed.serve("server", &[80, 81], &[]).unwrap();
    bed.serve("client", &[80, 81], &[]).unwrap();
    let agent = bed
        .start_agent(&["--auto-quarantine", "10/3s"])
        .expect("starting the agent");
    let (client, server) = (bed.node("client").v4, bed.node("server").v4);
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("server", client, 80).is("ok"));

    // Below the threshold: 4 denied connects by the server, then a pause longer than
    // the window, then 4 more.
    for _ in 0..2 {
        for _ in 0..4 {
            assert!(bed.tcp("server", client, 81).is("eperm"));
        }
        std::thread::sleep(std::time::Duration::from_millis(3500));
    }
    // Denials *to* the server (the client breaking its own policy) never count against
    // the server.
    for _ in 0..12 {
        assert!(bed.tcp("client", server, 81).is("eperm"));
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(
        agent.log().contains("auto-quarantine: app/client had")
            && agent
                .metrics()
                .contains("stagewall_auto_quarantines_total 1"),
        "the client (12 egress denials within 3 s), and only it, is quarantined: {}",
        agent.log()
    );
    let (ok, said) = stagewall(&bed, &["release", "app/client"]);
    assert!(ok, "{said}");
    assert!(
        bed.tcp("server", client, 80).is("ok"),
        "the server was quarantined for denials it did not cause, or below the threshold"
    );

    // The server tries 12 denied connects at once: quarantined within the sampling
    // interval.
    for _ in 0..12 {
        assert!(bed.tcp("server", client, 81).is("eperm"));
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while !agent.log().contains("auto-quarantine: app/server") && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        agent.log().contains("auto-quarantine: app/server had"),
        "{}",
        agent.log()
    );
    assert!(
        bed.tcp("server", client, 80).is("eperm"),
        "an auto-quarantined workload's allowed egress is cut too"
    );
    assert!(bed.tcp("client", server, 80).is("timeout"));
    assert!(
        agent
            .metrics()
            .contains("stagewall_auto_quarantines_total 2")
    );
    // Released, it starts afresh: its denials while quarantined do not count.
    let (ok, said) = stagewall(&bed, &["release", "app/server"]);
    assert!(ok, "{said}");
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(bed.tcp("server", client, 80).is("ok"));
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(
        agent
            .metrics()
            .contains("stagewall_workloads_quarantined 0")
    );
}

/// A quarantine is kept in bpffs, not in the agent: `kill -9` and a restart, and an
/// upgrade to another map layout, leave the workload isolated; release lifts it for good.
#[test]
fn quarantine_survives_kill_9_restart_and_an_upgrade() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut p = bed.workload_yaml("client", "app", "{app: client}", false);
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    bed.write_policy("policy.yaml", &p).unwrap();
    bed.serve("server", &[80], &[]).unwrap();
    bed.serve("client", &[80], &[]).unwrap();
    let (client, server) = (bed.node("client").v4, bed.node("server").v4);
    let isolated = |bed: &Testbed, when: &str| {
        assert!(
            bed.tcp("client", server, 80).is("timeout"),
            "{when}: ingress of the quarantined workload"
        );
        assert!(
            bed.tcp("server", client, 80).is("eperm"),
            "{when}: egress of the quarantined workload"
        );
    };
    let mut agent = bed.start_agent(&[]).expect("starting the agent");
    assert!(bed.tcp("client", server, 80).is("ok"));
    let (ok, said) = stagewall(&bed, &["quarantine", "app/server"]);
    assert!(ok, "{said}");
    isolated(&bed, "quarantined");

    agent.kill();
    let mut agent = bed.start_agent(&[]).expect("restarting the agent");
    isolated(&bed, "after kill -9 and a restart");
    assert!(
        agent.log().contains("app/server stays quarantined"),
        "{}",
        agent.log()
    );
    assert!(
        agent
            .metrics()
            .contains("stagewall_workloads_quarantined 1"),
        "the restarted agent counts it"
    );

    // An upgrade to another map layout (the pinned layout renamed to look like an older
    // build's): the quarantine is kept beside the layouts, and the new agent reads it.
    agent.kill();
    let links = stagewall_tests::pinned_links(&bed.bpffs);
    let layout = links.parent().expect("the layout's directory");
    std::fs::rename(layout, bed.bpffs.join("v0")).unwrap();
    let mut agent = bed.start_agent(&[]).expect("starting the upgraded agent");
    assert!(agent.log().contains("migrated"), "{}", agent.log());
    isolated(&bed, "after an upgrade across a map layout change");

    let (ok, said) = stagewall(&bed, &["release", "app/server"]);
    assert!(ok, "{said}");
    assert!(bed.tcp("client", server, 80).is("ok"), "released");
    agent.kill();
    let _agent = bed.start_agent(&[]).expect("restarting the agent");
    assert!(
        bed.tcp("client", server, 80).is("ok"),
        "a release is kept too"
    );
}

/// `stagewall status` and `stagewall get` against the real agent: what they print (as
/// JSON, parsed) is what the policies say and what the kernel holds — the workload's
/// endpoint under its real cgroup id, its policy entry for the allowed peer and port,
/// the identity of that peer with its address, a flow after real traffic, and a
/// quarantined workload counted and flagged.
#[test]
fn status_and_get_show_what_the_kernel_enforces() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut p = bed.workload_yaml("client", "app", "{app: client}", false);
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    p += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{protocol: TCP, port: 80}]}]\n";
    bed.write_policy("policy.yaml", &p).unwrap();
    bed.serve("server", &[80, 81], &[]).unwrap();
    let _agent = bed.start_agent(&[]).expect("starting the agent");
    let (client, server) = (bed.node("client").v4, bed.node("server").v4);
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("client", server, 81).is("timeout"));
    let json = |args: &[&str]| -> serde_json::Value {
        let (ok, said) = bed.control(&[args, &["-o", "json"]].concat());
        assert!(ok, "{args:?}: {said}");
        serde_json::from_str(&said).unwrap_or_else(|e| panic!("{args:?}: {e}: {said}"))
    };

    // The endpoint of app/server: its cgroup's id (the inode of its directory), isolated
    // for ingress only.
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&bed.node("server").cgroup).unwrap(),
    );
    let endpoints = json(&["get", "endpoints"]);
    let server_ep = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["workload"] == "app/server")
        .unwrap_or_else(|| panic!("no app/server endpoint: {endpoints:#}"));
    assert_eq!(server_ep["target"]["kind"], "cgroup", "{server_ep:#}");
    assert_eq!(server_ep["target"]["id"], cgroup_id, "{server_ep:#}");
    let flags = server_ep["flags"].as_array().unwrap();
    assert!(flags.contains(&"isolated-ingress".into()), "{server_ep:#}");
    assert!(!flags.contains(&"isolated-egress".into()), "{server_ep:#}");
    assert_ne!(server_ep["ingress_policy"], 0, "{server_ep:#}");

    // Its policy: one entry, from the client's identity, TCP port 80, accepted.
    let policy = json(&["get", "policy", "app/server"]);
    assert_eq!(
        policy["endpoint_id"], server_ep["endpoint_id"],
        "{policy:#}"
    );
    let entries = policy["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{policy:#}");
    let entry = &entries[0];
    assert_eq!(entry["direction"], "ingress", "{entry:#}");
    assert_eq!(entry["program"], "network-policy", "{entry:#}");
    assert_eq!(entry["protocol"], "tcp", "{entry:#}");
    assert_eq!(entry["ports"], serde_json::json!([80, 80]), "{entry:#}");
    assert_eq!(entry["action"], "accept", "{entry:#}");
    assert_eq!(entry["peer"], "workloads in app {app=client}", "{entry:#}");

    // That identity, with the client's address in the kernel's IP cache.
    let identities = json(&["get", "identities"]);
    let client_identity = identities
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["identity"] == entry["identity"])
        .unwrap_or_else(|| panic!("no identity {}: {identities:#}", entry["identity"]));
    assert!(
        client_identity["prefixes"]
            .as_array()
            .unwrap()
            .contains(&format!("{client}/32").into()),
        "{client_identity:#}"
    );

    // The connection the policy allowed is in the flow table, its verdict cached; the
    // one it denied is not.
    let flows = json(&["get", "flows", "app/server"]);
    let flows = flows.as_array().unwrap();
    let allowed = flows
        .iter()
        .find(|f| {
            f["remote"] == client.to_string()
                && f["local_port"] == 80
                && f["direction"] == "ingress"
        })
        .unwrap_or_else(|| panic!("no flow in from the client to port 80: {flows:#?}"));
    assert_eq!(allowed["protocol"], "tcp", "{allowed:#}");
    assert_eq!(allowed["peer"], "app/client", "{allowed:#}");
    assert_eq!(allowed["verdict_cached"], true, "{allowed:#}");
    assert!(
        !flows.iter().any(|f| f["local_port"] == 81),
        "a denied connection is no flow: {flows:#?}"
    );

    // Status: the typed answer, as the agent sent it.
    let (ok, said) = stagewall(&bed, &["quarantine", "app/client"]);
    assert!(ok, "{said}");
    let status: stagewall::control::status::Status =
        serde_json::from_value(json(&["status"])).expect("a status");
    assert_eq!(status.mode, stagewall::policy::model::Mode::Enforce);
    assert!(status.policy.generation >= 2, "{status:#?}"); // the quarantine applied again
    assert!(status.policy.applied_at.is_some(), "{status:#?}");
    assert_eq!(status.workloads.enforced, 2, "{status:#?}");
    assert_eq!(status.workloads.quarantined, 1, "{status:#?}");
    assert_eq!(status.workloads.quarantined_names, ["app/client"]);
    let map = |name: &str| {
        status
            .maps
            .iter()
            .find(|m| m.map == name)
            .unwrap_or_else(|| panic!("no {name} in {status:#?}"))
    };
    assert_eq!(map("endpoints").entries, 2, "{status:#?}");
    assert_eq!(map("policy").entries, 1, "{status:#?}");
    assert!(map("flows").entries >= 1 && map("flows").capacity > 0);
    assert!(status.kernel.cgroups_attached >= 2, "{status:#?}");
    assert!(
        status
            .kernel
            .cgroup_hooks
            .iter()
            .any(|h| h == "stagewall_cgroup_ingress")
    );
    assert_eq!(
        status.pin_layout_version,
        stagewall_common::MAP_LAYOUT_VERSION
    );
    // The agent's version and kernel are this test's; its commit is the one it was built
    // from (the binary may be older than this test's library), or "unknown".
    let here = stagewall::build_info::BuildInfo::current();
    assert_eq!(
        (&status.build.version, &status.build.kernel),
        (&here.version, &here.kernel)
    );
    assert!(
        status.build.commit == "unknown"
            || (status.build.commit.len() == 12
                && status.build.commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{status:#?}"
    );
    // The quarantined workload's kernel entry says so.
    let endpoints = json(&["get", "endpoints"]);
    assert!(
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["workload"] == "app/client"
                && e["flags"]
                    .as_array()
                    .unwrap()
                    .contains(&"quarantined".into())),
        "{endpoints:#}"
    );
    // Text and YAML are the same data for people and programs.
    let (ok, text) = bed.control(&["status"]);
    eprintln!("stagewall status:\n{text}");
    assert!(
        ok && text.contains("2 enforced") && text.contains("1 quarantined (app/client)"),
        "{text}"
    );
    let (ok, yaml) = bed.control(&["get", "policy", "app/server", "-o", "yaml"]);
    assert!(ok && yaml.contains("action: accept"), "{yaml}");
}
