//! Restarts without a gap: the agent pins its maps and links, so `kill -9` under live
//! traffic changes no verdict while it is down or after a new agent takes over (which
//! swaps its programs into the pinned links and adopts the maps), an established
//! connection survives, a policy changed while the agent was down is reconciled when it
//! returns, an upgrade to another map layout runs its programs beside the old ones and
//! then removes them, and `stagewall uninstall` removes everything.

use std::{
    os::unix::fs::MetadataExt as _,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use stagewall_tests::{Testbed, privileged, probe_bin};

fn policy(bed: &Testbed, ports: &str) -> String {
    let mut p = bed.workload_yaml("client", "app", "{app: client}", false);
    p += &bed.workload_yaml("server", "app", "{app: server}", false);
    p += &bed.workload_yaml("edge", "app", "{app: edge}", true);
    for target in ["server", "edge"] {
        p += &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {target}, namespace: app}}\nspec:\n  podSelector: {{matchLabels: {{app: {target}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: {ports}}}]\n---\n"
        );
    }
    p
}

#[test]
fn kill_9_under_live_traffic_changes_no_verdict_and_a_new_agent_takes_over() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "edge"]).expect("creating the test bed");
    bed.write_policy("policy.yaml", &policy(&bed, "[{port: 80}]"))
        .unwrap();
    bed.serve("server", &[80, 81], &[]).unwrap();
    bed.serve("edge", &[80, 81], &[]).unwrap();
    let mut agent = bed.start_agent(&[]).expect("starting the agent");
    let (server, edge) = (bed.node("server").v4, bed.node("edge").v4);
    let targets: Vec<(String, &str)> = [server, edge]
        .iter()
        .flat_map(|a| {
            [
                (format!("tcp/{a}/80"), "ok"),
                (format!("tcp/{a}/81"), "timeout"),
            ]
        })
        .collect();
    let pin = stagewall_tests::pinned_links(&bed.bpffs)
        .read_dir()
        .unwrap()
        .flatten()
        .next()
        .expect("a pinned link")
        .path();
    let pin_inode = std::fs::metadata(&pin).unwrap().ino();

    // An established connection, exchanging a byte at a time, across everything below.
    let mut rr = bed.command("client", probe_bin()).unwrap();
    let rr = rr
        .args(["rr", &server.to_string(), "80", "6000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Live traffic: every probe's verdict is checked against the policy in force (it
    // does not change in this phase), while the agent is killed, down and restarted.
    let done = AtomicBool::new(false);
    let (probes, wrong, mut agent) = std::thread::scope(|scope| {
        let checker = scope.spawn(|| {
            let mut args = vec!["matrix", "300"];
            args.extend(targets.iter().map(|(t, _)| t.as_str()));
            let (mut probes, mut wrong) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                for line in bed.probe_output("client", &args).lines() {
                    let mut f = line.split_whitespace();
                    let (Some(target), Some(outcome)) = (f.next(), f.next()) else {
                        continue;
                    };
                    probes += 1;
                    let want = targets.iter().find(|(t, _)| t == target).unwrap().1;
                    if outcome != want {
                        wrong.push(format!("{target}: {outcome}, expected {want}"));
                    }
                }
            }
            (probes, wrong)
        });
        std::thread::sleep(Duration::from_millis(800));
        agent.kill();
        let killed = Instant::now();
        // Down for a while: the pinned programs enforce alone.
        std::thread::sleep(Duration::from_millis(1500));
        let agent = bed.start_agent(&[]).expect("restarting the agent");
        eprintln!("agent down for {:?}", killed.elapsed());
        std::thread::sleep(Duration::from_millis(1500));
        done.store(true, Ordering::Relaxed);
        let (probes, wrong) = checker.join().unwrap();
        (probes, wrong, agent)
    });
    eprintln!(
        "kill -9 and restart under live traffic: {probes} probes, {} wrong verdicts",
        wrong.len()
    );
    assert!(probes >= 40, "too few probes: {probes}");
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    let out = rr.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("established connection across the restart: {said}");
    assert!(
        said.starts_with("ok"),
        "the established connection broke: {said}"
    );
    let log = agent.log();
    assert!(log.contains("adopted the pinned state"), "{log}");
    assert_eq!(
        std::fs::metadata(&pin).unwrap().ino(),
        pin_inode,
        "the link was replaced in place, not detached and attached again"
    );

    // A policy changed while the agent is down: the old one stays in force until an
    // agent returns and reconciles.
    agent.kill();
    bed.write_policy("policy.yaml", &policy(&bed, "[{port: 80}, {port: 81}]"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(bed.tcp("client", server, 81).is("timeout"));
    let mut agent = bed.start_agent(&[]).expect("restarting the agent");
    assert!(bed.tcp("client", server, 81).is("ok"), "reconciled");
    assert!(bed.tcp("client", edge, 81).is("ok"), "reconciled (tc)");

    // An upgrade to another map layout: what is pinned is made to look like an older
    // build's (layout v0) by renaming its directory; its programs stay attached and
    // enforce. The new agent never opens those maps: it attaches its own programs beside
    // the old ones, and once it enforces, removes the old layout, which detaches them.
    agent.kill();
    let old_layout = bed.bpffs.join("v0");
    let current_layout = stagewall_tests::pinned_links(&bed.bpffs);
    let current_layout = current_layout.parent().expect("the layout's directory");
    std::fs::rename(current_layout, &old_layout).unwrap();
    assert!(
        bed.tcp("client", edge, 82).is("timeout"),
        "the old layout enforces"
    );
    let mut agent = bed.start_agent(&[]).expect("starting the upgraded agent");
    assert!(!old_layout.exists(), "{}", agent.log());
    assert!(agent.log().contains("migrated"), "{}", agent.log());
    assert!(
        !agent.log().contains("adopted"),
        "fresh maps: {}",
        agent.log()
    );
    assert!(bed.tcp("client", server, 81).is("ok"));
    assert!(
        bed.tcp("client", edge, 82).is("timeout"),
        "the new layout enforces"
    );
    let links = std::fs::read_dir(stagewall_tests::pinned_links(&bed.bpffs))
        .unwrap()
        .count();
    assert_eq!(links, 10 + 10 + 2, "two cgroup workloads and one interface");

    // uninstall refuses while an agent runs, and removes everything once it is stopped.
    assert!(bed.uninstall().is_err());
    agent.stop().unwrap();
    assert!(
        bed.tcp("client", server, 81).is("ok"),
        "stopped: the last policy still in force"
    );
    assert!(
        bed.tcp("client", edge, 82).is("timeout"),
        "stopped: still enforcing"
    );
    bed.uninstall().unwrap();
    assert!(!bed.bpffs.exists());
    // Nothing attached any more, of either layout: the port nobody serves answers with a
    // reset instead of silence.
    assert!(
        bed.tcp("client", edge, 82).is("refused"),
        "a program still attached"
    );
}

/// One agent per pin directory: a second `stagewall run` on a running agent's pins
/// refuses (it would write into the first one's maps), `uninstall` refuses while an agent
/// holds them even where it cannot reach the agent's control socket (a Kubernetes
/// uninstall pod), and removes only what the agent made, never the rest of the directory.
#[test]
fn one_agent_per_pin_directory_and_uninstall_removes_only_its_own() {
    if !privileged() {
        return;
    }
    let bed = Testbed::new(&["client", "server", "edge"]).expect("creating the test bed");
    bed.write_policy("policy.yaml", &policy(&bed, "[{port: 80}]"))
        .unwrap();
    let mut agent = bed.start_agent(&[]).expect("starting the agent");
    // The interface-attached workload shows enforcement on a port nobody serves: a
    // timeout while enforced, a reset once nothing is attached.
    let edge = bed.node("edge").v4;
    assert!(bed.tcp("client", edge, 82).is("timeout"));

    // The second agent has its own control socket and metrics address: only the pin
    // directory is shared.
    let other_socket = bed.dir.join("second.control.sock");
    let mut second = bed
        .hub_command(stagewall_tests::agent_bin())
        .unwrap()
        .arg("run")
        .arg("--policies")
        .arg(&bed.dir)
        .arg("--bpffs-dir")
        .arg(&bed.bpffs)
        .arg("--control-socket")
        .arg(&other_socket)
        .args(["--metrics-addr", "127.0.0.1:9743"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second agent ran on the same pins: {said}"
    );
    assert!(said.contains("another stagewall agent"), "{said}");
    assert!(
        bed.tcp("client", edge, 82).is("timeout"),
        "the first agent still enforces"
    );
    assert!(agent.metrics().contains("stagewall_policy_generation"));

    // uninstall through a socket path where no agent answers: the lock still refuses.
    let out = std::process::Command::new(stagewall_tests::agent_bin())
        .args(["uninstall", "--bpffs-dir"])
        .arg(&bed.bpffs)
        .arg("--socket")
        .arg(&other_socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uninstall under a running agent");
    assert!(text.contains("another stagewall agent"), "{text}");
    assert!(
        bed.tcp("client", edge, 82).is("timeout"),
        "still enforcing after the refused uninstall"
    );

    // Stopped, uninstall removes the agent's layouts and nothing else of the directory.
    agent.stop().unwrap();
    let foreign = bed.bpffs.join("someone-elses");
    std::fs::create_dir(&foreign).unwrap();
    let said = bed.uninstall().unwrap();
    assert!(said.contains("not stagewall's"), "{said}");
    assert!(
        foreign.exists(),
        "uninstall removed a directory it did not make"
    );
    assert!(
        !stagewall_tests::pinned_links(&bed.bpffs).exists(),
        "the agent's links are gone"
    );
    assert!(
        bed.tcp("client", edge, 82).is("refused"),
        "a program still attached"
    );
}
