//! `stagewall get endpoints|identities|policy W|flows W`: what the kernel holds now,
//! decoded and named by the running agent (control/inventory.rs says why through the
//! agent), printed as text, JSON or YAML.

use std::{path::Path, process::ExitCode};

use crate::{
    cli::{exit::Exit, output::Output, status::failed},
    control::{
        self, Request,
        inventory::{self, EndpointView, FlowView, GetRequest, IdentityView, PolicyView},
    },
    policy::names,
};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum What {
    /// The endpoints of the policy slot in force: workloads (by cgroup or interface),
    /// guards, their policy ids and flags.
    Endpoints,
    /// The identities and the IP cache prefixes that map to them.
    Identities,
    /// The policy entries of a workload's endpoint (NetworkPolicy and tier programs).
    Policy {
        /// namespace/name of a workload enforced on this node.
        workload: String,
    },
    /// The flows of a workload in the kernel's flow table (its verdict cache).
    Flows {
        /// namespace/name of a workload enforced on this node.
        workload: String,
    },
}

pub fn run(socket: &Path, what: &What, output: Output) -> ExitCode {
    let workload = |w: &str| {
        names::object_name(w).map_err(|e| {
            eprintln!("error: {w:?}: {e}");
            ExitCode::from(Exit::BadInput)
        })
    };
    let request = match what {
        What::Endpoints => GetRequest::Endpoints,
        What::Identities => GetRequest::Identities,
        What::Policy { workload: w } => match workload(w) {
            Ok(w) => GetRequest::Policy(w),
            Err(code) => return code,
        },
        What::Flows { workload: w } => match workload(w) {
            Ok(w) => GetRequest::Flows(w),
            Err(code) => return code,
        },
    };
    let printed = match &request {
        GetRequest::Endpoints => ask::<Vec<EndpointView>>(socket, &request)
            .map(|v| output.print(&v, |wide| inventory::endpoints_text(&v, wide))),
        GetRequest::Identities => ask::<Vec<IdentityView>>(socket, &request)
            .map(|v| output.print(&v, |wide| inventory::identities_text(&v, wide))),
        GetRequest::Policy(_) => ask::<PolicyView>(socket, &request)
            .map(|v| output.print(&v, |wide| inventory::policy_text(&v, wide))),
        GetRequest::Flows(_) => ask::<Vec<FlowView>>(socket, &request)
            .map(|v| output.print(&v, |wide| inventory::flows_text(&v, wide))),
    };
    match printed {
        Ok(()) => Exit::Ok.into(),
        Err(e) => failed(&e).into(),
    }
}

fn ask<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &GetRequest,
) -> Result<T, control::ControlError> {
    control::query(socket, &Request::Get(request.clone()))
}
