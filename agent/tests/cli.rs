//! The command line: `check` on good and bad policies, `run` refusing bad policies
//! before it touches the kernel, the one output convention (`-o text|json|yaml|wide`) and
//! the exit codes of docs/exit-codes.md (so these run without root).

use std::process::Command;

fn stagewall(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stagewall"))
        .args(args)
        .output()
        .expect("running stagewall")
}

fn examples() -> String {
    format!("{}/../policies", env!("CARGO_MANIFEST_DIR"))
}

fn temp_policies(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stagewall-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// `stagewall run` on a policy directory (on an ephemeral metrics port).
fn run_on(dir: &std::path::Path) -> std::process::Output {
    stagewall(&[
        "run",
        "--policies",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ])
}

const BAD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: ns}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 80, endPort: 70}]
";

#[test]
fn check_accepts_the_examples() {
    let out = stagewall(&["check", &examples()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("ml-pipeline/data-ingestion"), "{stdout}");
}

#[test]
fn check_reports_file_line_and_expectation() {
    let dir = temp_policies(
        "check",
        &[
            (
                "good.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n",
            ),
            ("bad.yaml", BAD),
        ],
    );
    let out = stagewall(&["check", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Bad input (docs/exit-codes.md).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = dir.join("bad.yaml");
    assert!(
        stderr.contains(&format!(
            "{}:7: endPort 70 is invalid; expected",
            file.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_refuses_bad_policies_before_touching_the_kernel() {
    let dir = temp_policies("run", &[("bad.yaml", BAD)]);
    let out = run_on(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:7: endPort 70 is invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("attached"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_refuses_auto_quarantine_in_audit_mode_and_bad_thresholds() {
    let examples = examples();
    let base = [
        "run",
        "--policies",
        &examples,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let out = stagewall(
        &[
            &base[..],
            &["--mode", "audit", "--auto-quarantine", "10/1s"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("audit mode never does"), "{stderr}");
    assert!(!stderr.contains("attached"), "{stderr}");
    let out = stagewall(&[&base[..], &["--auto-quarantine", "0/1s"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("above zero"), "{stderr}");
}

#[test]
fn run_refuses_an_empty_policy_directory() {
    let dir = temp_policies("empty", &[]);
    let out = run_on(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no policy files"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The arguments of `check DIR --explain` for one connection.
fn explain_args<'a>(dir: &'a str, from: &'a str, to: &'a str, port: &'a str) -> [&'a str; 9] {
    [
        "check",
        dir,
        "--explain",
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
    ]
}

/// `check --explain`: exit code, stdout, stderr.
fn explain(from: &str, to: &str, port: &str) -> (Option<i32>, String, String) {
    let out = stagewall(&explain_args(&examples(), from, to, port));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_names_the_rule_that_allows_a_connection() {
    let (ok, stdout, stderr) =
        explain("ml-pipeline/trainer-0", "ml-pipeline/model-serving", "8500");
    assert_eq!(ok, Some(0), "{stderr}");
    assert!(stdout.contains("verdict: allowed"), "{stdout}");
    // Both sides, each with the generated policy, its rule and the Pipeline flow's line.
    assert!(stdout.contains("egress of ml-pipeline/trainer-0: allowed by ml-pipeline/training-pipeline-training egress rule"), "{stdout}");
    assert!(stdout.contains("ingress of ml-pipeline/model-serving: allowed by ml-pipeline/training-pipeline-model-serving ingress rule"), "{stdout}");
    assert!(stdout.contains("ml-pipeline/pipeline.yaml:35"), "{stdout}");
}

#[test]
fn explain_says_why_a_connection_is_denied() {
    let (ok, stdout, _) = explain(
        "ml-pipeline/data-ingestion",
        "ml-pipeline/model-serving",
        "8500",
    );
    // Like `kubectl auth can-i`: "no" exits 1.
    assert_eq!(ok, Some(1), "{stdout}");
    assert!(stdout.contains("verdict: denied"), "{stdout}");
    assert!(stdout.contains("egress of ml-pipeline/data-ingestion: DENIED: isolated by ml-pipeline/training-pipeline-default-deny, ml-pipeline/training-pipeline-data-ingestion"), "{stdout}");
}

#[test]
fn explain_takes_outside_addresses() {
    let (ok, stdout, _) = explain("203.0.113.7", "ml-pipeline/data-ingestion", "8080");
    assert_eq!(ok, Some(0), "{stdout}");
    assert!(
        stdout.contains("not a workload of the inventory"),
        "{stdout}"
    );
    assert!(stdout.contains("ipBlock 203.0.113.0/24"), "{stdout}");
    assert!(stdout.contains("verdict: allowed"), "{stdout}");
    let (ok, stdout, _) = explain("ml-pipeline/trainer-0", "8.8.8.8", "443");
    assert_eq!(ok, Some(1), "{stdout}");
    assert!(stdout.contains("verdict: denied"), "{stdout}");
}

#[test]
fn explain_to_a_name_lists_the_rules_that_allow_it_and_their_ports() {
    let (ok, stdout, stderr) = explain("ml-pipeline/trainer-0", "files.pythonhosted.org", "443");
    assert_eq!(ok, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("from ml-pipeline/trainer-0 to the name files.pythonhosted.org"),
        "{stdout}"
    );
    // The Pipeline's fqdn flow, as the generated policy's egress rule, with its ports.
    assert!(
        stdout.contains("NetworkPolicy tier: ml-pipeline/training-pipeline-training egress rule"),
        "{stdout}"
    );
    assert!(
        stdout.contains("allows *.pythonhosted.org on TCP 443"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: allowed"), "{stdout}");
    let (ok, stdout, _) = explain("ml-pipeline/trainer-0", "pypi.org", "80");
    assert_eq!(ok, Some(1), "{stdout}");
    assert!(stdout.contains("allows pypi.org on TCP 443"), "{stdout}");
    assert!(stdout.contains("verdict: denied"), "{stdout}");
    let (ok, stdout, _) = explain("ml-pipeline/data-ingestion", "pypi.org", "443");
    assert_eq!(ok, Some(1), "{stdout}");
    assert!(
        stdout.contains("no rule that holds ml-pipeline/data-ingestion names pypi.org"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: denied"), "{stdout}");
}

#[test]
fn explain_rejects_unknown_workloads() {
    let (ok, _, stderr) = explain("ml-pipeline/nope", "ml-pipeline/model-serving", "8500");
    assert_eq!(ok, Some(2), "{stderr}");
    assert!(stderr.contains("no Workload ml-pipeline/nope"), "{stderr}");
}

/// A flow records file as the agent writes it: trainer-0 reached model-serving on 8500
/// and (would-drop, in audit) ssh on data-validation.
const RECORDS: &str = r#"{"version": 1, "agent_mode": "audit", "evicted": 0,
  "watched": [{"workload": "ml-pipeline/trainer-0", "direction": "egress", "stage": "training", "since": 1}],
  "records": [
    {"workload": "ml-pipeline/trainer-0", "direction": "egress", "protocol": "tcp", "port": 8500,
     "peer_address": "198.18.0.30", "stage": "training", "peer": "ml-pipeline/model-serving",
     "allowed": 3, "would_drop": 0, "dropped": 0, "first_seen": 1, "last_seen": 2},
    {"workload": "ml-pipeline/trainer-0", "direction": "egress", "protocol": "tcp", "port": 22,
     "peer_address": "198.18.0.11", "stage": "training", "peer": "ml-pipeline/data-validation",
     "allowed": 0, "would_drop": 6, "dropped": 0, "first_seen": 1, "last_seen": 2}]}"#;

fn records_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("stagewall-cli-{}-{name}.json", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn simulate_exits_1_on_newly_denied_flows_and_names_them() {
    let records = records_file("simulate", RECORDS);
    let pipeline = format!("{}/ml-pipeline", examples());
    let args = |policies: &str, format: &str| {
        stagewall(&[
            "simulate",
            "--records",
            records.to_str().unwrap(),
            "--policies",
            policies,
            "--format",
            format,
        ])
    };
    // The example pipeline allows 8500 and denies ssh, which went through in audit mode.
    let out = args(&pipeline, "text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("stage training: 1 newly denied, 0 newly allowed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("NEWLY DENIED  egress ml-pipeline/trainer-0 -> ml-pipeline/data-validation (198.18.0.11) tcp/22"),
        "{stdout}"
    );
    let out = args(&pipeline, "json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["stages"][0]["newly_denied"], 1, "{json:#}");
    assert_eq!(
        json["stages"][0]["changes"][0]["change"], "newly-denied",
        "{json:#}"
    );
    // With the inventory alone, nothing is isolated: nothing is newly denied, and the
    // would-drop flow is newly allowed.
    let inventory = temp_policies(
        "inventory",
        &[(
            "workloads.yaml",
            &std::fs::read_to_string(format!("{pipeline}/workloads.yaml")).unwrap(),
        )],
    );
    let out = args(inventory.to_str().unwrap(), "text");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("newly allowed egress ml-pipeline/trainer-0"),
        "{stdout}"
    );
    std::fs::remove_dir_all(inventory).unwrap();
    std::fs::remove_file(records).unwrap();
}

#[test]
fn rollout_commands_refuse_bad_records_or_policies_with_exit_2() {
    let pipeline = format!("{}/ml-pipeline", examples());
    let garbage = records_file("garbage", "{\"version\": 1, \"records\": [");
    let missing = std::env::temp_dir().join("stagewall-cli-no-such-records.json");
    let bad_policies = temp_policies("rollout-bad", &[("bad.yaml", BAD)]);
    let good_records = records_file("good", RECORDS);
    for command in ["advise", "simulate", "report"] {
        for (records, policies, expected) in [
            (
                &missing,
                pipeline.as_str(),
                "no flow records at".to_string(),
            ),
            (
                &garbage,
                pipeline.as_str(),
                "not a flow records file".to_string(),
            ),
            (
                &good_records,
                bad_policies.to_str().unwrap(),
                "bad.yaml:7: endPort 70 is invalid".to_string(),
            ),
        ] {
            let out = stagewall(&[
                command,
                "--records",
                records.to_str().unwrap(),
                "--policies",
                policies,
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
            assert!(stderr.contains(&expected), "{command}: {stderr}");
        }
    }
    std::fs::remove_file(garbage).unwrap();
    std::fs::remove_file(good_records).unwrap();
    std::fs::remove_dir_all(bad_policies).unwrap();
}

#[test]
fn run_without_policies_or_a_cluster_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_stagewall"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no --policies DIR, no --kubernetes, and no in-cluster service account"),
        "{stderr}"
    );
}

/// JSON and YAML of one command are the same value; each is parsed, not grepped.
fn json_and_yaml(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let json = stagewall(&[args, &["-o", "json"]].concat());
    let yaml = stagewall(&[args, &["-o", "yaml"]].concat());
    assert_eq!(json.status.code(), yaml.status.code());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} -o json: {e}: {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    let from_yaml: serde_json::Value = serde_saphyr::from_slice(&yaml.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} -o yaml: {e}: {}",
            String::from_utf8_lossy(&yaml.stdout)
        )
    });
    assert_eq!(from_yaml, value, "{args:?}: YAML and JSON differ");
    (json.status.code(), value)
}

/// The element of a JSON array whose `field` is `value`.
fn element<'a>(array: &'a serde_json::Value, field: &str, value: &str) -> &'a serde_json::Value {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array:#}"))
        .iter()
        .find(|e| e[field] == value)
        .unwrap_or_else(|| panic!("no {field} {value} in {array:#}"))
}

#[test]
fn check_prints_its_summary_as_json_yaml_and_wide_text() {
    let examples = examples();
    let (code, summary) = json_and_yaml(&["check", &examples]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["pipelines"], 1, "{summary:#}");
    let trainer = element(&summary["endpoints"], "workload", "ml-pipeline/trainer-0");
    assert_eq!(trainer["stage"], "training", "{trainer:#}");
    assert!(
        trainer["egress_isolated_by"]
            .as_array()
            .unwrap()
            .contains(&"ml-pipeline/training-pipeline-training".into()),
        "{trainer:#}"
    );
    // The counts agree with the text.
    let text = stagewall(&["check", &examples]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "{} policy entries",
            summary["policy_entries"].as_u64().unwrap()
        )),
        "{text}"
    );
    let wide = stagewall(&["check", &examples, "-o", "wide"]);
    let wide = String::from_utf8_lossy(&wide.stdout);
    assert!(
        wide.lines()
            .any(|l| l.contains("ml-pipeline/trainer-0") && l.contains("stage training")),
        "{wide}"
    );
}

#[test]
fn check_explain_answers_in_json_and_exits_1_when_denied() {
    let examples = examples();
    let ask =
        |from: &str, to: &str, port: &str| json_and_yaml(&explain_args(&examples, from, to, port));
    let (code, allowed) = ask("ml-pipeline/trainer-0", "ml-pipeline/model-serving", "8500");
    assert_eq!((code, &allowed["verdict"]), (Some(0), &"allowed".into()));
    assert!(
        allowed["text"]
            .as_str()
            .unwrap()
            .contains("ml-pipeline/pipeline.yaml:35"),
        "{allowed:#}"
    );
    let (code, denied) = ask(
        "ml-pipeline/data-ingestion",
        "ml-pipeline/model-serving",
        "8500",
    );
    assert_eq!(
        (code, &denied["verdict"]),
        (Some(1), &"denied".into()),
        "{denied:#}"
    );
}

#[test]
fn report_and_simulate_take_o_and_keep_format_as_an_alias() {
    let records = records_file("output", RECORDS);
    let pipeline = format!("{}/ml-pipeline", examples());
    let args = |command| {
        [
            command,
            "--records",
            records.to_str().unwrap(),
            "--policies",
            &pipeline,
        ]
    };
    let (code, report) = json_and_yaml(&args("report"));
    assert_eq!(code, Some(0), "{report:#}");
    let training = element(&report, "stage", "training");
    assert_eq!(training["egress_mode"], "audit", "{training:#}");
    assert!(
        training["flows_seen"].as_u64().unwrap() >= 1,
        "{training:#}"
    );
    let (code, simulated) = json_and_yaml(&args("simulate"));
    assert_eq!(code, Some(1), "{simulated:#}");
    assert_eq!(simulated["stages"][0]["newly_denied"], 1, "{simulated:#}");
    // The deprecated spelling gives the same JSON.
    let old = stagewall(&[&args("simulate")[..], &["--format", "json"]].concat());
    let old: serde_json::Value = serde_json::from_slice(&old.stdout).unwrap();
    assert_eq!(old, simulated);
    std::fs::remove_file(records).unwrap();
}

/// `status`, `get`, `quarantine` and `events` without an agent: exit 3 (agent
/// unreachable), saying where they looked; a bad `-o` or workload is bad input (2).
#[test]
fn commands_that_ask_the_agent_exit_3_when_it_does_not_answer() {
    let socket =
        std::env::temp_dir().join(format!("stagewall-cli-{}-none.sock", std::process::id()));
    let socket = socket.to_str().unwrap();
    for args in [
        vec!["status", "--socket", socket],
        vec!["status", "--socket", socket, "-o", "json"],
        vec!["get", "endpoints", "--socket", socket, "-o", "yaml"],
        vec!["get", "policy", "ml/trainer", "--socket", socket],
        vec!["quarantine", "ml/trainer", "--socket", socket],
        // Nothing listens on the discard port of the loopback.
        vec!["events", "--addr", "127.0.0.1:9", "-o", "json"],
    ] {
        let out = stagewall(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("is `stagewall run` running"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    for args in [
        vec!["status", "--socket", socket, "-o", "xml"],
        vec!["get", "flows", "not-a-workload", "--socket", socket],
    ] {
        let out = stagewall(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
}

/// Whether this test can do what needs root; in CI (`CI=true`) not being root is a
/// failure, never a silent skip.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CI=true)"
    );
    eprintln!("skipped {test}: needs root");
    false
}

/// A caller that is not root reaches the agent's socket (its mode opened up here, as a
/// mistaken chmod would) and is turned away by the agent: that is "agent unreachable"
/// (3), as the exit code table says, not "failed" (4: the agent's answer was taken for an
/// unexpected one).
#[test]
fn a_caller_that_is_not_root_is_turned_away_with_exit_3() {
    if !root_or_skip("a_caller_that_is_not_root_is_turned_away_with_exit_3") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    // Below /tmp itself (world-traversable), not $TMPDIR, which may be private.
    let dir =
        std::path::Path::new("/tmp").join(format!("stagewall-cli-{}-notroot", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where `nobody` can run it (the checkout may be below a private home).
    let binary = dir.join("stagewall");
    std::fs::copy(env!("CARGO_BIN_EXE_stagewall"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("control.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (commands, _requests) = tokio::sync::mpsc::channel(1);
    let (listener, _) = runtime
        .block_on(async { stagewall::control::listen(&socket) })
        .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let server = std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                stagewall::control::serve(listener, commands),
            )
            .await;
        })
    });
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["status", "--socket", socket.to_str().unwrap()])
        .output()
        .expect("running setpriv (util-linux) to drop to uid 65534");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("only root may use the control socket"),
        "{stderr}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check --explain` that cannot give a verdict (every address it would probe a name's
/// rules with is singled out by an ipBlock) does not say "yes" (0): it exits 4, "could
/// not answer".
#[test]
fn explain_without_a_verdict_exits_4() {
    let everything = "apiVersion: v1
kind: Namespace
metadata: {name: ml}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: a, namespace: ml, labels: {app: a}}
spec:
  addresses: [198.18.1.10]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: halves, namespace: ml}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock: {cidr: 0.0.0.0/1}
        - ipBlock: {cidr: 128.0.0.0/1}
        - ipBlock: {cidr: '::/1'}
        - ipBlock: {cidr: '8000::/1'}
";
    let dir = temp_policies("no-verdict", &[("all.yaml", everything)]);
    let out = stagewall(&explain_args(
        dir.to_str().unwrap(),
        "ml/a",
        "files.pythonhosted.org",
        "443",
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no verdict"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An agent that takes the connection but never answers (hung) is as good as unreachable:
/// exit 3 once the client stops waiting, not 4.
#[test]
fn an_agent_that_does_not_answer_is_unreachable_exit_3() {
    let dir = std::env::temp_dir().join(format!("stagewall-cli-{}-hung", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let holder = std::thread::spawn(move || {
        // Accepts, reads nothing, answers nothing, until the client gives up.
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut &stream, &mut buf);
        std::thread::sleep(std::time::Duration::from_secs(15));
        drop(stream);
    });
    let out = stagewall(&["status", "--socket", socket.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}
