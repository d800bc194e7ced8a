//! `stagewall check DIR` (or `--kubernetes`): parse, validate and compile policies without
//! touching the kernel.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    compiler, policy,
    policy::explain,
    policy::model::{PolicySet, Protocol},
    source::kubernetes::{self, KubernetesArgs},
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
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); nothing was applied", errors.len());
            None
        }
    }
}

/// The desired state the agent would build from the Kubernetes API server for `node`
/// (pods' cgroups looked up on this host), or None after printing why not.
pub fn load_kubernetes(args: &KubernetesArgs, node: &str) -> Option<PolicySet> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let view = runtime.block_on(async {
        let mount =
            crate::datapath::host::cgroup2_mount().unwrap_or_else(|_| "/sys/fs/cgroup".into());
        // Nobody listens to the wake-ups: one look is all check takes.
        let (changes, _) = tokio::sync::mpsc::channel(1);
        kubernetes::start_watchers(args, node, mount, changes).await
    });
    let mut view = match view {
        Ok(view) => view,
        Err(e) => {
            // One line of output for each line of the message, as for policy errors.
            let e = anyhow::Error::from(e).context("Kubernetes");
            for line in format!("{e:#}").lines() {
                eprintln!("error: {line}");
            }
            return None;
        }
    };
    match view
        .changed()
        .expect("a source gives its state when first asked")
    {
        Ok(set) => {
            // As the agent would: left out, the rest enforced.
            for e in &view.left_out {
                eprintln!("left out: {e}");
            }
            Some(set)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            None
        }
    }
}

/// Prints a summary of the desired state from `source` (or every error, with file and
/// line), then the explanation if asked, and says whether all went well.
pub fn check(set: Option<PolicySet>, source: &str, question: Option<&Question>) -> bool {
    let Some(set) = set else {
        return false;
    };
    let compiled = match compiler::compile(&set, &compiler::EndpointIds::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {source}: {e}");
            return false;
        }
    };
    for warning in compiler::warnings(&set) {
        eprintln!("warning: {warning}");
    }
    if let Some(q) = question {
        // A name is what the workload's DNS answers turn into addresses: the rules that
        // allow it, not one address's verdict.
        let explained = if policy::explain_name::is_name(&q.to) {
            policy::explain_name::explain_name(&set, &q.from, &q.to, q.protocol, q.port)
        } else {
            explain::explain(&set, &q.from, &q.to, q.protocol, q.port)
        };
        return match explained {
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
        "ok: {} workloads ({} local), {} namespaces, {} pipelines, {} NetworkPolicies, {} ClusterNetworkPolicies -> {} identities, {} ipcache prefixes, {} policy entries",
        set.workloads.len(),
        compiled.endpoints.len(),
        set.namespaces.len(),
        set.pipelines.len(),
        set.policies.len(),
        set.cluster_policies.len(),
        compiled.identities.kinds.len(),
        compiled.identities.ipcache.len(),
        compiled.policy.len() + compiled.tier_entries.len(),
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
        // The ClusterNetworkPolicies that hold the workload, in the order they are read.
        let guardrails = |direction| {
            let Some(w) = set.workload(&ep.workload.to_string()) else {
                return String::new();
            };
            let mut policies = set.cluster_policies_of(w, direction);
            if policies.is_empty() {
                return String::new();
            }
            policies.sort_by(|a, b| a.precedence(b));
            let policies: Vec<String> = policies
                .iter()
                .map(|p| format!("{} {}", p.tier, p.name))
                .collect();
            format!(" (guardrails: {})", policies.join(", "))
        };
        println!(
            "  {:<32} ingress: {}{}; egress: {}{}",
            ep.workload.to_string(),
            names(&ep.ingress_isolated_by),
            guardrails(policy::model::Direction::Ingress),
            names(&ep.egress_isolated_by),
            guardrails(policy::model::Direction::Egress)
        );
    }
    true
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Directory of policy files.
    #[arg(required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    pub dir: Option<PathBuf>,
    /// Read the policies from the Kubernetes API server instead (as `run
    /// --kubernetes` does).
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// With --kubernetes: whose pods are local (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Explain the verdict for one connection: which policies select each side and
    /// which rule allows it, or why it is denied.
    #[arg(long, requires_all = ["from", "to", "port"])]
    pub explain: bool,
    /// Sender: a workload (namespace/name) or an address.
    #[arg(long)]
    pub from: Option<String>,
    /// Receiver: a workload (namespace/name), an address, or a domain name (pypi.org):
    /// then the rules that allow that name for the sender, and on which ports.
    #[arg(long)]
    pub to: Option<String>,
    /// Destination port.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: ProtocolArg,
}

/// `stagewall check`: exit 0 when everything parses and compiles (and the explanation, if
/// asked, could be given), 1 otherwise.
pub fn run(args: CheckArgs) -> ExitCode {
    let question = match (args.explain, args.from, args.to, args.port) {
        (true, Some(from), Some(to), Some(port)) => Some(Question {
            from,
            to,
            port,
            protocol: args.protocol.into(),
        }),
        _ => None,
    };
    let (set, source) = match &args.dir {
        Some(dir) => (load(dir), dir.display().to_string()),
        None => {
            let node = args.node_name.unwrap_or_else(crate::events::host_name);
            (
                load_kubernetes(&args.kubernetes, &node),
                "Kubernetes".into(),
            )
        }
    };
    if check(set, &source, question.as_ref()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
