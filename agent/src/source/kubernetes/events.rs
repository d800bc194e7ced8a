//! Kubernetes Events for the objects the agent leaves out of the desired state (see
//! `Cluster::desired`): one Warning on the object each time it becomes left out, so that
//! whoever wrote it sees why in `kubectl describe` or `kubectl get events`. Events are
//! only ever created, never patched or deleted: the agent's role may create events and
//! nothing else.

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ApiResource, PostParams},
};

use super::cluster::key_of_file;
use crate::policy::error::PolicyError;

/// Who reports: the agent of one node.
const CONTROLLER: &str = "stagewall.io/agent";

pub struct LeftOutEvents {
    client: Client,
    node: String,
    /// The watched kinds' API resources, to name an object by its kind.
    resources: Vec<ApiResource>,
    /// The left-out objects (file, error) already reported, as of the last state given.
    reported: BTreeSet<(PathBuf, String)>,
}

impl LeftOutEvents {
    pub fn new(client: Client, node: &str, resources: Vec<ApiResource>) -> LeftOutEvents {
        LeftOutEvents {
            client,
            node: node.to_string(),
            resources,
            reported: BTreeSet::new(),
        }
    }

    /// Creates an event for each error of `left_out` not reported for the last state
    /// (in the background: the API server's answer is only logged).
    pub fn report(&mut self, left_out: &[PolicyError]) {
        let now: BTreeSet<(PathBuf, String)> = left_out
            .iter()
            .map(|e| (e.file.clone(), e.message.clone()))
            .collect();
        for (file, message) in now.difference(&self.reported) {
            let Some(reference) = self.reference(file) else {
                continue;
            };
            let event = self.event(reference, message);
            let events: Api<Event> = Api::namespaced(
                self.client.clone(),
                event.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let file = file.clone();
            tokio::spawn(async move {
                if let Err(e) = events.create(&PostParams::default(), &event).await {
                    log::warn!(
                        "Kubernetes: could not create the event for {}: {e}",
                        file.display()
                    );
                }
            });
        }
        self.reported = now;
    }

    /// The object an error's file names (`kubernetes/<kind>[/<namespace>]/<name>`).
    fn reference(&self, file: &std::path::Path) -> Option<ObjectReference> {
        let (plural, namespace, name) = key_of_file(file)?;
        let resource = self.resources.iter().find(|r| r.plural == plural)?;
        Some(ObjectReference {
            api_version: Some(resource.api_version.clone()),
            kind: Some(resource.kind.clone()),
            namespace: (!namespace.is_empty()).then_some(namespace),
            name: Some(name),
            ..Default::default()
        })
    }

    fn event(&self, regarding: ObjectReference, message: &str) -> Event {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("stagewall"),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Enforce".into()),
            reason: Some("LeftOut".into()),
            // The API server caps a note at 1 kB.
            note: Some(
                format!(
                    "left out on node {}, the rest is enforced: {message}",
                    self.node
                )
                .chars()
                .take(1000)
                .collect(),
            ),
            regarding: Some(regarding),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(format!("{CONTROLLER}-{}", self.node)),
            type_: Some("Warning".into()),
            ..Default::default()
        }
    }
}
