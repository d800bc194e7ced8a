//! The Helm chart in deploy/helm/stagewall and the plain manifests of deploy/kubernetes,
//! which are rendered from it (`cargo xtask render-manifests`) so that the two cannot
//! drift: the chart is the one place that says what is installed. The test below fails
//! when a committed manifest differs from the chart's rendering, and lints and validates
//! every rendering of the chart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The chart, relative to the workspace root.
pub const CHART: &str = "deploy/helm/stagewall";
/// The plain manifests rendered from it, relative to the workspace root. Its `uninstall/`
/// directory is no part of the chart (a DaemonSet applied after the chart is gone).
pub const MANIFESTS: &str = "deploy/kubernetes";
/// The namespace the plain manifests install into (a helm user picks their own).
pub const NAMESPACE: &str = "stagewall-system";
/// The values the plain manifests are rendered with, beyond the chart's defaults: the
/// namespace as an object (what `helm install --create-namespace` makes for helm users).
const PLAIN_VALUES: [&str; 1] = ["namespace.create=true"];

/// The first line of every rendered manifest.
const RENDERED_HEADER: &str = "# Rendered from deploy/helm/stagewall by `cargo xtask render-manifests` \
     (default values; the namespace as an object): edit the chart, not this file.\n";

/// helm, as `cargo xtask cluster-build` builds it.
pub fn helm() -> PathBuf {
    crate::cluster::bin_dir().join("helm")
}

/// `helm template` of the chart (CRDs included) into `namespace` with `set` values
/// (`key=value` each); the rendered YAML.
pub fn template(namespace: &str, set: &[&str]) -> anyhow::Result<String> {
    let root = crate::workspace_root();
    let mut args = vec![
        "template".to_string(),
        "stagewall".to_string(),
        root.join(CHART).display().to_string(),
        "--namespace".to_string(),
        namespace.to_string(),
        "--include-crds".to_string(),
    ];
    for value in set {
        args.push("--set".to_string());
        args.push(value.to_string());
    }
    let helm = helm();
    let out = Command::new(&helm).args(&args).output().with_context(|| {
        format!(
            "running {} (cargo xtask cluster-build builds it)",
            helm.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "helm {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("helm template printed no UTF-8")
}

/// Splits `helm template`'s output into files named after the template each document
/// came from (`# Source: stagewall/templates/rbac.yaml` -> rbac.yaml); a template's
/// documents stay together, in order.
pub fn split_by_source(rendered: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut documents: Vec<String> = vec![String::new()];
    for line in rendered.lines() {
        if line == "---" {
            documents.push(String::new());
        } else {
            let document = documents.last_mut().expect("one document at least");
            document.push_str(line);
            document.push('\n');
        }
    }
    for document in documents {
        if document.trim().is_empty() {
            continue;
        }
        // A CRD file's documents after its first carry no Source line of their own.
        let body = match document.strip_prefix("# Source: ") {
            Some(rest) => {
                let (source, body) = rest.split_once('\n').unwrap_or((rest, ""));
                let name = source
                    .rsplit('/')
                    .next()
                    .context("a Source line names a file")?;
                current = Some(name.to_string());
                body.to_string()
            }
            None => document,
        };
        let Some(name) = &current else {
            bail!("helm template printed a document before any `# Source:` line:\n{body}");
        };
        // Blank lines that helm leaves at a file's end go.
        files
            .entry(name.clone())
            .or_default()
            .push(format!("{}\n", body.trim_end()));
    }
    Ok(files
        .into_iter()
        .map(|(name, documents)| {
            (
                name,
                format!("{RENDERED_HEADER}{}", documents.join("---\n")),
            )
        })
        .collect())
}

/// The plain manifests as the chart renders them: file name -> contents.
pub fn plain_manifests() -> anyhow::Result<BTreeMap<String, String>> {
    split_by_source(&template(NAMESPACE, &PLAIN_VALUES)?)
}

/// The YAML files directly in deploy/kubernetes (not uninstall/).
fn committed_manifests(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "yaml") {
            names.push(
                path.file_name()
                    .and_then(|n| n.to_str())
                    .context("a manifest's name is UTF-8")?
                    .to_string(),
            );
        }
    }
    names.sort();
    Ok(names)
}

/// What differs between the committed manifests and the chart's rendering: one line per
/// file (missing, left over, or its first differing line); empty when they agree.
pub fn drift() -> anyhow::Result<Vec<String>> {
    let dir = crate::workspace_root().join(MANIFESTS);
    let rendered = plain_manifests()?;
    let mut found = Vec::new();
    for name in committed_manifests(&dir)? {
        if !rendered.contains_key(&name) {
            found.push(format!(
                "{MANIFESTS}/{name}: no template of the chart renders it (remove it, or add it to the chart)"
            ));
        }
    }
    for (name, text) in &rendered {
        let path = dir.join(name);
        let Ok(committed) = std::fs::read_to_string(&path) else {
            found.push(format!(
                "{MANIFESTS}/{name}: missing (the chart renders it)"
            ));
            continue;
        };
        if committed != *text {
            let line = committed
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(text.lines().count()));
            found.push(format!(
                "{MANIFESTS}/{name}:{}: differs from the chart's rendering: committed {:?}, rendered {:?}",
                line + 1,
                committed.lines().nth(line).unwrap_or("(end of file)"),
                text.lines().nth(line).unwrap_or("(end of file)")
            ));
        }
    }
    Ok(found)
}

/// `cargo xtask render-manifests`: writes deploy/kubernetes from the chart; with `check`,
/// writes nothing and fails when a file differs.
pub fn render_manifests(check: bool) -> anyhow::Result<()> {
    if check {
        let found = drift()?;
        if !found.is_empty() {
            bail!(
                "deploy/kubernetes differs from the chart (run `cargo xtask render-manifests`):\n{}",
                found.join("\n")
            );
        }
        println!("{MANIFESTS} is the chart's rendering");
        return Ok(());
    }
    let dir = crate::workspace_root().join(MANIFESTS);
    let rendered = plain_manifests()?;
    for name in committed_manifests(&dir)? {
        if !rendered.contains_key(&name) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?;
            println!("removed {MANIFESTS}/{name} (no template renders it)");
        }
    }
    for (name, text) in rendered {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
        println!("wrote {MANIFESTS}/{name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value that adds objects or changes the DaemonSet, at once.
    const EVERYTHING: [&str; 10] = [
        "namespace.create=true",
        "metrics.prometheusRule.runbookBaseUrl=https://wiki.example.com/ml-platform/stagewall-runbooks",
        "mode=audit",
        "cgroupDriver=cgroupfs",
        "podAttachment=tc",
        "metrics.podMonitor.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "nodeSelector.kubernetes\\.io/arch=arm64",
    ];

    /// helm is built, or (outside CI) the test says why it stops.
    fn helm_built() -> bool {
        if helm().is_file() {
            return true;
        }
        assert!(
            std::env::var("CI").is_err(),
            "{} is missing: cargo xtask cluster-build builds it",
            helm().display()
        );
        println!(
            "SKIPPED: {} is missing (cargo xtask cluster-build)",
            helm().display()
        );
        false
    }

    fn run(program: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new(program).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn the_committed_manifests_are_the_charts_rendering() {
        if !helm_built() {
            return;
        }
        let found = drift().unwrap();
        assert!(
            found.is_empty(),
            "run `cargo xtask render-manifests`:\n{}",
            found.join("\n")
        );
        // What the tests and the README apply is there.
        let rendered = plain_manifests().unwrap();
        let names: Vec<&str> = rendered.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "clusternetworkpolicies.crd.yaml",
                "crds.yaml",
                "daemonset.yaml",
                "namespace.yaml",
                "rbac.yaml"
            ]
        );
    }

    #[test]
    fn the_chart_lints_and_every_rendering_validates_strictly() {
        if !helm_built() {
            return;
        }
        let chart = crate::workspace_root().join(CHART);
        let chart = chart.to_str().unwrap();
        for set in [&[][..], &EVERYTHING[..]] {
            let mut args = vec!["lint", "--strict", chart];
            for value in set {
                args.extend(["--set", value]);
            }
            let (ok, said) = run(&helm(), &args);
            assert!(
                ok && said.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{said}"
            );
        }

        let rendered = template("stagewall-system", &EVERYTHING).unwrap();
        let kinds: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        for kind in [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service",
            "PodMonitor",
            "ServiceMonitor",
            "PrometheusRule",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&kind), "no {kind} in:\n{rendered}");
        }
        for expected in [
            "- --mode=audit",
            "- --guard-cgroup=/kubepods\n",
            "- --pod-attachment=tc",
            "kubernetes.io/arch: arm64",
            "grafana_dashboard: \"1\"",
        ] {
            assert!(
                rendered.contains(expected),
                "no {expected:?} in:\n{rendered}"
            );
        }

        // Strict: unknown fields are errors. kubernetes-validate has no schemas for
        // prometheus-operator's kinds (it warns "Couldn't find schema"): those are
        // checked below against the rule file instead.
        let file =
            std::env::temp_dir().join(format!("stagewall-chart-{}.yaml", std::process::id()));
        std::fs::write(&file, &rendered).unwrap();
        let validate = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.37.2"])
            .arg(&file)
            .output();
        std::fs::remove_file(&file).unwrap();
        match validate {
            Err(e) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "kubernetes-validate: {e} (cargo xtask setup installs it)"
                );
                println!("SKIPPED: kubernetes-validate: {e} (cargo xtask setup installs it)");
            }
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{said}");
                assert!(!said.contains("ERROR"), "{said}");
                let unvalidated: Vec<&str> = said
                    .lines()
                    .filter(|l| l.contains("Couldn't find schema"))
                    .collect();
                assert_eq!(unvalidated.len(), 3, "{said}");
                assert!(
                    unvalidated
                        .iter()
                        .all(|l| l.contains("monitoring.coreos.com/v1")),
                    "{said}"
                );
                let passed = said.lines().filter(|l| l.contains("passed")).count();
                assert!(passed >= 10, "{said}");
            }
        }

        // The PrometheusRule holds the rule file itself, every alert of it (the links to
        // the runbooks with the address EVERYTHING gives: see
        // the_alerts_link_to_the_runbooks_at_the_address_given).
        let rules = std::fs::read_to_string(
            crate::workspace_root().join("deploy/prometheus/stagewall-rules.yaml"),
        )
        .unwrap();
        let rendered_rule = rendered
            .split("\n---\n")
            .find(|d| d.contains("kind: PrometheusRule"))
            .unwrap();
        for line in rules
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("runbook_url: "))
        {
            assert!(
                rendered_rule.contains(&format!("  {line}")),
                "{line:?} of the rule file is not in the PrometheusRule:\n{rendered_rule}"
            );
        }
    }

    /// The operator's runbook address replaces the placeholder in every alert's link,
    /// keeping each alert's anchor (docs/runbooks.md has a section per alert).
    #[test]
    fn the_alerts_link_to_the_runbooks_at_the_address_given() {
        if !helm_built() {
            return;
        }
        let base = "https://wiki.example.com/ml-platform/stagewall-runbooks";
        let rendered = template("stagewall-system", &EVERYTHING).unwrap();
        let links: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
            .map(|l| l.trim_matches('"'))
            .collect();
        let rules = std::fs::read_to_string(
            crate::workspace_root().join("deploy/prometheus/stagewall-rules.yaml"),
        )
        .unwrap();
        let alerts: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .collect();
        assert!(alerts.len() >= 6, "{alerts:?}");
        assert_eq!(links.len(), alerts.len(), "{links:?}");
        for (link, alert) in links.iter().zip(&alerts) {
            assert_eq!(*link, format!("{base}#{}", alert.to_lowercase()));
        }
        // A value that is no http(s) address is refused by the schema, by name.
        let refused = template(
            "stagewall-system",
            &["metrics.prometheusRule.runbookBaseUrl=wiki/runbooks"],
        )
        .unwrap_err();
        assert!(
            format!("{refused:#}").contains("runbookBaseUrl"),
            "{refused:#}"
        );
    }

    /// The image tag every manifest runs is the crate version (one version: the
    /// workspace's), so a release bump cannot leave the chart or the uninstall job on the
    /// old image; `cargo xtask image` names its image with the same version.
    #[test]
    fn the_chart_and_the_manifests_run_the_crate_versions_image() {
        let version = env!("CARGO_PKG_VERSION");
        let root = crate::workspace_root();
        let chart = std::fs::read_to_string(root.join(CHART).join("Chart.yaml")).unwrap();
        assert!(
            chart
                .lines()
                .any(|l| l == format!("appVersion: \"{version}\"")),
            "{CHART}/Chart.yaml appVersion is not {version}:\n{chart}"
        );
        let images = |file: &str| -> Vec<String> {
            std::fs::read_to_string(root.join(file))
                .unwrap()
                .lines()
                .filter_map(|l| l.trim().strip_prefix("image: "))
                .map(|i| i.trim_matches('"').to_string())
                .collect()
        };
        for file in [
            "deploy/kubernetes/daemonset.yaml",
            "deploy/kubernetes/uninstall/daemonset.yaml",
        ] {
            let found = images(file);
            assert!(!found.is_empty(), "{file} runs no image");
            for image in found {
                assert_eq!(image, format!("stagewall:{version}"), "{file}");
            }
        }
    }

    #[test]
    fn values_outside_the_schema_are_refused_with_their_name() {
        if !helm_built() {
            return;
        }
        for (value, named) in [
            ("mode=block", "mode"),
            ("cgroupDriver=runc", "cgroupDriver"),
            ("podAttachment=xdp", "podAttachment"),
            ("metrics.port=70000", "port"),
            ("metrics.podMonitr.enabled=true", "podMonitr"),
        ] {
            let err = template(NAMESPACE, &[value]).unwrap_err().to_string();
            assert!(err.contains(named), "{value}: {err}");
        }
    }

    #[test]
    fn documents_split_by_their_template() {
        let rendered = "---\n# Source: stagewall/crds/crds.yaml\n# two kinds\nkind: A\n---\nkind: B\n---\n# Source: stagewall/templates/rbac.yaml\nkind: C\n";
        let files = split_by_source(rendered).unwrap();
        assert_eq!(
            files["crds.yaml"],
            format!("{RENDERED_HEADER}# two kinds\nkind: A\n---\nkind: B\n")
        );
        assert_eq!(files["rbac.yaml"], format!("{RENDERED_HEADER}kind: C\n"));
        assert!(split_by_source("kind: A\n").is_err());
    }
}
