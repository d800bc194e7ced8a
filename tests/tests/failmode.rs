//! Fail modes at start: a workload with fail mode closed (the default) is denied
//! everything from the moment its programs are attached until its policy is programmed;
//! with fail mode open it passes meanwhile. The first apply of a 20,000-rule policy takes
//! tens of milliseconds, and a connect loop running from before the agent starts until it
//! has started sees that window (closed) or not (open).

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use stagewall_tests::{Testbed, privileged, probe_bin};

/// What a connect loop from the client to the server's allowed port saw while the agent
/// started: `unchanged` or `changed OUTCOME NS`.
fn watch_agent_start(fail_mode: &str) -> (String, Vec<serde_json::Value>) {
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let server = bed.node("server").v4;
    let mut p = bed
        .workload_yaml("client", "app", "{app: client}", false)
        .replace("spec:\n", &format!("spec:\n  failMode: {fail_mode}\n"));
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    p += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {server}/32}}}}], ports: [{{port: 80}}]}}]\n---\n"
    );
    // 20,000 rules elsewhere (two policies: a YAML document is bounded), so that writing
    // the first policy takes a while.
    for part in 0..2 {
        p += &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: big-{part}, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
        );
        for i in part * 10_000..(part + 1) * 10_000 {
            p += &format!(
                "    - from: [{{ipBlock: {{cidr: 10.{}.{}.0/24}}}}]\n      ports: [{{port: {}}}]\n",
                i / 250 % 250,
                i % 250,
                1_000 + i
            );
        }
        if part == 0 {
            p += "---\n";
        }
    }
    p += &format!(
        "    - from: [{{ipBlock: {{cidr: {}/32}}}}]\n      ports: [{{port: 80}}]\n",
        bed.node("client").v4
    );
    bed.write_policy("policy.yaml", &p).unwrap();
    bed.serve("server", &[80], &[]).unwrap();
    let mut watch = bed.command("client", probe_bin()).unwrap();
    let mut watch = watch
        // Until the agent has started (then its window is over), however long its start
        // takes on a loaded machine: the test closes the watcher's stdin.
        .args([
            "watch-verdict",
            &server.to_string(),
            "80",
            "120000",
            "stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(
        first, "first ok",
        "before the agent runs, nothing is enforced"
    );
    let agent = bed.start_agent(&[]).expect("starting the agent");
    drop(watch.stdin.take());
    let seen = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let _ = watch.wait();
    assert!(
        bed.tcp("client", server, 80).is("ok"),
        "programmed: allowed"
    );
    assert!(
        bed.tcp("client", server, 81).is("eperm"),
        "programmed: denied"
    );
    (seen, agent.events())
}

#[test]
fn closed_denies_until_the_policy_is_programmed_and_open_passes() {
    if !privileged() {
        return;
    }
    let (seen, events) = watch_agent_start("closed");
    assert!(
        seen.starts_with("changed eperm"),
        "fail mode closed: the start window must deny: {seen}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["workload"] == "app/client" && e["reason"] == "default-deny"),
        "{events:#?}"
    );
    let (seen, _) = watch_agent_start("open");
    assert_eq!(seen, "unchanged", "fail mode open: nothing denied at start");
}
