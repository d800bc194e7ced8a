//! Whether the kernel loads BPF LSM programs at all, asked of the kernel itself (not of
//! the agent under test): a two-instruction program ("return 0") loaded for the
//! socket_create hook. Kernels without CONFIG_BPF_LSM, or that refuse tracing programs
//! (this project's test machines answer EPERM, lockdown forced to integrity), say why.

use std::io;

use aya_obj::btf::{Btf, BtfKind};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_LSM_MAC: u32 = 27;

/// The part of `union bpf_attr` BPF_PROG_LOAD reads, up to attach_btf_id.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// Ok when the kernel loads an LSM program for socket_create; else what it answered.
pub fn kernel_loads_lsm_programs() -> io::Result<()> {
    let btf = Btf::from_sys_fs().map_err(io::Error::other)?;
    let hook = btf
        .id_by_type_name_kind("bpf_lsm_socket_create", BtfKind::Func)
        .map_err(io::Error::other)?;
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_LSM,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_LSM_MAC,
        attach_btf_id: hook,
        ..Default::default()
    };
    // SAFETY: attr and what it points at outlive the call; the size is attr's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Is `bpf` among the kernel's active LSMs? Read from securityfs, mounted for the
/// question (and unmounted after) where nothing mounted it.
pub fn bpf_lsm_active() -> io::Result<bool> {
    const LIST: &str = "/sys/kernel/security/lsm";
    let read =
        || std::fs::read_to_string(LIST).map(|list| list.split(',').any(|m| m.trim() == "bpf"));
    match read() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mount = |args: &[&str]| {
                std::process::Command::new(args[0])
                    .args(&args[1..])
                    .status()
            };
            let mounted = mount(&[
                "mount",
                "-t",
                "securityfs",
                "securityfs",
                "/sys/kernel/security",
            ])?;
            if !mounted.success() {
                return Err(io::Error::other(format!("mounting securityfs: {mounted}")));
            }
            let answer = read();
            let _ = mount(&["umount", "/sys/kernel/security"]);
            answer
        }
        other => other,
    }
}
