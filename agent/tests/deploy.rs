//! deploy/kubernetes: every manifest validates against the Kubernetes schemas
//! (kubernetes-validate, strict: unknown fields are errors), and the DaemonSet runs the
//! agent with arguments it takes.

use std::{path::PathBuf, process::Command};

/// Every manifest below deploy/kubernetes, the uninstall one included.
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes"),
        &mut files,
    );
    files.sort();
    files
}

#[test]
fn every_manifest_validates_strictly_against_the_kubernetes_schemas() {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "kubernetes-validate is missing (cargo xtask setup installs it)"
        );
        println!("SKIPPED: kubernetes-validate is not installed (cargo xtask setup installs it)");
        return;
    }
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let out = Command::new("kubernetes-validate")
            .arg("--strict")
            .arg(file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {said}", file.display());
        assert!(said.contains("passed"), "{}: {said}", file.display());
        assert!(!said.contains("ERROR"), "{}: {said}", file.display());
    }
}

#[test]
fn the_daemonset_runs_the_agent_with_arguments_it_takes() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let daemonset: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "--kubernetes"]);
    // No cluster here: the agent gets as far as reading its kubeconfig.
    let out = Command::new(env!("CARGO_BIN_EXE_stagewall"))
        .args(&args)
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("reading kubeconfig /nonexistent/kubeconfig"),
        "the arguments parse and the agent goes on to the API server: {stderr}"
    );
    let probes = [&container["livenessProbe"], &container["readinessProbe"]];
    let paths: Vec<&str> = probes
        .iter()
        .map(|p| p["httpGet"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/healthz", "/readyz"]);
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9742"));
}
