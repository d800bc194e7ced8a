//! Quarantine (assume breach): `stagewall quarantine` isolates a workload entirely in the
//! kernel within milliseconds, `stagewall release` lifts it, and only root can ask.

use std::{os::unix::process::CommandExt as _, process::Command, time::Instant};

use stagewall_tests::{Testbed, agent_bin, privileged};

fn stagewall(bed: &Testbed, args: &[&str]) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .arg("--socket")
        .arg(&bed.control_socket)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
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
    assert!(
        bed.tcp("server", server, 80).is("ok"),
        "its traffic to itself still passes"
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
