//! Attaching the loaded programs to workloads: a cgroup gets the cgroup_skb and sock_addr
//! programs as bpf links, an interface the TC programs through tcx (kernel 6.6+) or
//! clsact. Links are pinned (see pins.rs) so that enforcement goes on while the agent is
//! down; a restarted agent swaps its programs into the pinned links.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier,
        TcAttachType,
        links::FdLink,
        tc::{self, SchedClassifierLink},
    },
};

use crate::{
    datapath::{
        error::{DatapathError, PathAction},
        host::Target,
        inspect::TcMode,
        object::{
            PROG_CGROUP_EGRESS, PROG_CGROUP_INGRESS, PROG_SOCK_ADDR, PROG_TC_FROM_WORKLOAD,
            PROG_TC_TO_WORKLOAD, program,
        },
        pins::{self, Pins},
    },
    policy::error::Chain,
};

/// Links of one attached workload, to detach it when it leaves the policy: pinned (the
/// pin holds the link), or, for TC through clsact on kernels before 6.6 (netlink filters,
/// which cannot be pinned), held by the agent and detached when it exits.
#[derive(Default)]
struct Links {
    pinned: Vec<PathBuf>,
    unpinned: Vec<SchedClassifierLink>,
}

/// The loaded programs and the workloads (cgroups, interfaces) they are attached to.
pub(super) struct Attachments {
    /// The object the programs were loaded from; it keeps them loaded.
    ebpf: Ebpf,
    pins: Pins,
    links: BTreeMap<Target, Links>,
    /// Pin directories of other map layouts, removed once this agent enforces.
    other_layouts: Vec<PathBuf>,
}

impl Attachments {
    pub fn new(ebpf: Ebpf, pins: Pins, other_layouts: Vec<PathBuf>) -> Attachments {
        Attachments {
            ebpf,
            pins,
            links: BTreeMap::new(),
            other_layouts,
        }
    }

    /// How many cgroups and interfaces the programs are attached to.
    pub fn attached(&self) -> (usize, usize) {
        let cgroups = self
            .links
            .keys()
            .filter(|t| matches!(t, Target::Cgroup { .. }))
            .count();
        (cgroups, self.links.len() - cgroups)
    }

    pub fn is_attached(&self, target: &Target) -> bool {
        self.links.contains_key(target)
    }

    /// Attaches the programs for `target`: the cgroup programs to a cgroup, the TC
    /// programs to an interface.
    pub fn attach(&mut self, target: &Target) -> Result<(), DatapathError> {
        let links = match target {
            Target::Cgroup { dir, .. } => self.attach_cgroup(target, dir)?,
            Target::Interface { name, .. } => self.attach_interface(target, name)?,
        };
        self.links.insert(target.clone(), links);
        Ok(())
    }

    fn attach_cgroup(&mut self, target: &Target, dir: &Path) -> Result<Links, DatapathError> {
        let mut links = Links::default();
        let cgroup = File::open(dir).map_err(DatapathError::path(PathAction::Opening, dir))?;
        // Attached as bpf links (kernel 5.7+): links always run beside other programs on
        // the same cgroup (systemd's, another agent's) and take no attach flags;
        // BPF_F_ALLOW_MULTI here is EINVAL.
        let mode = CgroupAttachMode::Single;
        for (name, attach_type) in [
            (PROG_CGROUP_INGRESS, CgroupSkbAttachType::Ingress),
            (PROG_CGROUP_EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let pin = self.pins.link(target, name);
            let prog = program::<CgroupSkb>(&mut self.ebpf, name)?;
            let fd = prog.fd()?.try_clone()?;
            pinned_link(&pin, fd.as_fd(), || {
                let id = prog
                    .attach(&cgroup, attach_type, mode)
                    .map_err(attaching(name, dir.display()))?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            })?;
            links.pinned.push(pin);
        }
        for name in PROG_SOCK_ADDR {
            let pin = self.pins.link(target, name);
            let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            let fd = prog.fd()?.try_clone()?;
            pinned_link(&pin, fd.as_fd(), || {
                let id = prog
                    .attach(&cgroup, mode)
                    .map_err(attaching(name, dir.display()))?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            })?;
            links.pinned.push(pin);
        }
        log::info!("attached to cgroup {}", dir.display());
        Ok(links)
    }

    fn attach_interface(
        &mut self,
        target: &Target,
        interface: &str,
    ) -> Result<Links, DatapathError> {
        let mut links = Links::default();
        // tcx (kernel 6.6+) needs no qdisc; older kernels attach through clsact, netlink
        // filters that cannot be pinned.
        let clsact = TcMode::of_running_kernel() == TcMode::Clsact;
        if clsact {
            if let Err(e) = tc::qdisc_add_clsact(interface) {
                log::debug!("clsact on {interface}: {e}");
            }
            log::warn!(
                "{interface}: TC through clsact (kernel before 6.6) cannot be pinned; it is detached when the agent exits"
            );
        }
        for (prog_name, attach_type) in [
            (PROG_TC_FROM_WORKLOAD, TcAttachType::Ingress),
            (PROG_TC_TO_WORKLOAD, TcAttachType::Egress),
        ] {
            let prog = program::<SchedClassifier>(&mut self.ebpf, prog_name)?;
            let pin = self.pins.link(target, prog_name);
            let fd = prog.fd()?.try_clone()?;
            let mut attach = || {
                let id = prog
                    .attach(interface, attach_type)
                    .map_err(attaching(prog_name, interface))?;
                Ok::<_, DatapathError>(prog.take_link(id)?)
            };
            if clsact {
                links.unpinned.push(attach()?);
            } else {
                pinned_link(&pin, fd.as_fd(), || Ok(FdLink::try_from(attach()?)?))?;
                links.pinned.push(pin);
            }
        }
        log::info!("attached to interface {interface}");
        Ok(links)
    }

    /// Detaches every target not in `keep` (its workload left the policy or the host).
    pub fn detach_all_but(&mut self, keep: &BTreeSet<&Target>) {
        let gone: Vec<Target> = self
            .links
            .keys()
            .filter(|t| !keep.contains(t))
            .cloned()
            .collect();
        for target in gone {
            if let Some(links) = self.links.remove(&target)
                && let Err(e) = detach(links)
            {
                log::warn!("detaching from {target:?}: {}", Chain(&e));
            }
        }
    }

    /// Once this agent enforces: removes links pinned by an earlier agent for workloads
    /// that are gone, and the pins of other map layouts (an upgrade's old programs, which
    /// ran beside the new ones until now).
    pub fn remove_stale_pins(&mut self) {
        let keep: BTreeSet<&PathBuf> = self.links.values().flat_map(|l| &l.pinned).collect();
        for pin in self.pins.links() {
            if !keep.contains(&pin) {
                log::info!("detaching {} (its workload is gone)", pin.display());
                if let Err(e) = std::fs::remove_file(&pin) {
                    log::warn!("removing {}: {e}", pin.display());
                }
            }
        }
        for dir in std::mem::take(&mut self.other_layouts) {
            match pins::remove_all(&dir) {
                Ok(()) => log::warn!(
                    "migrated: removed the pins of another map layout, {}",
                    dir.display()
                ),
                Err(e) => log::error!("removing {}: {e}", dir.display()),
            }
        }
    }
}

/// Unpins a workload's links, which detaches them.
fn detach(links: Links) -> Result<(), DatapathError> {
    for pin in &links.pinned {
        std::fs::remove_file(pin).map_err(DatapathError::path(PathAction::Removing, pin))?;
    }
    drop(links.unpinned);
    Ok(())
}

/// Makes `pin` hold `program`'s link: swaps the program into the link pinned there, if
/// there is one (a restarted or upgraded agent takes over without a moment of the hook
/// running no program), else attaches it anew with `attach` and pins the link.
fn pinned_link(
    pin: &Path,
    program: BorrowedFd<'_>,
    attach: impl FnOnce() -> Result<FdLink, DatapathError>,
) -> Result<(), DatapathError> {
    if pin.exists() {
        match pins::update_link(pin, program) {
            Ok(()) => return Ok(()),
            // A link whose cgroup or interface went away cannot take a program.
            Err(e) => {
                log::warn!(
                    "{}: cannot replace its program ({e}); attaching anew",
                    pin.display()
                );
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    match attach()?.pin(pin) {
        Ok(_) => Ok(()),
        Err(source) => Err(DatapathError::Pin {
            path: pin.to_path_buf(),
            source,
        }),
    }
}

/// The error of attaching `program` to `target` (a cgroup directory, an interface).
fn attaching(
    program: &'static str,
    target: impl std::fmt::Display,
) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Attach {
        program,
        target: target.to_string(),
        source,
    }
}
