//! Metrics that describe rather than count, for joins in PromQL: what build runs, the
//! process itself, and which workloads the policy in force enforces with their namespace
//! and stage. Each is a gauge of 1 (or the process collector's own values); a query
//! multiplies another metric by them `on (workload)` to group it by namespace or stage.

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::{build_info::BuildInfo, compiler::Compiled};

/// Labels of `stagewall_workload_info`: `workload` as the other per-workload metrics
/// write it (`namespace/name`), its namespace, and its `stage` label ("" without one).
const WORKLOAD_INFO_LABELS: [&str; 3] = ["workload", "namespace", "stage"];

pub struct Info {
    workloads: IntGaugeVec,
}

impl Info {
    /// Registers the build info, the process metrics and the (empty) workload info.
    pub fn register(r: &Registry) -> Info {
        // What runs where, for joins: the version, the commit and the kernel release.
        let facts = BuildInfo::current();
        let build = IntGauge::with_opts(
            Opts::new("stagewall_build_info", "stagewall build; always 1.")
                .const_label("version", facts.version)
                .const_label("commit", facts.commit)
                .const_label("kernel", facts.kernel),
        )
        .expect("valid metric");
        build.set(1);
        r.register(Box::new(build)).expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...:
        // the agent's own cost, named as every other exporter names it.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        let workloads = IntGaugeVec::new(
            Opts::new(
                "stagewall_workload_info",
                "Local workloads the policy in force enforces, by workload (namespace/name), namespace and stage label (empty without one); always 1. Join on workload to group other metrics by namespace or stage.",
            ),
            &WORKLOAD_INFO_LABELS,
        )
        .expect("valid metric");
        r.register(Box::new(workloads.clone()))
            .expect("unique metric");
        Info { workloads }
    }

    /// The workloads of the policy in force, replacing those of the one before (a
    /// workload gone from the policy has no series left).
    pub fn set_policy(&self, policy: &Compiled) {
        self.workloads.reset();
        for e in &policy.endpoints {
            self.workloads
                .with_label_values(&[
                    e.workload.to_string().as_str(),
                    e.workload.namespace.as_str(),
                    e.stage.as_deref().unwrap_or(""),
                ])
                .set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compiler::{Endpoint, TierIds},
        policy::model::{Attachment, ObjectName},
    };

    fn gathered(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn workload_info_follows_the_policy_in_force() {
        let r = Registry::new();
        let info = Info::register(&r);
        let endpoint = |namespace: &str, name: &str, stage: Option<&str>| Endpoint {
            workload: ObjectName {
                namespace: namespace.into(),
                name: name.into(),
            },
            attachment: Attachment::Cgroup(format!("/{name}")),
            backstop: None,
            addresses: Vec::new(),
            stage: stage.map(String::from),
            endpoint_id: 1,
            ingress_policy_id: 0,
            egress_policy_id: 0,
            flags: 0,
            ingress_isolated_by: Vec::new(),
            egress_isolated_by: Vec::new(),
            tiers: TierIds::default(),
            shadow_tiers: TierIds::default(),
        };
        let mut policy = Compiled::default();
        policy.endpoints = vec![
            endpoint("ml", "trainer", Some("training")),
            endpoint("ml", "loader", None),
        ];
        info.set_policy(&policy);
        let text = gathered(&r);
        assert!(
            text.contains(
                r#"stagewall_workload_info{namespace="ml",stage="training",workload="ml/trainer"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"stagewall_workload_info{namespace="ml",stage="",workload="ml/loader"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        let facts = BuildInfo::current();
        assert!(
            text.contains(&format!(
                r#"stagewall_build_info{{commit="{}",kernel="{}",version="{}"}} 1"#,
                facts.commit, facts.kernel, facts.version
            )),
            "{text}"
        );
        policy.endpoints.truncate(1);
        info.set_policy(&policy);
        assert!(!gathered(&r).contains("ml/loader"));
    }
}
