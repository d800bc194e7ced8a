//! `stagewall check DIR`: parse, validate and compile policies without touching the kernel.

use std::path::Path;

use crate::{compiler, policy};

/// Prints a summary (or every error, with file and line) and says whether all is valid.
pub fn check(dir: &Path) -> bool {
    let set = match policy::parse::load_dir(dir) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); nothing was applied", errors.0.len());
            return false;
        }
    };
    let compiled = match compiler::compile(&set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            return false;
        }
    };
    println!(
        "ok: {} workloads ({} local), {} namespaces, {} NetworkPolicies -> {} identities, {} ipcache prefixes, {} policy entries",
        set.workloads.len(),
        compiled.endpoints.len(),
        set.namespaces.len(),
        set.policies.len(),
        compiled.identities.kinds.len(),
        compiled.identities.ipcache.len(),
        compiled.policy.len(),
    );
    for ep in &compiled.endpoints {
        let names = |v: &Vec<policy::model::ObjectName>| {
            if v.is_empty() {
                "open".to_string()
            } else {
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        println!(
            "  {:<32} ingress: {}; egress: {}",
            ep.workload.to_string(),
            names(&ep.ingress_policies),
            names(&ep.egress_policies)
        );
    }
    true
}
