//! The packet-socket guard: one program on the kernel's `socket_create` LSM hook, for the
//! whole node, that refuses packet (AF_PACKET) and XDP sockets to isolated and quarantined
//! workloads. Frames sent through those sockets never meet a cgroup hook; TC on a pod's
//! veth backstops a pod, but nothing else sees a workload in the node's network namespace
//! or a pod whose veth the agent does not know.
//!
//! It needs BPF LSM: a kernel built with CONFIG_BPF_LSM and booted with `bpf` among its
//! `lsm=` modules. A kernel without it may still load and attach the program and then never
//! run it, so the agent checks: it creates a packet socket of its own and sees the
//! program's counter go up. Without BPF LSM the agent enforces everything else and says
//! what is not guarded (log, `stagewall_packet_socket_guard` 0).
//!
//! The link is pinned (under the layout's directory, beside the maps) so the guard stays
//! while the agent is down. A tracing link cannot take a new program, so a restarted agent
//! attaches its own first and then puts its pin in place of the old one (a rename on
//! bpffs), which detaches the old: the hook never runs without a guard meanwhile.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Btf, Ebpf,
    programs::{Lsm, links::FdLink},
};

use crate::datapath::{
    error::{DatapathError, PathAction},
    object::{PROG_PACKET_SOCKET_GUARD, program},
    pins::Pins,
    stats::{Counter, KernelStats},
};

/// The LSM hook the guard runs on.
const HOOK: &str = "socket_create";

/// Loads and attaches the guard, and tells whether the kernel runs it. Never an error for
/// the agent: without the guard it enforces everything else.
pub(super) fn guard(ebpf: &mut Ebpf, pins: &Pins, stats: &KernelStats) -> bool {
    let pin = pins.node_link(PROG_PACKET_SOCKET_GUARD);
    let attached = attach(ebpf, &pin);
    // Asked either way: a guard an earlier agent pinned (same map layout) may still run
    // where this one could not be attached.
    match (attached, kernel_runs_it(stats)) {
        (Ok(()), true) => {
            log::info!(
                "packet-socket guard on: isolated workloads may not open AF_PACKET or AF_XDP sockets"
            );
            true
        }
        (Err(e), true) => {
            log::warn!(
                "packet-socket guard on, the one pinned earlier: this agent's could not be attached: {}",
                crate::policy::error::Chain(&e)
            );
            true
        }
        (Ok(()), false) => {
            not_guarded(
                "the kernel does not run BPF LSM programs (add bpf to the lsm= boot parameter)",
            );
            let _ = std::fs::remove_file(&pin);
            false
        }
        (Err(e), false) => {
            not_guarded(&crate::policy::error::Chain(&e).to_string());
            false
        }
    }
}

fn not_guarded(why: &str) {
    log::warn!(
        "packet-socket guard off: {why}. Isolated workloads with CAP_NET_RAW can send frames through AF_PACKET or AF_XDP sockets past the cgroup hooks, except pods whose veth TC backstops; drop CAP_NET_RAW from them (see README, Security)"
    );
}

fn attach(ebpf: &mut Ebpf, pin: &Path) -> Result<(), DatapathError> {
    let name = PROG_PACKET_SOCKET_GUARD;
    let btf = Btf::from_sys_fs().map_err(|source| DatapathError::Btf { source })?;
    let prog = program::<Lsm>(ebpf, name)?;
    prog.load(HOOK, &btf)
        .map_err(|source| DatapathError::LoadProgram {
            program: name,
            source,
        })?;
    let id = prog.attach().map_err(|source| DatapathError::Attach {
        program: name,
        target: format!("the {HOOK} LSM hook"),
        source,
    })?;
    let link = FdLink::from(prog.take_link(id)?);
    // Pinned beside the old pin, then renamed over it: the old link is detached only
    // once the new one runs.
    let fresh = pin.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    link.pin(&fresh).map_err(|source| DatapathError::Pin {
        path: fresh.clone(),
        source,
    })?;
    std::fs::rename(&fresh, pin).map_err(|e| {
        // Unpinned, the new link goes with the agent's descriptor: one guard, the old.
        let _ = std::fs::remove_file(&fresh);
        DatapathError::path(PathAction::Creating, pin)(e)
    })?;
    Ok(())
}

/// Creates a packet socket and looks for the guard's count of it. The socket needs no
/// capability to be counted: the LSM hook runs before the packet family checks any.
fn kernel_runs_it(stats: &KernelStats) -> bool {
    let before = stats.counter(Counter::PacketSockets);
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: a new descriptor nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // The program ran within socket(2), before it returned: its count (summed over the
    // CPUs) is there already.
    stats.counter(Counter::PacketSockets) > before
}
