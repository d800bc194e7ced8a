//! stagewall's kernel programs. Each entry point finds the local endpoint, turns the packet
//! into a `Flow` seen from that endpoint, and asks `verdict::decide`.
//!
//! Hooks and directions:
//! - cgroup_skb ingress/egress: the socket's cgroup is the workload;
//! - cgroup/connect4|6, sendmsg4|6: the same check before a connect or unconnected UDP send,
//!   so a denied egress fails at once with EPERM instead of hanging on retransmits; a call
//!   to a Service's address goes to one of its backends first (service.rs), and
//!   recvmsg4|6 and getpeername4|6 show the Service's address again;
//! - TC (tcx or clsact) on the host side of a workload's veth: what the host side receives
//!   (tc ingress) is the workload's egress, what it sends (tc egress) is its ingress;
//! - lsm/socket_create (where the kernel runs BPF LSM): an isolated or quarantined
//!   workload may not create a packet (AF_PACKET) or XDP socket, whose frames no cgroup
//!   hook sees.
#![no_std]
#![no_main]

mod dns;
mod maps;
mod packet;
mod service;
mod sni;
mod verdict;

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_sock_addr},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, classifier, lsm},
    programs::{LsmContext, SkBuffContext, SockAddrContext, TcContext, sk_buff::SkBuff},
};
use aya_log_ebpf::debug;
use stagewall_common::{
    CNT_CONFIG_MISSING, CNT_PACKET_SOCKETS, Config, DIR_EGRESS, DIR_INGRESS, ENDPOINT_KIND_CGROUP,
    ENDPOINT_KIND_IFINDEX, EndpointInfo, EndpointKey, FAMILY_V4, FAMILY_V6, HOOK_CGROUP_SKB,
    HOOK_CONNECT, HOOK_SENDMSG, HOOK_TC, MAX_CGROUP_DEPTH, MODE_ENFORCE, PROTO_TCP, PROTO_UDP,
    SelfAddrKey, UNGUARDED_ENDPOINT_ID,
};

use crate::{
    maps::{ENDPOINTS, SELF_ADDRS, count},
    packet::{ETH_HLEN, FRAGMENT_FIRST, FRAGMENT_LATER, L3, Packet, Parsed},
    verdict::{Flow, Verdict, config, decide},
};

const CGROUP_PASS: i32 = 1;
const CGROUP_DROP: i32 = 0;
/// cgroup/connect and sendmsg: 1 lets the call proceed, 0 fails it with EPERM.
const SOCK_ALLOW: i32 = 1;
const SOCK_DENY: i32 = 0;

/// CONFIG is an array of one entry, which the kernel always finds (the verifier still
/// asks). Were it ever missing, nothing would say which slot is in force: the endpoint
/// (`find` looks it up under a configuration) is looked up in either slot, the miss is
/// counted, and the workload's fail mode alone decides (`verdict::without_config`).
fn without_config(
    direction: u8,
    find: impl Fn(&Config) -> Option<&'static EndpointInfo>,
) -> Verdict {
    count(CNT_CONFIG_MISSING);
    for active_slot in 0..2 {
        let cfg = Config {
            active_slot,
            mode: MODE_ENFORCE,
            generation: 0,
            log_allowed: 0,
        };
        if let Some(ep) = find(&cfg) {
            return verdict::without_config(ep, direction);
        }
    }
    Verdict::Pass
}

/// The endpoint `kind` (ENDPOINT_KIND_*) `id` of the slot in force.
fn lookup_endpoint(cfg: &Config, kind: u32, id: u64) -> Option<&'static EndpointInfo> {
    let key = EndpointKey {
        slot: cfg.active_slot,
        kind,
        id,
    };
    unsafe { ENDPOINTS.get(key) }
}

/// The workload whose cgroup holds `cgroup_id`, or the nearest of its ancestors that is
/// one (processes in child cgroups of a workload's cgroup, such as a systemd slice's
/// services, belong to it). A guard cgroup is an endpoint too, one that denies: below it,
/// a cgroup in no workload meets the guard, a workload's meets the workload first. An
/// unguarded cgroup below a guard (the node's own, a pod enforced by TC) is no endpoint
/// here: its traffic passes untouched, untracked and uncounted, as a cgroup under no
/// guard's does.
fn cgroup_endpoint(
    cfg: &Config,
    cgroup_id: u64,
    ancestor: impl Fn(i32) -> u64,
) -> Option<&'static EndpointInfo> {
    nearest_cgroup_endpoint(cfg, cgroup_id, ancestor)
        .filter(|ep| ep.endpoint_id != UNGUARDED_ENDPOINT_ID)
}

fn nearest_cgroup_endpoint(
    cfg: &Config,
    cgroup_id: u64,
    ancestor: impl Fn(i32) -> u64,
) -> Option<&'static EndpointInfo> {
    if let Some(ep) = lookup_endpoint(cfg, ENDPOINT_KIND_CGROUP, cgroup_id) {
        return Some(ep);
    }
    // Ancestors by level from the root down: the last match is the nearest.
    let mut nearest = None;
    for level in 1..MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 || id == cgroup_id {
            break;
        }
        if let Some(ep) = lookup_endpoint(cfg, ENDPOINT_KIND_CGROUP, id) {
            nearest = Some(ep);
        }
    }
    nearest
}

/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// A packet of a workload to itself, seen on a cgroup hook, is one on the loopback device:
/// it never leaves the workload's network namespace (or, for a workload in the node's, the
/// node). Not equal addresses in the header: anyone writing the header chooses those.
fn on_loopback(skb: &SkBuff) -> bool {
    // SAFETY: skb points at the program's context.
    (unsafe { read_volatile(&(*skb.skb).ifindex) }) == LOOPBACK_IFINDEX
}

fn flow_from_packet(p: &Packet, direction: u8, bytes: u32, self_traffic: bool) -> Flow {
    if direction == DIR_INGRESS {
        Flow {
            direction,
            family: p.family,
            protocol: p.protocol,
            local_addr: p.dst,
            remote_addr: p.src,
            local_port: p.dport,
            remote_port: p.sport,
            bytes,
            service: 0,
            self_traffic,
        }
    } else {
        Flow {
            direction,
            family: p.family,
            protocol: p.protocol,
            local_addr: p.src,
            remote_addr: p.dst,
            local_port: p.sport,
            remote_port: p.dport,
            bytes,
            service: 0,
            self_traffic,
        }
    }
}

/// The Flow is built here, in a frame of its own, rather than beside the parsed packet in
/// the entry point's: the verifier allows the whole call chain 512 bytes of stack (and a
/// BPF function five arguments, hence the configuration looked up again).
/// SNI: the copy for cgroup_skb egress, which runs the SNI check.
#[inline(never)]
fn decide_packet<const SNI: bool>(
    ep: &EndpointInfo,
    p: &Packet,
    skb: &SkBuff,
    direction: u8,
    hook: u8,
) -> Verdict {
    let Some(cfg) = config() else {
        return Verdict::Pass;
    };
    let bytes = skb.len();
    if p.icmp_error {
        // The packet the error is about went the other way.
        let about = flow_from_packet(p, verdict::opposite(direction), bytes, false);
        return verdict::icmp_error(cfg, ep, &about, hook);
    }
    // Only the cgroup hooks see a workload's loopback traffic; TC sees its interface.
    let self_traffic = hook == HOOK_CGROUP_SKB && on_loopback(skb);
    let flow = flow_from_packet(p, direction, bytes, self_traffic);
    if dns::proxy_traffic(ep, &flow) {
        return Verdict::Pass;
    }
    if p.fragment == FRAGMENT_LATER && verdict::fragment_allowed(ep, &flow, p.fragment_id, hook) {
        return Verdict::Pass;
    }
    // The SNI check (sni.rs): only in the copy for cgroup_skb egress (SNI), so that
    // nothing of it is kept across decide(), which the verifier would otherwise walk once
    // per value kept, and no frame grows (the call chain has 512 bytes of stack).
    if SNI && sni::refused(ep, &flow) {
        return verdict::sni_refused(cfg, ep, &flow);
    }
    let mut verdict = decide(cfg, ep, &flow, hook, true);
    if SNI && verdict == Verdict::Pass {
        verdict = sni::check(cfg, ep, &flow, skb);
    }
    if verdict == Verdict::Pass && p.fragment == FRAGMENT_FIRST {
        verdict::remember_fragments(ep, &flow, p.fragment_id);
    }
    verdict
}

fn skb_verdict(
    ctx: &impl EbpfContext,
    cfg: &Config,
    ep: &EndpointInfo,
    skb: &SkBuff,
    l3: L3,
    direction: u8,
    hook: u8,
) -> Verdict {
    let bytes = skb.len();
    // cgroup_skb data starts at the IP header, TC data at the Ethernet header.
    let offset = if hook == HOOK_TC { ETH_HLEN } else { 0 };
    let mut p = Packet::empty();
    match packet::parse(skb, l3, offset, &mut p) {
        Parsed::Ip if p.link_control => Verdict::Pass,
        // The constants tell the verifier which copy each program runs.
        Parsed::Ip if direction == DIR_EGRESS && hook == HOOK_CGROUP_SKB => {
            decide_packet::<true>(ep, &p, skb, direction, hook)
        }
        Parsed::Ip => decide_packet::<false>(ep, &p, skb, direction, hook),
        Parsed::Arp => verdict::arp(cfg, ep, direction, hook, bytes),
        Parsed::NotIp => verdict::not_ip(cfg, ep, direction, hook, bytes),
        Parsed::Malformed => {
            debug!(
                ctx,
                "stagewall: malformed packet, endpoint {}", ep.endpoint_id
            );
            verdict::malformed(cfg, ep, direction, hook, bytes)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup_skb

fn cgroup_skb_verdict(ctx: &SkBuffContext, direction: u8) -> i32 {
    let skb: &SkBuff = &ctx.skb;
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb.skb) };
    let ancestor = |level| unsafe { bpf_skb_ancestor_cgroup_id(skb.skb, level) };
    let verdict = match config() {
        Some(cfg) => match cgroup_endpoint(cfg, cgroup_id, ancestor) {
            Some(ep) => {
                let l3 = packet::l3_from_skb(skb);
                skb_verdict(ctx, cfg, ep, skb, l3, direction, HOOK_CGROUP_SKB)
            }
            None => Verdict::Pass,
        },
        None => without_config(direction, |cfg| cgroup_endpoint(cfg, cgroup_id, ancestor)),
    };
    match verdict {
        Verdict::Pass => CGROUP_PASS,
        Verdict::Drop => CGROUP_DROP,
    }
}

#[cgroup_skb(ingress)]
pub fn stagewall_cgroup_ingress(ctx: SkBuffContext) -> i32 {
    cgroup_skb_verdict(&ctx, DIR_INGRESS)
}

#[cgroup_skb(egress)]
pub fn stagewall_cgroup_egress(ctx: SkBuffContext) -> i32 {
    cgroup_skb_verdict(&ctx, DIR_EGRESS)
}

// ---------------------------------------------------------------------------------------------
// cgroup/connect4|6 and sendmsg4|6

/// The address a connect(), sendmsg(), recvmsg() or getpeername() names, read from the
/// context of a hook of `family`.
struct CallAddr {
    /// FAMILY_V4 also for an IPv4-mapped address on an IPv6 socket (`mapped`): the
    /// packets will be IPv4, and the hooks decide them as such.
    family: u8,
    mapped: bool,
    addr: [u8; 16],
    port: u16,
}

// The verifier accepts context fields only as loads and stores at a constant offset from
// the context pointer: each field is read and written on its own, volatile, so LLVM
// cannot fold them into one moved pointer.

fn read_call_addr(sa: *mut bpf_sock_addr, family: u8) -> CallAddr {
    let mut addr = [0u8; 16];
    let mut family = family;
    let mut mapped = false;
    if family == FAMILY_V4 {
        let ip4 = unsafe { read_volatile(&(*sa).user_ip4) };
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        for i in 0..4 {
            let word = unsafe { read_volatile(&(*sa).user_ip6[i]) };
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        if addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff] {
            family = FAMILY_V4;
            mapped = true;
            addr.copy_within(12..16, 0);
            addr[4..].fill(0);
        }
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(unsafe { read_volatile(&(*sa).user_port) } as u16);
    CallAddr {
        family,
        mapped,
        addr,
        port,
    }
}

/// Makes the call name `addr`:`port` instead (of the family `call` was read as, by a hook
/// of `hook_family`). The hook's family, a constant of each program, comes first: the
/// verifier then sees that an IPv4 hook never writes the IPv6 fields, which it refuses.
#[inline(always)]
fn write_call_addr(
    sa: *mut bpf_sock_addr,
    hook_family: u8,
    call: &CallAddr,
    addr: &[u8; 16],
    port: u16,
) {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    unsafe {
        if hook_family == FAMILY_V4 {
            write_volatile(&mut (*sa).user_ip4, word(0));
        } else if call.mapped {
            write_volatile(&mut (*sa).user_ip6[3], word(0));
        } else {
            write_volatile(&mut (*sa).user_ip6[0], word(0));
            write_volatile(&mut (*sa).user_ip6[1], word(4));
            write_volatile(&mut (*sa).user_ip6[2], word(8));
            write_volatile(&mut (*sa).user_ip6[3], word(12));
        }
        write_volatile(&mut (*sa).user_port, port.to_be() as u32);
    }
}

/// A call to a Service's address goes to one of its backends instead: the call is
/// rewritten, and `call` names the backend, which the verdict decides. Returns the
/// Service's number, 0 for a call to no Service. Not inlined: the lookups' keys leave the
/// stack before the verdict's call chain starts.
#[inline(never)]
fn translate(
    cfg: &Config,
    sa: *mut bpf_sock_addr,
    hook_family: u8,
    call: &mut CallAddr,
    protocol: u8,
) -> u32 {
    let Some(backend) = service::pick(cfg, call.family, protocol, &call.addr, call.port) else {
        return 0;
    };
    write_call_addr(sa, hook_family, call, &backend.addr, backend.port);
    let cookie = service::cookie(sa as *mut c_void);
    service::remember(cookie, call.family, backend, &call.addr, call.port);
    call.addr = backend.addr;
    call.port = backend.port;
    backend.service
}

fn sock_addr_verdict(ctx: &SockAddrContext, family: u8, hook: u8) -> i32 {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let ancestor = |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) };
    let Some(cfg) = config() else {
        return match without_config(DIR_EGRESS, |cfg| cgroup_endpoint(cfg, cgroup_id, ancestor)) {
            Verdict::Pass => SOCK_ALLOW,
            Verdict::Drop => SOCK_DENY,
        };
    };
    // Unguarded cgroups (a pod enforced by TC, the node's own) have their Service calls
    // translated too, and nothing decided: TC then sees the pod the call reaches.
    let Some(ep) = nearest_cgroup_endpoint(cfg, cgroup_id, ancestor) else {
        return SOCK_ALLOW;
    };
    let sa = ctx.sock_addr;
    let protocol = unsafe { read_volatile(&(*sa).protocol) } as u8;
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return SOCK_ALLOW;
    }
    let mut call = read_call_addr(sa, family);
    // connect() of a UDP socket to port 0 sends nothing: glibc's getaddrinfo does it to
    // every address an answer gave, to sort them by source address (RFC 6724), and a
    // denial would be a violation no one committed. A datagram sent on such a socket
    // later is decided by the packet hooks.
    if hook == HOOK_CONNECT && protocol == PROTO_UDP && call.port == 0 {
        return SOCK_ALLOW;
    }
    // A call to a resolver whose DNS goes through the agent's proxy: the verdict judges
    // the resolver named (or the Service's backend), and an allowed call goes to the
    // proxy, whose answers show the resolver's address.
    let proxy = dns::proxy_for(ep, call.family, protocol, &call.addr, call.port);
    if let Some(proxy) = proxy {
        dns::remember(
            service::cookie(sa as *mut c_void),
            proxy,
            &call.addr,
            call.port,
        );
    }
    let service = translate(cfg, sa, family, &mut call, protocol);
    let (remote_addr, remote_port) = (call.addr, call.port);
    if ep.endpoint_id == UNGUARDED_ENDPOINT_ID {
        return SOCK_ALLOW;
    }
    // The socket's own port (host order), when it is bound: a UDP server answering with
    // sendto() is replying within a flow its ingress allowed, and decide() must find it.
    let sk = unsafe { read_volatile(&(*sa).__bindgen_anon_1.sk) };
    let local_port = if sk.is_null() {
        0
    } else {
        (unsafe { read_volatile(&(*sk).src_port) }) as u16
    };
    // connect() or sendmsg() to a loopback address or the workload's own: its packets
    // will go over the loopback device, which the packet hooks pass as self traffic.
    let self_traffic = is_loopback_addr(call.family, &remote_addr)
        || is_own_addr(cfg, ep.endpoint_id, call.family, &remote_addr);
    let flow = Flow {
        direction: DIR_EGRESS,
        family: call.family,
        protocol,
        local_addr: [0; 16],
        remote_addr,
        local_port,
        remote_port,
        bytes: 0,
        service,
        self_traffic,
    };
    // An audited denial is reported by cgroup_skb, with the packets that follow;
    // reporting the connect too would count one would-drop twice.
    match decide(cfg, ep, &flow, hook, false) {
        Verdict::Pass => {
            if let Some(proxy) = proxy {
                write_call_addr(sa, family, &call, &proxy.addr, proxy.port);
            }
            SOCK_ALLOW
        }
        Verdict::Drop => SOCK_DENY,
    }
}

/// Is `addr` one of the workload's own? A function of its own: the key leaves the stack
/// before the verdict's call chain starts.
#[inline(never)]
fn is_own_addr(cfg: &Config, endpoint_id: u32, family: u8, addr: &[u8; 16]) -> bool {
    let own = SelfAddrKey {
        slot: cfg.active_slot,
        endpoint_id,
        family,
        _pad: [0; 3],
        addr: *addr,
    };
    unsafe { SELF_ADDRS.get(own) }.is_some()
}

fn is_loopback_addr(family: u8, a: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        a[0] == 127
    } else {
        a[..15].iter().all(|b| *b == 0) && a[15] == 1
    }
}

/// recvmsg() and getpeername(): a backend the socket's call to a Service went to shows as
/// the Service's address again. Only sockets whose calls were translated have entries.
fn sock_addr_untranslate(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let call = read_call_addr(sa, family);
    let cookie = service::cookie(sa as *mut c_void);
    if let Some(called) = service::called(cookie, call.family, &call.addr, call.port) {
        write_call_addr(sa, family, &call, &called.addr, called.port);
    }
    // Both hooks must return 1.
    SOCK_ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn stagewall_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, FAMILY_V4, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn stagewall_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, FAMILY_V6, HOOK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn stagewall_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, FAMILY_V4, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn stagewall_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_verdict(&ctx, FAMILY_V6, HOOK_SENDMSG)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn stagewall_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_untranslate(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn stagewall_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_untranslate(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn stagewall_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_addr_untranslate(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn stagewall_getpeername6(ctx: SockAddrContext) -> i32 {
    sock_addr_untranslate(&ctx, FAMILY_V6)
}

// ---------------------------------------------------------------------------------------------
// TC on the host side of a workload's veth

fn tc_verdict(ctx: &TcContext, direction: u8) -> i32 {
    let skb: &SkBuff = &ctx.skb;
    let ifindex = unsafe { read_volatile(&(*skb.skb).ifindex) } as u64;
    let verdict = match config() {
        Some(cfg) => match lookup_endpoint(cfg, ENDPOINT_KIND_IFINDEX, ifindex) {
            Some(ep) => {
                // A frame too short for an Ethernet header is as malformed as a truncated
                // IP header.
                let l3 = packet::l3_from_eth(skb).unwrap_or(L3::Truncated);
                skb_verdict(ctx, cfg, ep, skb, l3, direction, HOOK_TC)
            }
            None => Verdict::Pass,
        },
        None => without_config(direction, |cfg| {
            lookup_endpoint(cfg, ENDPOINT_KIND_IFINDEX, ifindex)
        }),
    };
    match verdict {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Packets the host side receives: sent by the workload.
#[classifier]
pub fn stagewall_tc_from_workload(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_EGRESS)
}

/// Packets the host side sends: received by the workload.
#[classifier]
pub fn stagewall_tc_to_workload(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_INGRESS)
}

// ---------------------------------------------------------------------------------------------
// lsm/socket_create: packet and XDP sockets

const AF_PACKET: i32 = 17;
const AF_XDP: i32 = 44;
/// An LSM program returns 0 to let the call go on, or a negative errno.
const LSM_ALLOW: i32 = 0;
const EPERM: i32 = 1;
const MAX_ERRNO: i32 = 4095;

/// Frames sent or received through a packet (AF_PACKET) or XDP socket never meet the
/// cgroup hooks: an isolated or quarantined workload may not create one. (TC on a pod's
/// veth backstops a pod's frames too; this also covers workloads in the node's network
/// namespace and pods whose veth the agent does not know.) Every packet socket is counted
/// first, whoever creates it: the agent's own at start shows that the kernel runs this.
#[lsm(hook = "socket_create")]
pub fn stagewall_socket_create(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern), then what the LSM
    // programs before this one decided.
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        // The verifier lets an LSM program return only 0 or an errno (-4095..-1).
        return if (-MAX_ERRNO..0).contains(&earlier) {
            earlier
        } else {
            -EPERM
        };
    }
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || (family != AF_PACKET && family != AF_XDP) {
        return LSM_ALLOW;
    }
    count(CNT_PACKET_SOCKETS);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let ancestor = |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) };
    let verdict = match config() {
        Some(cfg) => match cgroup_endpoint(cfg, cgroup_id, ancestor) {
            Some(ep) => verdict::packet_socket(cfg, ep),
            None => Verdict::Pass,
        },
        None => without_config(DIR_EGRESS, |cfg| cgroup_endpoint(cfg, cgroup_id, ancestor)),
    };
    match verdict {
        Verdict::Pass => LSM_ALLOW,
        Verdict::Drop => -EPERM,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
