//! Services at the socket. A connect() or sendmsg() to a Service's virtual address and
//! port goes to one of its backends instead, drawn at random: the address is rewritten
//! before the verdict, so policy judges the pod the call reaches (as Kubernetes says it
//! must), the packet hooks and kube-proxy see only the pod's address, and no packet pays
//! for the translation. recvmsg() and getpeername() turn the backend back into the
//! Service's address, as the application expects (a DNS resolver drops an answer from an
//! address it did not ask).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie};
use stagewall_common::{Config, ServiceBackend, ServiceKey, ServiceNat, ServiceNatKey};

use crate::maps::{SERVICE_NAT, SERVICES};

/// A backend of the frontend (family, protocol, address, port) in the slot in force, if
/// it is one.
#[inline(always)]
pub fn pick(
    cfg: &Config,
    family: u8,
    protocol: u8,
    addr: &[u8; 16],
    port: u16,
) -> Option<&'static ServiceBackend> {
    let mut key = ServiceKey {
        slot: cfg.active_slot as u8,
        family,
        protocol,
        _pad: 0,
        port,
        backend: 0,
        addr: *addr,
    };
    let first = unsafe { SERVICES.get(key) }?;
    if first.backends <= 1 {
        return Some(first);
    }
    let drawn = unsafe { bpf_get_prandom_u32() } % first.backends as u32;
    if drawn == 0 {
        return Some(first);
    }
    key.backend = drawn as u16;
    unsafe { SERVICES.get(key) }
}

/// The socket's cookie, which keys its translations.
#[inline(always)]
pub fn cookie(ctx: *mut core::ffi::c_void) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx) }
}

/// Remembers that the socket `cookie` called the Service at `frontend`:`port` and went to
/// `backend`. A full map evicts the least recently used translation (a long-idle socket's
/// replies then show the backend's address).
#[inline(always)]
pub fn remember(cookie: u64, family: u8, backend: &ServiceBackend, frontend: &[u8; 16], port: u16) {
    let key = ServiceNatKey {
        cookie,
        family,
        _pad: 0,
        port: backend.port,
        _pad2: 0,
        addr: backend.addr,
    };
    let value = ServiceNat {
        addr: *frontend,
        port,
        _pad: 0,
        service: backend.service,
    };
    let _ = SERVICE_NAT.insert(key, value, 0);
}

/// The Service address the socket `cookie` called, if `addr`:`port` is a backend it was
/// sent to.
#[inline(always)]
pub fn called(cookie: u64, family: u8, addr: &[u8; 16], port: u16) -> Option<&'static ServiceNat> {
    let key = ServiceNatKey {
        cookie,
        family,
        _pad: 0,
        port,
        _pad2: 0,
        addr: *addr,
    };
    unsafe { SERVICE_NAT.get(key) }
}
