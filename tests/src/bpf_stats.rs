//! The kernel's own accounting of BPF programs, for the per-packet cost benchmark
//! (`stagewall-cost`): run time and run count of a loaded program
//! (`kernel.bpf_stats_enabled`), the programs an agent pinned links for, an empty program
//! of a type (the floor), and `BPF_PROG_TEST_RUN` (a crafted packet run `repeat` times,
//! the kernel timing it). aya exposes none of these figures, so this speaks bpf(2)
//! directly; the attribute layouts are those of `linux/bpf.h`.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Program types (`enum bpf_prog_type`) the benchmark loads an empty program of.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_CGROUP_SKB: u32 = 8;

/// Offsets in `struct bpf_prog_info` (232 bytes on 6.x; older kernels fill less).
const PROG_INFO_SIZE: usize = 232;
const PROG_INFO_NAME: usize = 64;
const PROG_INFO_RUN_TIME_NS: usize = 192;
const PROG_INFO_RUN_CNT: usize = 200;
/// Offset of `prog_id` in `struct bpf_link_info`.
const LINK_INFO_PROG_ID: usize = 8;

/// `union bpf_attr` is 8-byte aligned; the commands used here fit in 128 bytes.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, offset: usize, v: u32) -> &mut Attr {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, offset: usize, v: u64) -> &mut Attr {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().unwrap())
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> anyhow::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size given; every pointer in
    // it points to memory that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        bail!("bpf({what}): {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Turns `kernel.bpf_stats_enabled` on while held; puts back what it was on drop.
pub struct StatsSwitch {
    previous: String,
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsSwitch {
    pub fn on() -> anyhow::Result<StatsSwitch> {
        let previous = fs::read_to_string(STATS_SYSCTL).context(STATS_SYSCTL)?;
        fs::write(STATS_SYSCTL, "1").context(STATS_SYSCTL)?;
        Ok(StatsSwitch {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!("restoring {STATS_SYSCTL} to {}: {e}", self.previous);
        }
    }
}

/// A program's cumulative figures: nanoseconds spent in it and times it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Runs {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl Runs {
    /// What ran between `earlier` and `self`.
    pub fn since(self, earlier: Runs) -> Runs {
        Runs {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }
    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

fn info(fd: &OwnedFd, buf: &mut [u8], what: &str) -> anyhow::Result<()> {
    let mut attr = Attr::new();
    attr.u32(0, fd.as_raw_fd() as u32)
        .u32(4, buf.len() as u32)
        .u64(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, what).map(|_| ())
}

/// A descriptor of the loaded program `id`.
pub fn program_fd(id: u32) -> anyhow::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, &format!("program {id}")).map(owned)
}

/// The run time and count of the program behind `fd`.
pub fn runs(fd: &OwnedFd) -> anyhow::Result<Runs> {
    let mut buf = [0u8; PROG_INFO_SIZE];
    info(fd, &mut buf, "program info")?;
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    Ok(Runs {
        run_time_ns: u64_at(PROG_INFO_RUN_TIME_NS),
        run_cnt: u64_at(PROG_INFO_RUN_CNT),
    })
}

/// The kernel's (15-character) name of the program behind `fd`.
pub fn program_name(fd: &OwnedFd) -> anyhow::Result<String> {
    let mut buf = [0u8; PROG_INFO_SIZE];
    info(fd, &mut buf, "program info")?;
    let name = &buf[PROG_INFO_NAME..PROG_INFO_NAME + 16];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The programs behind the links pinned in `links_dir` (named `<target>-<program>` by the
/// agent, pins.rs): full program name to program id. Every target of one program shares
/// the one loaded program, so its figures add up all its attachments.
pub fn pinned_programs(links_dir: &Path) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(links_dir).with_context(|| links_dir.display().to_string())? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(program) = file.find("stagewall_").map(|at| file[at..].to_string()) else {
            continue;
        };
        if programs.contains_key(&program) {
            continue;
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut attr = Attr::new();
        attr.u64(0, c.as_ptr() as u64);
        let link = owned(bpf(BPF_OBJ_GET, &mut attr, &path.display().to_string())?);
        let mut buf = [0u8; 64];
        info(&link, &mut buf, "link info")?;
        let id = u32::from_ne_bytes(
            buf[LINK_INFO_PROG_ID..LINK_INFO_PROG_ID + 4]
                .try_into()
                .unwrap(),
        );
        programs.insert(program, id);
    }
    Ok(programs)
}

/// Loads the smallest program of `prog_type` there is: `r0 = 1; exit` (cgroup_skb: pass;
/// TC: TC_ACT_SHOT's neighbour, TC_ACT_RECLASSIFY=1, which test_run only reports).
pub fn load_empty(prog_type: u32) -> anyhow::Result<OwnedFd> {
    // BPF_ALU64|BPF_MOV|BPF_K dst r0 imm 1; BPF_JMP|BPF_EXIT.
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.u32(0, prog_type)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64);
    attr.0[48..53].copy_from_slice(b"empty");
    bpf(BPF_PROG_LOAD, &mut attr, "loading an empty program").map(owned)
}

/// One `BPF_PROG_TEST_RUN`: `frame` (from its Ethernet header) run `repeat` times, the
/// packet's device `ifindex` (in the caller's network namespace; 0 for loopback).
/// Returns the program's return value and the kernel's nanoseconds per run.
pub fn test_run(
    prog: &OwnedFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> anyhow::Result<(u32, u32)> {
    // struct __sk_buff, 192 bytes; ifindex at 40.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, frame.len() as u32)
        .u32(12, out.len() as u32)
        .u64(16, frame.as_ptr() as u64)
        .u64(24, out.as_mut_ptr() as u64)
        .u32(32, repeat)
        .u32(40, ctx.len() as u32)
        .u64(48, ctx.as_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut attr, "test run")?;
    Ok((attr.get_u32(4), attr.get_u32(36)))
}

/// An Ethernet + IPv4 + UDP frame from `src`:`sport` to `dst`:`dport`, 18 bytes of payload,
/// checksums right (the UDP checksum 0: none, as IPv4 allows).
pub fn udp_frame(
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let payload = [0x5au8; 18];
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_udp_frame_has_a_valid_ipv4_header_checksum() {
        let f = udp_frame([10, 0, 0, 1].into(), 4000, [10, 0, 0, 2].into(), 53);
        let ip = &f[14..34];
        let sum: u32 = ip
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
        assert_eq!(f.len(), 14 + 20 + 8 + 18);
    }
}
