//! The command line: `check` on good and bad policies, and `run` refusing bad policies
//! before it touches the kernel (so these run without root).

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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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

fn explain(from: &str, to: &str, port: &str) -> (bool, String, String) {
    let out = stagewall(&[
        "check",
        &examples(),
        "--explain",
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_names_the_rule_that_allows_a_connection() {
    let (ok, stdout, stderr) =
        explain("ml-pipeline/trainer-0", "ml-pipeline/model-serving", "8500");
    assert!(ok, "{stderr}");
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
    assert!(ok);
    assert!(stdout.contains("verdict: denied"), "{stdout}");
    assert!(stdout.contains("egress of ml-pipeline/data-ingestion: DENIED: isolated by ml-pipeline/training-pipeline-default-deny, ml-pipeline/training-pipeline-data-ingestion"), "{stdout}");
}

#[test]
fn explain_takes_outside_addresses() {
    let (ok, stdout, _) = explain("203.0.113.7", "ml-pipeline/data-ingestion", "8080");
    assert!(ok);
    assert!(
        stdout.contains("not a workload of the inventory"),
        "{stdout}"
    );
    assert!(stdout.contains("ipBlock 203.0.113.0/24"), "{stdout}");
    assert!(stdout.contains("verdict: allowed"), "{stdout}");
    let (_, stdout, _) = explain("ml-pipeline/trainer-0", "8.8.8.8", "443");
    assert!(stdout.contains("verdict: denied"), "{stdout}");
}

#[test]
fn explain_rejects_unknown_workloads() {
    let (ok, _, stderr) = explain("ml-pipeline/nope", "ml-pipeline/model-serving", "8500");
    assert!(!ok);
    assert!(stderr.contains("no Workload ml-pipeline/nope"), "{stderr}");
}
