//! The real Kubernetes binaries for the integration tests: kube-apiserver,
//! kube-controller-manager, kube-scheduler, kube-proxy, kubelet and kubectl from
//! k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3, at the versions that
//! tests/cluster/go.mod pins; and the test node's container runtime from
//! tests/cluster/node/go.mod: containerd (with its runc shim and ctr), runc, the CNI
//! plugins bridge, host-local and loopback, and `ociimage`, which writes the local images
//! (see tests/cluster/README.md for how the modules are laid out); and helm from
//! tests/cluster/helm/go.mod, for the chart in deploy/helm (crate::helm).
//!
//! They are built from source with Go into target/cluster/bin/, once: again only when a
//! module's go.mod, go.sum or own Go code, or the build flags below, change (the stamp file
//! next to bin/ holds what the last successful build was built from). From nothing this
//! takes a while (see the README for times); a no-op takes well under a second.
//!
//! A smoke check that the binaries run (etcd and kube-apiserver on 127.0.0.1, kubectl
//! asking /readyz) is tests/cluster/smoke.sh; the README records its command lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

/// The Kubernetes module, relative to the workspace root.
const MODULE: &str = "tests/cluster";
/// The node runtime's module, relative to the workspace root.
const NODE_MODULE: &str = "tests/cluster/node";

/// The Kubernetes release that tests/cluster/go.mod pins; stamped into the binaries as
/// their version (`kubectl version`, the kubelet's node status, version skew checks).
const KUBERNETES_VERSION: &str = "v1.37.2";

/// The packages built, relative to the module; each binary is named after its last element.
const PACKAGES: [&str; 7] = [
    "./cmd/etcd",
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kube-proxy",
    "k8s.io/kubernetes/cmd/kubelet",
    "k8s.io/kubernetes/cmd/kubectl",
];

/// Build tags as Kubernetes' own release build sets them (hack/lib/golang.sh).
const TAGS: &str = "selinux,notest,grpcnotrace";

/// The node's runtime, built static (no C compiler): containerd as its release build
/// leaves out the snapshotters that need C libraries (the test node uses `native`), the
/// CNI plugins, and the image writer. Binaries named as [`PACKAGES`]'.
const NODE_PACKAGES: [&str; 8] = [
    "github.com/containerd/containerd/v2/cmd/containerd",
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
    "github.com/containerd/containerd/v2/cmd/ctr",
    "github.com/containernetworking/plugins/plugins/main/bridge",
    "github.com/containernetworking/plugins/plugins/ipam/host-local",
    "github.com/containernetworking/plugins/plugins/main/loopback",
    "github.com/containernetworking/plugins/plugins/main/ptp",
    "./cmd/ociimage",
];
const NODE_TAGS: &str = "no_btrfs,no_devmapper,no_zfs";

/// helm's module, relative to the workspace root: a module of its own, as the node's, so
/// that its Kubernetes client libraries never move the release above.
const HELM_MODULE: &str = "tests/cluster/helm";
/// The helm release that tests/cluster/helm/go.mod pins.
const HELM_VERSION: &str = "v3.22.0";
const HELM_PACKAGE: &str = "helm.sh/helm/v3/cmd/helm";

/// runc needs cgo (its nsenter is C); with libseccomp (Debian's libseccomp-dev, which
/// `cargo xtask setup` installs), because containerd gives every pod sandbox the runtime's
/// default seccomp profile and a runc without seccomp refuses any profile.
const RUNC_PACKAGE: &str = "github.com/opencontainers/runc";
const RUNC_TAGS: &str = "seccomp";

/// The binaries' directory: target/cluster/bin/ under the workspace root.
pub fn bin_dir() -> PathBuf {
    crate::workspace_root().join("target/cluster/bin")
}

/// prometheus-operator's CustomResourceDefinitions of the objects the chart can create
/// (PodMonitor, ServiceMonitor, PrometheusRule), so that the test cluster's API server
/// validates them as a cluster with the operator would. They are files of the operator's
/// Go module, taken with `go mod download` (checked against the checksum database and
/// against MONITORING_SUM here) into [`monitoring_crd_dir`].
const MONITORING_MODULE: &str = "github.com/prometheus-operator/prometheus-operator";
const MONITORING_VERSION: &str = "v0.94.0";
/// The module zip's checksum (go.sum's `h1:`), as `go mod download -json` says it.
const MONITORING_SUM: &str = "h1:VxMKzqr8Xqw5/QInNT7a3B5XInPnHqE7SD2UIdwKpRM=";
/// Where in the module the CRDs are, and which.
const MONITORING_CRD_PATH: &str = "example/prometheus-operator-crd";
pub const MONITORING_CRDS: [&str; 3] = [
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
];

/// target/cluster/crds/: the CRDs of [`MONITORING_CRDS`].
pub fn monitoring_crd_dir() -> PathBuf {
    bin_dir().with_file_name("crds")
}

/// Downloads the operator's module (the Go module cache keeps it) and copies its CRDs.
fn fetch_monitoring_crds(go: &Path) -> anyhow::Result<()> {
    let module = format!("{MONITORING_MODULE}@{MONITORING_VERSION}");
    println!("+ go mod download -json {module}");
    let out = Command::new(go)
        .args(["mod", "download", "-json", &module])
        // Outside any module: the download alone.
        .current_dir(std::env::temp_dir())
        .env("GOWORK", "off")
        .env("GO111MODULE", "on")
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    let said = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        said.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("\"{name}\": \"")))
            .map(|v| v.trim_end_matches(',').trim_end_matches('"').to_string())
    };
    if !out.status.success() || field("Error").is_some() {
        bail!(
            "downloading {module} for its CRDs failed: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sum = field("Sum").unwrap_or_default();
    if sum != MONITORING_SUM {
        bail!("{module} has checksum {sum:?}, expected {MONITORING_SUM}");
    }
    let dir = PathBuf::from(field("Dir").context("go mod download named no directory")?);
    let to = monitoring_crd_dir();
    std::fs::create_dir_all(&to).with_context(|| format!("{}", to.display()))?;
    for crd in MONITORING_CRDS {
        let from = dir.join(MONITORING_CRD_PATH).join(crd);
        // The module cache's files are read-only, and so were the copies.
        let _ = std::fs::remove_file(to.join(crd));
        std::fs::copy(&from, to.join(crd))
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The major and minor of [`KUBERNETES_VERSION`] ("1", "37").
fn kubernetes_major_minor() -> (&'static str, &'static str) {
    let mut parts = KUBERNETES_VERSION.trim_start_matches('v').split('.');
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

/// `-ldflags`: no symbol tables, and the version variables that Kubernetes' build scripts
/// set (hack/lib/version.sh) in both packages that hold them. Without them every binary
/// says v0.0.0-master, which kubectl and the kubelet compare against the apiserver's.
fn ldflags() -> String {
    let (major, minor) = kubernetes_major_minor();
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    for package in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        for (name, value) in [
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        ] {
            flags.push(format!("-X {package}.{name}={value}"));
        }
    }
    flags.join(" ")
}

/// helm's `-ldflags`, as its Makefile sets them: its version, and the Kubernetes version
/// that `helm template` and `helm lint` assume (.Capabilities.KubeVersion) set to the
/// test cluster's, so that the chart is rendered for the cluster the tests apply it to.
fn helm_ldflags() -> String {
    let (major, minor) = kubernetes_major_minor();
    let mut flags = vec![
        "-s".to_string(),
        "-w".to_string(),
        format!("-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"),
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean".to_string(),
    ];
    for package in [
        "helm.sh/helm/v3/pkg/lint/rules",
        "helm.sh/helm/v3/pkg/chartutil",
    ] {
        flags.push(format!("-X {package}.k8sVersionMajor={major}"));
        flags.push(format!("-X {package}.k8sVersionMinor={minor}"));
    }
    flags.join(" ")
}

/// One `go build`: a module, whether it needs cgo, its tags, flags and packages.
struct GoBuild {
    module: &'static str,
    cgo: bool,
    args: Vec<String>,
}

/// The `go build` arguments for `packages` into `bin`.
fn build_args(bin: &Path, tags: &str, ldflags: &str, packages: &[&str]) -> Vec<String> {
    let mut args = vec![
        "build".to_string(),
        "-trimpath".to_string(),
        // No VCS stamp for the modules' own commands (this repository's commit; needs git).
        "-buildvcs=false".to_string(),
        format!("-tags={tags}"),
        format!("-ldflags={ldflags}"),
        // A trailing slash: `go build -o` writes one binary per package into the directory.
        "-o".to_string(),
        format!("{}/", bin.display()),
    ];
    args.extend(packages.iter().map(|p| p.to_string()));
    args
}

/// Every build, in order: Kubernetes and etcd, the node's static runtime, runc, helm.
fn builds(bin: &Path) -> Vec<GoBuild> {
    vec![
        GoBuild {
            module: MODULE,
            cgo: false,
            args: build_args(bin, TAGS, &ldflags(), &PACKAGES),
        },
        GoBuild {
            module: NODE_MODULE,
            cgo: false,
            args: build_args(bin, NODE_TAGS, "-s -w", &NODE_PACKAGES),
        },
        GoBuild {
            module: NODE_MODULE,
            cgo: true,
            args: build_args(bin, RUNC_TAGS, "-s -w", &[RUNC_PACKAGE]),
        },
        GoBuild {
            module: HELM_MODULE,
            cgo: false,
            args: build_args(bin, "", &helm_ldflags(), &[HELM_PACKAGE]),
        },
    ]
}

/// Every binary the builds make.
fn binaries() -> impl Iterator<Item = &'static str> {
    PACKAGES
        .iter()
        .chain(&NODE_PACKAGES)
        .chain(&[RUNC_PACKAGE, HELM_PACKAGE])
        .map(|p| binary_name(p))
}

/// The Go command: `go` on PATH, else the official tarball's place.
fn go() -> anyhow::Result<(PathBuf, String)> {
    for go in [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")] {
        if let Ok(out) = Command::new(&go).arg("version").output()
            && out.status.success()
        {
            return Ok((go, String::from_utf8_lossy(&out.stdout).trim().to_string()));
        }
    }
    bail!(
        "Go is needed to build the Kubernetes test binaries ({MODULE}/go.mod; Go 1.26 or \
         newer) and neither `go` on PATH nor /usr/local/go/bin/go runs: install Go \
         and run `cargo xtask cluster-build` again"
    )
}

/// What the binaries are built from: the stamp's contents.
fn inputs(root: &Path, builds: &[GoBuild]) -> anyhow::Result<String> {
    let mut stamp = format!("CRDs of {MONITORING_MODULE}@{MONITORING_VERSION} {MONITORING_SUM}\n");
    for build in builds {
        stamp.push_str(&format!(
            "(cd {} && CGO_ENABLED={} go {})\n",
            build.module,
            u8::from(build.cgo),
            build.args.join(" ")
        ));
    }
    for file in [
        "go.mod",
        "go.sum",
        "cmd/etcd/main.go",
        "node/go.mod",
        "node/go.sum",
        "node/cmd/ociimage/main.go",
        "helm/go.mod",
        "helm/go.sum",
    ] {
        let path = root.join(MODULE).join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        stamp.push_str(&format!("--- {file}\n{text}"));
    }
    Ok(stamp)
}

fn binary_name(package: &str) -> &str {
    package.rsplit('/').next().unwrap_or(package)
}

/// Builds the binaries into target/cluster/bin/ unless they are there and were built from
/// the current pins; returns that directory.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let bin = bin_dir();
    let stamp_path = bin.with_file_name("stamp");
    let builds = builds(&bin);
    let wanted = inputs(&root, &builds)?;
    let complete = binaries().all(|b| bin.join(b).is_file())
        && MONITORING_CRDS
            .iter()
            .all(|c| monitoring_crd_dir().join(c).is_file());
    if complete && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == wanted) {
        println!(
            "Kubernetes {KUBERNETES_VERSION} binaries and the node runtime up to date in {}",
            bin.display()
        );
        return Ok(bin);
    }

    let (go, version) = go()?;
    println!(
        "Building Kubernetes {KUBERNETES_VERSION}, etcd and the node runtime into {} with \
         {version} (from nothing this downloads the modules and compiles for a long while)",
        bin.display()
    );
    // Removed first, so that a build that fails half way is redone next time.
    match std::fs::remove_file(&stamp_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("{}", stamp_path.display()));
        }
        _ => {}
    }
    std::fs::create_dir_all(&bin).with_context(|| format!("{}", bin.display()))?;
    let started = Instant::now();
    for build in &builds {
        // Printed as a shell would take it (the -ldflags value quoted).
        let shown: Vec<String> = build
            .args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((flag, value)) if value.contains(' ') => format!("{flag}='{value}'"),
                _ => a.clone(),
            })
            .collect();
        println!(
            "+ (cd {} && CGO_ENABLED={} GOWORK=off {} {})",
            build.module,
            u8::from(build.cgo),
            go.display(),
            shown.join(" ")
        );
        let status = Command::new(&go)
            .args(&build.args)
            .current_dir(root.join(build.module))
            // Static binaries, as Kubernetes builds its servers, but for runc.
            .env("CGO_ENABLED", if build.cgo { "1" } else { "0" })
            // This module alone, whatever go.work lies above it. go.mod and go.sum are used
            // as committed (go build's default -mod=readonly: a missing checksum is an error).
            .env("GOWORK", "off")
            .status()
            .with_context(|| format!("running {}", go.display()))?;
        if !status.success() {
            bail!(
                "building the test cluster's binaries failed after {:.0?} ({status}); the \
                 command is printed above, run from {}",
                started.elapsed(),
                build.module
            );
        }
    }
    fetch_monitoring_crds(&go)?;
    let took = started.elapsed();
    std::fs::write(&stamp_path, wanted).with_context(|| format!("{}", stamp_path.display()))?;
    println!(
        "Built Kubernetes {KUBERNETES_VERSION} and the node runtime in {:.0?} into {}",
        took,
        bin.display()
    );
    Ok(bin)
}

/// `go vet` over the modules' own Go code (the etcd main, the image writer), as clippy
/// lints the Rust.
pub fn vet() -> anyhow::Result<()> {
    let (go, _) = go()?;
    for module in [MODULE, NODE_MODULE] {
        println!("+ (cd {module} && go vet ./...)");
        let status = Command::new(&go)
            .args(["vet", "./..."])
            .current_dir(crate::workspace_root().join(module))
            .env("GOWORK", "off")
            .env("CGO_ENABLED", "0")
            .status()
            .context("running go vet")?;
        if !status.success() {
            bail!("go vet ./... in {module} failed: {status}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flags_name_the_release() {
        let flags = ldflags();
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.37.2"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMajor=1"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMinor=37"));
    }

    #[test]
    fn the_pinned_release_is_the_one_go_mod_requires() {
        let go_mod = std::fs::read_to_string(crate::workspace_root().join(MODULE).join("go.mod"))
            .expect("tests/cluster/go.mod");
        assert!(
            go_mod
                .lines()
                .any(|l| l.trim() == format!("k8s.io/kubernetes {KUBERNETES_VERSION}")),
            "KUBERNETES_VERSION and tests/cluster/go.mod disagree"
        );
        let staging = KUBERNETES_VERSION.replacen("v1.", "v0.", 1);
        for line in go_mod.lines().filter(|l| l.contains("=> k8s.io/")) {
            assert!(line.trim_end().ends_with(&staging), "{line}");
        }
    }

    #[test]
    fn binaries_are_named_after_their_package() {
        let names: Vec<&str> = PACKAGES.iter().map(|p| binary_name(p)).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "kubelet",
                "kubectl"
            ]
        );
        assert!(binaries().any(|b| b == "runc"));
        assert!(binaries().any(|b| b == "containerd-shim-runc-v2"));
        assert!(binaries().any(|b| b == "ociimage"));
        assert!(binaries().any(|b| b == "helm"));
    }

    #[test]
    fn helm_is_the_pinned_release_and_renders_for_the_test_cluster() {
        let go_mod =
            std::fs::read_to_string(crate::workspace_root().join(HELM_MODULE).join("go.mod"))
                .expect("tests/cluster/helm/go.mod");
        assert!(
            go_mod
                .lines()
                .any(|l| l.trim() == format!("require helm.sh/helm/v3 {HELM_VERSION}")),
            "HELM_VERSION and tests/cluster/helm/go.mod disagree"
        );
        let flags = helm_ldflags();
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"));
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"));
    }
}
