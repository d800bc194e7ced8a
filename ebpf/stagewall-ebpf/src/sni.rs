//! The SNI check (issue 18): a name rule allows an address its DNS answers gave, and an
//! address is often shared (a CDN serves many names from one), so allowing the address
//! for one name allows every name behind it. With the check on (EP_SNI_CHECK: the agent's
//! `--dns-sni-check`, on workloads with name rules), a TLS connection allowed only by a
//! name must say, in its ClientHello, which host it wants, and that host must be one the
//! destination was learnt for.
//!
//! What is checked: a TCP flow to port 443 (SNI_CHECK_PORT) of the workload's egress,
//! seen by cgroup_skb egress (the one hook that sees the workload's own segments before
//! they leave, data from the IP header), that the tiers allowed *only* because of a name
//! identity.
//!
//! - `decide` tracks a new flow the check may apply to with FLOW_F_SNI_NEW
//!   (`new_flow_flags`). At that first packet `check` asks whether a name allowed it: the
//!   destination has a DNS_LEARNT entry and the tiers, judged again by the address alone
//!   (`verdict::allowed_by_address`), would not allow it. If so the flow becomes
//!   FLOW_F_SNI_PENDING, else the check is done with it.
//!
//!   (Why not a bit in `judge`'s result, read where `decide` tracks the flow: the
//!   verifier walks everything after a branch on a value it knows once per value, and
//!   both that bit and a pending state returned by `allowed_before` multiplied its walk
//!   of `decide` past the million instructions it allows a program. So nothing of the
//!   check is kept across `decide`, which is untouched but for the flags it stores: the
//!   flow's entry carries the state, and the second judgement costs only the first
//!   packet of a checked flow.)
//! - Each packet of a pending flow without TCP payload (the handshake, ACKs) passes. The
//!   first one with payload is read as a TLS record: type 22 (handshake) holding a
//!   ClientHello (type 1); the session id, cipher suites and compression methods are
//!   stepped over, then at most MAX_EXTENSIONS extensions to server_name (0), whose first
//!   entry must be a host_name (type 0) of 1 to MAX_NAME bytes.
//! - The identities the name can match: the exact name's (FNV-1a 32 over the lower-cased
//!   name, | IDENTITY_NAME_FIRST, as the agent's `DomainPattern::identity()` hashes a
//!   pattern's canonical text), and `*.` + each suffix of the name that has at least two
//!   labels (`a.files.host.org` -> `*.files.host.org`, `*.host.org`), the last
//!   MAX_WILDCARDS of them (the shortest suffixes: patterns up to MAX_WILDCARDS + 1
//!   labels after the `*.`), hashed in the same pass over the name, one FNV state per
//!   dot in a shift register, in a bpf_loop (see `hash_byte`).
//! - Matched: one of them is among the DNS_LEARNT identities of (workload, destination),
//!   read whatever the entry's expiry (the flow was allowed while it was fresh): the
//!   pending mark is cleared and the flow goes on like any other.
//! - Not matched, and also when the payload is no TLS handshake record, no ClientHello,
//!   has no server_name, a name with `*` in it, or a server_name that does not lie within
//!   this segment (a ClientHello split across segments: its extensions are read as far
//!   as the segment goes) — the point of the check is that the flow names its host, so
//!   what cannot be read is refused: the packet is dropped, reported with
//!   REASON_SNI_MISMATCH, and the flow marked FLOW_F_SNI_DENIED, so that every later
//!   packet of it is dropped before `decide` (`refused`, reported too, rate-limited),
//!   under any policy generation, until the entry times out. The entry is kept rather
//!   than removed: a removed entry would make the next packet a new flow, allowed by the
//!   name again. In audit mode (`audits_denial`): reported as would-drop and passed, the
//!   mark cleared.
//!
//! Counting: `decide` counts the packet as allowed before the check; a refused one is
//! taken back and counted as dropped (per-CPU counters, the same program run: exact).
//! With flow logging, a refused flow's allowed record may already have been reported.
//!
//! Limits, deliberately fail-closed: a flow without an entry (the flow table or the
//! workload's budget full, or its entry evicted mid-connection) is checked as a new one
//! at every packet, so past its ClientHello its payload is refused; IPv6 extension
//! headers before TCP are refused too (the local stack sends none on a TCP socket). Not
//! checked: whether the name's own rule allows this port (any learnt name of the
//! destination passes: the learnt entry holds only names some rule allows); a later
//! ClientHello within the same connection; Encrypted ClientHello (the outer SNI, the
//! client-facing server, is what is read); a flow open before the check applied.
//!
//! Cost: packets of other flows pay a few compares (`applies`); every packet of a TCP
//! flow to 443 of a checked workload pays two FLOWS reads (`refused`, and the flags
//! after `decide`); the first packet of a checked flow a second judgement (an IPCACHE
//! and at most 4 POLICY lookups) and a DNS_LEARNT lookup; the first payload the parse (a
//! few bpf_skb_load_bytes calls for the headers and extensions, one per byte of the name,
//! RING + 1 FNV states per byte) and a DNS_LEARNT lookup. Measured by
//! `tests/tests/sni.rs`.

use core::ffi::{c_long, c_void};

use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_loop, programs::sk_buff::SkBuff};
use stagewall_common::{
    Config, DIR_EGRESS, DnsLearntKey, DnsLearntValue, EP_SNI_CHECK, EndpointInfo, FAMILY_V4,
    FLOW_F_SNI_DENIED, FLOW_F_SNI_NEW, FLOW_F_SNI_PENDING, HOOK_CGROUP_SKB, IDENTITY_NAME_FIRST,
    PROTO_TCP, SNI_CHECK_PORT,
};

use crate::{
    maps::DNS_LEARNT,
    verdict::{self, Flow, Verdict},
};

/// Extensions walked before server_name must have been found.
const MAX_EXTENSIONS: usize = 32;
/// The longest host name (RFC 1035).
const MAX_NAME: usize = 253;
/// FNV states kept for `*.` + suffix, one per dot, for the last RING dots; the last dot's
/// (a one-label suffix) is never a candidate, so MAX_WILDCARDS of them are.
const RING: usize = 8;
const MAX_WILDCARDS: usize = RING - 1;

const TLS_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

const fn fnv(h: u32, b: u8) -> u32 {
    (h ^ b as u32).wrapping_mul(FNV_PRIME)
}

/// The FNV-1a state after `*.`: where every wildcard candidate's hash starts.
const WILDCARD_START: u32 = fnv(fnv(FNV_OFFSET, b'*'), b'.');

/// Could the check apply to this flow of the workload's egress (should a name be what
/// allowed it)?
fn applies(ep: &EndpointInfo, flow: &Flow) -> bool {
    ep.flags & EP_SNI_CHECK != 0
        && flow.direction == DIR_EGRESS
        && flow.protocol == PROTO_TCP
        && flow.remote_port == SNI_CHECK_PORT
}

/// The FLOW_F_* flags a new flow is tracked with: FLOW_F_SNI_NEW where the check may
/// apply (cgroup_skb, which `check` runs after).
pub fn new_flow_flags(ep: &EndpointInfo, flow: &Flow, hook: u8) -> u32 {
    if hook == HOOK_CGROUP_SKB && applies(ep, flow) {
        FLOW_F_SNI_NEW
    } else {
        0
    }
}

/// Did the check refuse this flow's ClientHello (cgroup_skb egress, before `decide`)?
#[inline(never)]
pub fn refused(ep: &EndpointInfo, flow: &Flow) -> bool {
    applies(ep, flow) && verdict::flow_flags(ep, flow, 0) & FLOW_F_SNI_DENIED != 0
}

/// A packet `decide` passed, seen by cgroup_skb egress (data starts at the IP header):
/// the check, where it applies (see the module doc). Passes without payload, passes and
/// clears the mark when its ClientHello names a learnt host, is refused otherwise
/// (`verdict::sni_mismatch`).
#[inline(never)]
pub fn check(cfg: &Config, ep: &EndpointInfo, flow: &Flow, skb: &SkBuff) -> Verdict {
    if !applies(ep, flow) {
        return Verdict::Pass;
    }
    // A flow without an entry (not tracked: the table or the workload's budget full) is
    // checked as a new one, at every packet.
    let flags = verdict::flow_flags(ep, flow, FLOW_F_SNI_NEW);
    if flags & FLOW_F_SNI_NEW != 0 {
        if !by_name(cfg, ep, flow) {
            verdict::set_flow_flags(ep, flow, 0);
            return Verdict::Pass;
        }
        verdict::set_flow_flags(ep, flow, FLOW_F_SNI_PENDING);
    } else if flags & FLOW_F_SNI_PENDING == 0 {
        return Verdict::Pass;
    }
    let payload = payload_offset(skb, flow.family);
    if payload == NO_PAYLOAD {
        return Verdict::Pass;
    }
    let found = if payload == UNREADABLE {
        0
    } else {
        server_name_at(skb, payload as usize)
    };
    if found != 0 && learnt_name(ep, flow, skb, found) {
        verdict::set_flow_flags(ep, flow, 0);
        return Verdict::Pass;
    }
    verdict::sni_mismatch(cfg, ep, flow)
}

/// Was the new flow allowed only by a name: its destination learnt from DNS, and the
/// tiers would not allow it by the address alone?
#[inline(never)]
fn by_name(cfg: &Config, ep: &EndpointInfo, flow: &Flow) -> bool {
    learnt(ep, flow).is_some() && !verdict::allowed_by_address(cfg, ep, flow)
}

/// The names the flow's destination was learnt for, whatever the entry's expiry.
fn learnt(ep: &EndpointInfo, flow: &Flow) -> Option<&'static DnsLearntValue> {
    let key = DnsLearntKey {
        endpoint_id: ep.endpoint_id,
        family: flow.family,
        _pad: [0; 3],
        addr: flow.remote_addr,
    };
    unsafe { DNS_LEARNT.get(key) }
}

/// `payload_offset`: the segment carries no payload; or its TCP header cannot be found.
const NO_PAYLOAD: u32 = 0;
const UNREADABLE: u32 = u32::MAX;

/// Where the TCP payload starts, from the IP header.
#[inline(never)]
fn payload_offset(skb: &SkBuff, family: u8) -> u32 {
    let ip_len = if family == FAMILY_V4 {
        let Ok(version_ihl) = skb.load::<u8>(0) else {
            return UNREADABLE;
        };
        ((version_ihl & 0x0f) as u32) * 4
    } else {
        // Extension headers before TCP: refused (see the module doc).
        match skb.load::<u8>(6) {
            Ok(PROTO_TCP) => 40,
            _ => return UNREADABLE,
        }
    };
    let Ok(data_offset) = skb.load::<u8>(ip_len as usize + 12) else {
        return UNREADABLE;
    };
    let payload = ip_len + ((data_offset >> 4) as u32) * 4;
    if payload >= skb.len() {
        NO_PAYLOAD
    } else {
        payload
    }
}

/// Where the ClientHello at `at` names its host: offset << 16 | length; 0 when the
/// payload is no ClientHello, or its server_name is absent or not within the segment.
#[inline(never)]
fn server_name_at(skb: &SkBuff, at: usize) -> u64 {
    // Record: type, version (2), length (2); handshake: type, length (3); then the
    // client version (2) and random (32).
    let Ok(head) = skb.load::<[u8; 6]>(at) else {
        return 0;
    };
    if head[0] != TLS_HANDSHAKE || head[5] != HANDSHAKE_CLIENT_HELLO {
        return 0;
    }
    let mut off = at + 9 + 2 + 32;
    let Ok(session_id) = skb.load::<u8>(off) else {
        return 0;
    };
    off += 1 + session_id as usize;
    let Ok(suites) = skb.load::<[u8; 2]>(off) else {
        return 0;
    };
    off += 2 + u16::from_be_bytes(suites) as usize;
    let Ok(compression) = skb.load::<u8>(off) else {
        return 0;
    };
    off += 1 + compression as usize;
    let Ok(total) = skb.load::<[u8; 2]>(off) else {
        return 0;
    };
    off += 2;
    let end = off + u16::from_be_bytes(total) as usize;
    for _ in 0..MAX_EXTENSIONS {
        if off + 4 > end {
            return 0;
        }
        let Ok(ext) = skb.load::<[u8; 4]>(off) else {
            return 0;
        };
        let len = u16::from_be_bytes([ext[2], ext[3]]) as usize;
        if u16::from_be_bytes([ext[0], ext[1]]) == EXTENSION_SERVER_NAME {
            // The list's length (2), the first entry's type (1) and length (2).
            let Ok(entry) = skb.load::<[u8; 5]>(off + 4) else {
                return 0;
            };
            let name_len = u16::from_be_bytes([entry[3], entry[4]]) as u64;
            if entry[2] != NAME_TYPE_HOST_NAME || name_len == 0 || name_len > MAX_NAME as u64 {
                return 0;
            }
            return ((off + 9) as u64) << 16 | name_len;
        }
        off += 4 + len;
    }
    0
}

/// Is the name at `found` (`server_name_at`) one the flow's destination was learnt for:
/// its identity, or a wildcard's over one of its suffixes, among DNS_LEARNT's?
#[inline(never)]
fn learnt_name(ep: &EndpointInfo, flow: &Flow, skb: &SkBuff, found: u64) -> bool {
    let Some(learnt) = learnt(ep, flow) else {
        return false;
    };
    name_matches(
        skb,
        (found >> 16) as usize,
        (found & 0xffff) as usize,
        learnt,
    )
}

/// The FNV-1a states of one pass over a name: the exact name's, and `*.` + the suffix
/// after each of the last RING dots, the newest (the last dot's) first — a shift
/// register, so that no state is addressed by a computed index (which the verifier
/// would have to track precisely, path by path).
#[repr(C)]
struct Hashes {
    exact: u32,
    wild: [u32; RING],
    dots: u32,
    star: u32,
}

impl Hashes {
    /// Takes one byte of the name.
    #[inline(always)]
    fn step(&mut self, byte: u8) {
        let b = byte.to_ascii_lowercase();
        self.star |= u32::from(b == b'*');
        self.exact = fnv(self.exact, b);
        // After a dot, every state moves one place down and a new one starts at the front.
        let dot = b == b'.';
        let mut previous = WILDCARD_START;
        for state in self.wild.iter_mut() {
            let next = fnv(*state, b);
            *state = if dot { previous } else { next };
            previous = next;
        }
        self.dots += u32::from(dot);
    }
}

/// A walk over a name, on `name_matches`'s stack: `hash_byte`'s context.
#[repr(C)]
struct NameWalk {
    skb: *mut __sk_buff,
    at: u32,
    /// 1 when a byte could not be read.
    failed: u32,
    hashes: Hashes,
}

/// bpf_loop's callback: hashes byte `index` of the name. A loop of the helper's, not of
/// the program's, and one byte per call: the verifier checks the callback until its
/// states converge, where a loop over up to 253 bytes in the program (or 8 in the
/// callback), with branches in each, exceeded the million instructions it allows.
extern "C" fn hash_byte(index: u64, ctx: *mut c_void) -> c_long {
    // SAFETY: bpf_loop passes the NameWalk `name_matches` gave it.
    let walk = unsafe { &mut *(ctx as *mut NameWalk) };
    let Ok(byte) = SkBuff::new(walk.skb).load::<u8>(walk.at as usize + index as usize) else {
        walk.failed = 1;
        return 1;
    };
    walk.hashes.step(byte);
    0
}

/// Hashes the name at `at` (`len` bytes, 1 to MAX_NAME) in one pass: the exact name, and
/// `*.` + the suffix after each of the last RING dots; true if one of the candidates is
/// among `learnt`'s identities. A name that cannot be read, or with `*` in it, is none.
#[inline(never)]
fn name_matches(skb: &SkBuff, at: usize, len: usize, learnt: &DnsLearntValue) -> bool {
    let mut walk = NameWalk {
        skb: skb.skb,
        at: at as u32,
        failed: 0,
        hashes: Hashes {
            exact: FNV_OFFSET,
            wild: [WILDCARD_START; RING],
            dots: 0,
            star: 0,
        },
    };
    // SAFETY: the callback and its context are what bpf_loop expects; the context lives
    // on this frame for the call.
    unsafe {
        bpf_loop(
            len.min(MAX_NAME) as u32,
            hash_byte as *mut c_void,
            &mut walk as *mut NameWalk as *mut c_void,
            0,
        )
    };
    let h = &walk.hashes;
    if walk.failed != 0 || h.star != 0 {
        return false;
    }
    if learnt_identity(learnt, h.exact) {
        return true;
    }
    // wild[j] started after the (j+1)-th dot from the end: a suffix of j+1 labels. The
    // last dot's (j = 0, one label) is no candidate; fewer dots, fewer states.
    for (j, state) in h.wild.iter().enumerate() {
        if j >= 1 && (j as u32) < h.dots && learnt_identity(learnt, *state) {
            return true;
        }
    }
    false
}

/// Is the name identity of FNV-1a hash `hash` among `learnt`'s?
fn learnt_identity(learnt: &DnsLearntValue, hash: u32) -> bool {
    let identity = hash | IDENTITY_NAME_FIRST;
    learnt.identities.contains(&identity)
}

const _: () = assert!(MAX_WILDCARDS + 1 == RING);
