//! `stagewall check DIR`: parse, validate and compile policies without touching the kernel.

use std::path::Path;

use crate::{
    compiler, explain, policy,
    policy::model::{PolicySet, Protocol},
};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Sctp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
            ProtocolArg::Sctp => Protocol::Sctp,
        }
    }
}

/// `--explain`: one connection to explain.
pub struct Question {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Parses a policy directory, or prints every error (file, line, what is wrong) and
/// gives None.
pub fn load(dir: &Path) -> Option<PolicySet> {
    match policy::parse::load_dir(dir, &mut Default::default()) {
        Ok(set) => Some(set),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); nothing was applied", errors.0.len());
            None
        }
    }
}

/// Prints a summary (or every error, with file and line), then the explanation if asked,
/// and says whether all went well.
pub fn check(dir: &Path, question: Option<&Question>) -> bool {
    let Some(set) = load(dir) else {
        return false;
    };
    let compiled = match compiler::compile(&set, &compiler::EndpointIds::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            return false;
        }
    };
    if let Some(q) = question {
        return match explain::explain(&set, &q.from, &q.to, q.protocol, q.port) {
            Ok(text) => {
                print!("{text}");
                true
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                false
            }
        };
    }
    println!(
        "ok: {} workloads ({} local), {} namespaces, {} pipelines, {} NetworkPolicies -> {} identities, {} ipcache prefixes, {} policy entries",
        set.workloads.len(),
        compiled.endpoints.len(),
        set.namespaces.len(),
        set.pipelines.len(),
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
