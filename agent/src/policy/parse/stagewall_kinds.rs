//! The kinds stagewall adds (apiVersion stagewall.io/v1alpha1): Workload (the inventory:
//! how a workload is attached, its addresses and named ports) and Pipeline (stages and the
//! flows between them; expanded into NetworkPolicies by policy::pipeline).

use std::net::IpAddr;

use serde_saphyr::Spanned;

use super::{
    labels::valid_label_key,
    parser::DocumentParser,
    raw::{RawFlowEnd, RawIpBlock, RawNamedPort, RawSpec},
};
use crate::policy::model::{
    Attachment, Flow, FlowEnd, Labels, Mode, NamedPort, ObjectName, Peer, Pipeline, PortMatch,
    Stage, Workload,
};

impl DocumentParser<'_> {
    pub(super) fn named_ports(&mut self, raw: &[Spanned<RawNamedPort>]) -> Option<Vec<NamedPort>> {
        let mut ports: Vec<NamedPort> = Vec::new();
        for p in raw {
            let line = self.line(p);
            let name = self.port_name(&p.value.name, line)?;
            let protocol = self.protocol(p.value.protocol.as_ref(), line)?;
            let port = self.port_number(p.value.port, line, "port")?;
            if ports.iter().any(|q| q.name == name) {
                self.error(
                    line,
                    format!("port name {name:?} is declared twice; expected unique names"),
                );
                return None;
            }
            ports.push(NamedPort {
                name,
                protocol,
                port,
            });
        }
        Some(ports)
    }

    pub(super) fn pipeline(
        &mut self,
        name: ObjectName,
        spec: Spanned<RawSpec>,
        mode: Option<Mode>,
        line: u32,
    ) -> Option<Pipeline> {
        let spec_line = self.line(&spec);
        let spec = spec.value;
        if !self.only_fields(
            &spec,
            spec_line,
            "Pipeline",
            &["stages", "flows", "tenantLabel", "defaultDeny"],
        ) {
            return None;
        }
        let mut stages: Vec<Stage> = Vec::new();
        for s in spec.stages.iter().flatten() {
            let stage_line = self.line(s);
            if !self.check_dns_name(&s.value.name, "stage name") {
                return None;
            }
            if stages.iter().any(|x| x.name == s.value.name.value) {
                self.error(
                    stage_line,
                    format!(
                        "stage {:?} is defined twice; expected unique stage names",
                        s.value.name.value
                    ),
                );
                return None;
            }
            let selector = self.selector(&s.value.selector)?;
            stages.push(Stage {
                name: s.value.name.value.clone(),
                selector,
            });
        }
        if stages.is_empty() {
            self.error(
                spec_line,
                "Pipeline has no stages; expected stages: [{name, selector}]",
            );
            return None;
        }
        let mut flows = Vec::new();
        for f in spec.flows.iter().flatten() {
            let from = self.flow_end(&f.value.from)?;
            // A name is what a workload's own DNS answers gave for a destination: it says
            // nothing about who connects in.
            if matches!(from, FlowEnd::Peer(Peer::Domain(_))) {
                self.error(
                    self.line(&f.value.from),
                    "fqdn can only be a flow's destination (to); expected a stage, cidr or workloads in from",
                );
                return None;
            }
            let to = self.flow_end(&f.value.to)?;
            let mut ports = Vec::new();
            for p in f.value.ports.iter().flatten() {
                ports.push(self.port(p)?);
            }
            // As the API's rule for domainNames: a name has no named ports.
            if matches!(to, FlowEnd::Peer(Peer::Domain(_)))
                && ports.iter().any(|p| matches!(p.port, PortMatch::Named(_)))
            {
                self.error(
                    self.line(f),
                    "flow to an fqdn has a named port; expected port numbers, since a name has no named ports",
                );
                return None;
            }
            flows.push(Flow {
                from,
                to,
                ports,
                line: self.line(f),
            });
        }
        let tenant_label = match spec.tenant_label {
            Some(l) if valid_label_key(&l.value) => Some(l.value),
            Some(l) => {
                self.error(
                    self.line(&l),
                    format!("tenantLabel {:?} is not a valid label key", l.value),
                );
                return None;
            }
            None => None,
        };
        Some(Pipeline {
            name,
            stages,
            flows,
            tenant_label,
            default_deny: spec.default_deny.unwrap_or(false),
            mode,
            origin: self.origin(line),
        })
    }

    pub(super) fn flow_end(&mut self, raw: &Spanned<RawFlowEnd>) -> Option<FlowEnd> {
        let line = self.line(raw);
        let e = &raw.value;
        let only = |n: usize| {
            usize::from(e.stage.is_some())
                + usize::from(e.cidr.is_some())
                + usize::from(e.workloads.is_some())
                + usize::from(e.fqdn.is_some())
                == n
        };
        if !only(1) || (e.except.is_some() && e.cidr.is_none()) {
            self.error(line, "flow end must be exactly one of {stage: name}, {cidr: ..., except: [...]}, {workloads: {namespaceSelector, podSelector}} or {fqdn: name}");
            return None;
        }
        if let Some(stage) = &e.stage {
            return Some(FlowEnd::Stage(stage.clone()));
        }
        if let Some(cidr) = &e.cidr {
            let block = RawIpBlock {
                cidr: cidr.clone(),
                except: e.except.clone(),
            };
            let spanned = Spanned::new(block, raw.referenced, raw.defined);
            return self.ip_block(&spanned).map(FlowEnd::Peer);
        }
        if let Some(peer) = &e.workloads {
            return self.peer(peer).map(FlowEnd::Peer);
        }
        let fqdn = e.fqdn.as_ref().expect("exactly one end given");
        self.domain(fqdn, "fqdn")
            .map(|d| FlowEnd::Peer(Peer::Domain(d)))
    }

    pub(super) fn workload(
        &mut self,
        name: ObjectName,
        labels: Labels,
        spec: RawSpec,
        spec_line: u32,
        line: u32,
    ) -> Option<Workload> {
        if !self.only_fields(
            &spec,
            spec_line,
            "Workload",
            &[
                "cgroup",
                "systemdUnit",
                "interface",
                "addresses",
                "ports",
                "failMode",
            ],
        ) {
            return None;
        }
        let mut attachments = Vec::new();
        if let Some(c) = spec.cgroup {
            if !c.value.starts_with('/') || c.value.split('/').any(|part| part == "..") {
                self.error(self.line(&c), format!("cgroup {:?} is not an absolute path; expected a path below the cgroup2 mount such as /ml.slice/trainer", c.value));
                return None;
            }
            attachments.push(Attachment::Cgroup(c.value));
        }
        if let Some(u) = spec.systemd_unit {
            if u.value.is_empty() || u.value.contains('/') {
                self.error(
                    self.line(&u),
                    format!(
                        "systemdUnit {:?} is invalid; expected a unit name such as trainer.service",
                        u.value
                    ),
                );
                return None;
            }
            attachments.push(Attachment::SystemdUnit(u.value));
        }
        let mut interface = None;
        if let Some(i) = spec.interface {
            if i.value.is_empty() || i.value.len() > 15 || i.value.contains(['/', ' ']) {
                self.error(self.line(&i), format!("interface {:?} is invalid; expected a network interface name of at most 15 characters", i.value));
                return None;
            }
            interface = Some(i.value);
        }
        if attachments.len() > 1 {
            self.error(
                spec_line,
                "Workload has both cgroup and systemdUnit; expected at most one",
            );
            return None;
        }
        // An interface beside a cgroup (or unit) is the backstop of cgroup enforcement:
        // TC there also decides what raw sockets send and receive past the cgroup hooks.
        let (attachment, backstop) = match (attachments.pop(), interface) {
            (Some(cgroup), interface) => (Some(cgroup), interface),
            (None, Some(interface)) => (Some(Attachment::Interface(interface)), None),
            (None, None) => (None, None),
        };
        let mut addresses = Vec::new();
        for a in spec.addresses.iter().flatten() {
            match a.value.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => {
                    self.error(self.line(a), format!("invalid address {:?}; expected an IPv4 or IPv6 address without prefix length", a.value));
                    return None;
                }
            }
        }
        let ports = self.named_ports(spec.ports.as_deref().unwrap_or_default())?;
        let fail_mode = match &spec.fail_mode {
            Some(m) => Some(self.fail_mode(&m.value, self.line(m), "spec.failMode")?),
            None => None,
        };
        Some(Workload {
            name,
            labels,
            attachment,
            backstop,
            addresses,
            ports,
            fail_mode,
            origin: self.origin(line),
        })
    }
}
