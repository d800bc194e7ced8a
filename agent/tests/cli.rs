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
    let out = stagewall(&[
        "run",
        "--policies",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
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
fn run_refuses_an_empty_policy_directory() {
    let dir = temp_policies("empty", &[]);
    let out = stagewall(&[
        "run",
        "--policies",
        dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no policy files"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}
