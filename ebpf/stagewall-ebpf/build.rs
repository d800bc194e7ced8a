use which::which;

/// Rebuild when bpf-linker changes: it is the linker of the BPF target, but cargo does not
/// track linkers.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: see README.md (setup)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
