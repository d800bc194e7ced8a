//! A pod's cgroup on this node, found by the pod's UID in the cgroup2 tree. Kubelet names
//! pod cgroups after the UID, one way per cgroup driver:
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//!   with the UID's dashes as underscores;
//! - cgroupfs: `/kubepods/burstable/pod<uid>`;
//!
//! with `besteffort` for BestEffort pods and the pod directly below the top for
//! Guaranteed ones. The containers' cgroups sit below the pod's, which the kernel
//! programs cover (they walk up to the nearest workload).

use std::{collections::HashMap, fs, path::Path};

use crate::datapath::host::cgroup_dir;

/// The cgroup driver's top directories, as kubelet creates them.
const SYSTEMD_TOP: &str = "kubepods.slice";
const CGROUPFS_TOP: &str = "kubepods";
/// Levels below the top where pod cgroups are (QoS class, then pod).
const MAX_DEPTH: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// Pod UIDs to their cgroups (paths below the cgroup2 mount, as policies name cgroups).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodCgroups {
    by_uid: HashMap<String, String>,
    /// The driver whose top directory exists (systemd when both or neither do).
    pub driver: Option<Driver>,
}

impl PodCgroups {
    /// Scans the pod cgroups below `base` (a directory of the cgroup2 mount, given as a
    /// path below it: `/` on a node) of the cgroup2 mount at `mount`.
    pub fn scan(mount: &Path, base: &str) -> PodCgroups {
        let mut found = PodCgroups::default();
        let base = base.trim_end_matches('/');
        for (top, driver) in [
            (SYSTEMD_TOP, Driver::Systemd),
            (CGROUPFS_TOP, Driver::Cgroupfs),
        ] {
            let path = format!("{base}/{top}");
            let dir = cgroup_dir(mount, &path);
            if dir.is_dir() {
                found.driver.get_or_insert(driver);
                found.walk(&dir, &path, 0);
            }
        }
        found
    }

    fn walk(&mut self, dir: &Path, path: &str, depth: usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let child = format!("{path}/{name}");
            if let Some(uid) = pod_uid(&name) {
                self.by_uid.insert(uid, child);
            } else if depth + 1 < MAX_DEPTH {
                self.walk(&e.path(), &child, depth + 1);
            }
        }
    }

    /// Pod cgroups as given (UID, path), for tests of what is built from them.
    #[cfg(test)]
    pub fn of(found: &[(&str, &str)]) -> PodCgroups {
        PodCgroups {
            by_uid: found
                .iter()
                .map(|(uid, path)| (uid.to_string(), path.to_string()))
                .collect(),
            driver: Some(Driver::Cgroupfs),
        }
    }

    /// The cgroup of the pod with this UID, if it exists now.
    pub fn get(&self, uid: &str) -> Option<&str> {
        self.by_uid.get(uid).map(String::as_str)
    }

    /// Every pod's (UID, cgroup path).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_uid.iter().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Where kubelet will create the cgroup of a pod that has none yet, so that it is
    /// enforced the moment it appears: by the QoS class the API server gave the pod.
    pub fn expected(&self, base: &str, uid: &str, qos_class: Option<&str>) -> String {
        let base = base.trim_end_matches('/');
        let qos = match qos_class {
            Some("Guaranteed") => None,
            Some("BestEffort") => Some("besteffort"),
            _ => Some("burstable"),
        };
        match (self.driver.unwrap_or(Driver::Systemd), qos) {
            (Driver::Systemd, None) => {
                format!(
                    "{base}/{SYSTEMD_TOP}/kubepods-pod{}.slice",
                    uid.replace('-', "_")
                )
            }
            (Driver::Systemd, Some(q)) => format!(
                "{base}/{SYSTEMD_TOP}/kubepods-{q}.slice/kubepods-{q}-pod{}.slice",
                uid.replace('-', "_")
            ),
            (Driver::Cgroupfs, None) => format!("{base}/{CGROUPFS_TOP}/pod{uid}"),
            (Driver::Cgroupfs, Some(q)) => format!("{base}/{CGROUPFS_TOP}/{q}/pod{uid}"),
        }
    }
}

/// The pod UID a cgroup directory is named after, if it is a pod's.
fn pod_uid(name: &str) -> Option<String> {
    let raw = match name.strip_suffix(".slice") {
        // systemd: kubepods-<qos>-pod<uid>.slice or kubepods-pod<uid>.slice.
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => name.strip_prefix("pod")?.to_string(),
    };
    is_uid(&raw).then_some(raw)
}

/// A Kubernetes UID: a UUID in its 8-4-4-4-12 hex form.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const UID: &str = "2f0c9d36-6d7b-4f0e-9f3e-0c5a7d1b2e44";
    const UID2: &str = "a1b2c3d4-0000-1111-2222-333344445555";

    fn tree(name: &str, dirs: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("stagewall-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        root
    }

    #[test]
    fn finds_pods_by_uid_with_the_systemd_driver() {
        let u = UID.replace('-', "_");
        let u2 = UID2.replace('-', "_");
        let root = tree(
            "systemd",
            &[
                &format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-abc.scope"
                ),
                &format!("kubepods.slice/kubepods-pod{u2}.slice"),
                "kubepods.slice/kubepods-besteffort.slice",
                "system.slice/containerd.service",
            ],
        );
        let found = PodCgroups::scan(&root, "/");
        assert_eq!(found.driver, Some(Driver::Systemd));
        assert_eq!(
            found.get(UID),
            Some(
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")
                    .as_str()
            )
        );
        assert_eq!(
            found.get(UID2),
            Some(format!("/kubepods.slice/kubepods-pod{u2}.slice").as_str())
        );
        assert_eq!(
            found.by_uid.len(),
            2,
            "containers and other slices are not pods"
        );
        assert_eq!(
            found.expected("/", UID2, Some("BestEffort")),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u2}.slice")
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn finds_pods_by_uid_with_the_cgroupfs_driver_below_a_base() {
        let root = tree(
            "cgroupfs",
            &[
                &format!("nodes/n1/kubepods/besteffort/pod{UID}/0123abcd"),
                &format!("nodes/n1/kubepods/pod{UID2}"),
                "nodes/n1/kubepods/burstable/not-a-pod",
            ],
        );
        let found = PodCgroups::scan(&root, "/nodes/n1");
        assert_eq!(found.driver, Some(Driver::Cgroupfs));
        assert_eq!(
            found.get(UID),
            Some(format!("/nodes/n1/kubepods/besteffort/pod{UID}").as_str())
        );
        assert_eq!(
            found.get(UID2),
            Some(format!("/nodes/n1/kubepods/pod{UID2}").as_str())
        );
        assert_eq!(
            found.expected("/nodes/n1", UID, Some("Guaranteed")),
            format!("/nodes/n1/kubepods/pod{UID}")
        );
        assert_eq!(
            found.expected("/nodes/n1", UID, None),
            format!("/nodes/n1/kubepods/burstable/pod{UID}")
        );
        assert!(cgroup_dir(&root, &found.expected("/nodes/n1", UID, Some("BestEffort"))).is_dir());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn only_uuids_are_pod_uids() {
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(pod_uid("podcast"), None);
        assert_eq!(pod_uid("kubepods-burstable.slice"), None);
        assert_eq!(pod_uid("kubepods-pod1234.slice"), None);
    }
}
