//! `stagewall check DIR` (or `--kubernetes`): parse, validate and compile policies without
//! touching the kernel.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    cli::{
        exit::Exit,
        output::{Output, OutputArgs},
    },
    compiler, policy,
    policy::explain,
    policy::model::{Direction, PolicySet, Protocol},
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

/// What `check` found: the desired state's size, and per local workload the policies
/// that isolate it (empty: open) and the ClusterNetworkPolicies that hold it, in the
/// order they are read.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub workloads: usize,
    pub local_workloads: usize,
    pub namespaces: usize,
    pub pipelines: usize,
    pub network_policies: usize,
    pub cluster_network_policies: usize,
    pub identities: usize,
    pub ipcache_prefixes: usize,
    pub policy_entries: usize,
    pub endpoints: Vec<EndpointSummary>,
}

#[derive(Debug, serde::Serialize)]
pub struct EndpointSummary {
    pub workload: String,
    pub stage: Option<String>,
    pub endpoint_id: u32,
    pub ingress_isolated_by: Vec<String>,
    pub egress_isolated_by: Vec<String>,
    pub ingress_guardrails: Vec<String>,
    pub egress_guardrails: Vec<String>,
}

impl Summary {
    fn of(set: &PolicySet, compiled: &compiler::Compiled) -> Summary {
        // The ClusterNetworkPolicies that hold the workload, in the order they are read.
        let guardrails = |workload: &str, direction| {
            let Some(w) = set.workload(workload) else {
                return Vec::new();
            };
            let mut policies = set.cluster_policies_of(w, direction);
            policies.sort_by(|a, b| a.precedence(b));
            policies
                .iter()
                .map(|p| format!("{} {}", p.tier, p.name))
                .collect()
        };
        let names = |v: &[policy::model::ObjectName]| v.iter().map(|n| n.to_string()).collect();
        Summary {
            workloads: set.workloads.len(),
            local_workloads: compiled.endpoints.len(),
            namespaces: set.namespaces.len(),
            pipelines: set.pipelines.len(),
            network_policies: set.policies.len(),
            cluster_network_policies: set.cluster_policies.len(),
            identities: compiled.identities.kinds.len(),
            ipcache_prefixes: compiled.identities.ipcache.len(),
            policy_entries: compiled.policy.len() + compiled.tier_entries.len(),
            endpoints: compiled
                .endpoints
                .iter()
                .map(|ep| {
                    let workload = ep.workload.to_string();
                    EndpointSummary {
                        stage: ep.stage.clone(),
                        endpoint_id: ep.endpoint_id,
                        ingress_isolated_by: names(&ep.ingress_isolated_by),
                        egress_isolated_by: names(&ep.egress_isolated_by),
                        ingress_guardrails: guardrails(&workload, Direction::Ingress),
                        egress_guardrails: guardrails(&workload, Direction::Egress),
                        workload,
                    }
                })
                .collect(),
        }
    }

    /// The text: one line of counts, one line per local workload (wide: with its
    /// endpoint id and stage).
    fn text(&self, wide: bool) -> String {
        let mut out = format!(
            "ok: {} workloads ({} local), {} namespaces, {} pipelines, {} NetworkPolicies, {} ClusterNetworkPolicies -> {} identities, {} ipcache prefixes, {} policy entries\n",
            self.workloads,
            self.local_workloads,
            self.namespaces,
            self.pipelines,
            self.network_policies,
            self.cluster_network_policies,
            self.identities,
            self.ipcache_prefixes,
            self.policy_entries,
        );
        let names = |v: &[String]| {
            if v.is_empty() {
                "open".to_string()
            } else {
                v.join(", ")
            }
        };
        let guardrails = |v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" (guardrails: {})", v.join(", "))
            }
        };
        for ep in &self.endpoints {
            let extra = if wide {
                format!(
                    " endpoint {} stage {}",
                    ep.endpoint_id,
                    ep.stage.as_deref().unwrap_or("-")
                )
            } else {
                String::new()
            };
            out += &format!(
                "  {:<32} ingress: {}{}; egress: {}{}{extra}\n",
                ep.workload,
                names(&ep.ingress_isolated_by),
                guardrails(&ep.ingress_guardrails),
                names(&ep.egress_isolated_by),
                guardrails(&ep.egress_guardrails),
            );
        }
        out
    }
}

/// Prints a summary of the desired state from `source` (or every error, with file and
/// line), or the explanation if asked, in `output`; the exit code says how it went
/// (docs/exit-codes.md).
pub fn check(
    set: Option<PolicySet>,
    source: &str,
    question: Option<&Question>,
    output: Output,
) -> Exit {
    let Some(set) = set else {
        return Exit::BadInput;
    };
    let compiled = match compiler::compile(&set, &compiler::EndpointIds::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {source}: {e}");
            return Exit::BadInput;
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
            Ok(explained) => {
                output.print(&explained, |_| explained.text.clone());
                // Like `kubectl auth can-i`: "no" is its own exit code.
                match explained.verdict {
                    Some(explain::ExplainedVerdict::Allowed) => Exit::Ok,
                    Some(explain::ExplainedVerdict::Denied) => Exit::Denied,
                    // Neither yes nor no: a script must not take it for "allowed".
                    None => {
                        eprintln!("error: no verdict: the policies leave it undecided (see above)");
                        Exit::Failed
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::BadInput
            }
        };
    }
    let summary = Summary::of(&set, &compiled);
    output.print(&summary, |wide| summary.text(wide));
    Exit::Ok
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
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `stagewall check`: exit 0 when everything parses and compiles (and the connection
/// asked about is allowed), 1 when it is denied, 2 for bad policies or questions.
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
    check(set, &source, question.as_ref(), args.output.output).into()
}
