//! Pipelines expand into plain NetworkPolicies: one per stage, isolating the stage's
//! workloads both ways, with an ingress rule for every flow into the stage and an egress
//! rule for every flow out of it (traffic between two stages needs both, as between any
//! two workloads). The generated rules carry the flows' lines, so explanations point at
//! the Pipeline document.

use super::{
    error::PolicyError,
    model::{FlowEnd, LabelSelector, NetworkPolicy, ObjectName, Peer, Pipeline, PolicySet, Rule},
};

/// Appends the policies of every pipeline to `set.policies`.
pub fn expand(set: &mut PolicySet) -> Result<(), Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut generated = Vec::new();
    for p in &set.pipelines {
        match expand_one(set, p) {
            Ok(mut policies) => generated.append(&mut policies),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    set.policies.append(&mut generated);
    Ok(())
}

fn expand_one(set: &PolicySet, p: &Pipeline) -> Result<Vec<NetworkPolicy>, Vec<PolicyError>> {
    let error = |line: u32, message: String| PolicyError {
        file: p.origin.file.clone(),
        line,
        message,
    };
    let mut errors = Vec::new();
    let tenant = match &p.tenant_label {
        Some(label) => match set.namespace_labels(&p.name.namespace).get(label) {
            Some(value) => Some((label.clone(), value.clone())),
            None => {
                errors.push(error(p.origin.line, format!("pipeline {} has tenantLabel {label:?}, but its namespace {} has no such label; expected a Namespace document labelling it", p.name, p.name.namespace)));
                None
            }
        },
        None => None,
    };
    let selector_of = |stage: &str| {
        p.stages
            .iter()
            .find(|s| s.name == stage)
            .map(|s| s.selector.clone())
    };
    for flow in &p.flows {
        for end in [&flow.from, &flow.to] {
            if let FlowEnd::Stage(name) = end
                && selector_of(name).is_none()
            {
                let known: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
                errors.push(error(flow.line, format!("flow names stage {name:?}, which pipeline {} does not have; expected one of {known:?}", p.name)));
            }
        }
        if !matches!(flow.from, FlowEnd::Stage(_)) && !matches!(flow.to, FlowEnd::Stage(_)) {
            errors.push(error(
                flow.line,
                "flow has no stage at either end; expected a stage as from or to".into(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The peer a flow end is, seen from the other end's policy.
    let peer = |end: &FlowEnd| -> Result<Peer, String> {
        match end {
            FlowEnd::Stage(name) => Ok(Peer::Workloads {
                namespace_selector: None,
                pod_selector: selector_of(name),
            }),
            FlowEnd::Peer(Peer::Workloads {
                namespace_selector,
                pod_selector,
            }) => {
                let namespace_selector = match (&tenant, namespace_selector) {
                    (None, ns) => ns.clone(),
                    (Some((label, value)), ns) => {
                        let mut ns = ns.clone().unwrap_or_default();
                        if ns.match_labels.get(label).is_some_and(|v| v != value) {
                            return Err(format!(
                                "peer selects namespaces of tenant {:?}, not the pipeline's tenant {value:?}; expected peers of the same tenant",
                                ns.match_labels[label]
                            ));
                        }
                        ns.match_labels.insert(label.clone(), value.clone());
                        Some(ns)
                    }
                };
                Ok(Peer::Workloads {
                    namespace_selector,
                    pod_selector: pod_selector.clone(),
                })
            }
            FlowEnd::Peer(block) => Ok(block.clone()),
        }
    };
    let mut policies = Vec::new();
    if p.default_deny {
        policies.push(NetworkPolicy {
            name: generated_name(p, "default-deny"),
            pod_selector: LabelSelector::default(),
            ingress_isolates: true,
            egress_isolates: true,
            ingress: Vec::new(),
            egress: Vec::new(),
            mode: p.mode,
            origin: p.origin.clone(),
        });
    }
    for stage in &p.stages {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for flow in &p.flows {
            let into = matches!(&flow.to, FlowEnd::Stage(s) if s == &stage.name);
            let out_of = matches!(&flow.from, FlowEnd::Stage(s) if s == &stage.name);
            for (applies, rules, other) in [
                (into, &mut ingress, &flow.from),
                (out_of, &mut egress, &flow.to),
            ] {
                if applies {
                    let other = peer(other).map_err(|m| vec![error(flow.line, m)])?;
                    rules.push(Rule {
                        peers: vec![other],
                        ports: flow.ports.clone(),
                        line: flow.line,
                    });
                }
            }
        }
        policies.push(NetworkPolicy {
            name: generated_name(p, &stage.name),
            pod_selector: stage.selector.clone(),
            ingress_isolates: true,
            egress_isolates: true,
            ingress,
            egress,
            mode: p.mode,
            origin: p.origin.clone(),
        });
    }
    Ok(policies)
}

fn generated_name(p: &Pipeline, part: &str) -> ObjectName {
    ObjectName {
        namespace: p.name.namespace.clone(),
        name: format!("{}-{part}", p.name.name),
    }
}
