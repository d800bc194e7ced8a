//! Kubernetes Events for the objects the agent does not enforce: those the parser refuses
//! (reason `Refused`: a NetworkPolicy, a Pipeline... with its line and what was expected)
//! and those it leaves out of the desired state (reason `LeftOut`, see
//! `Cluster::desired`). One Warning on the object each time it becomes refused or left
//! out, so that whoever wrote it sees why in `kubectl describe` or `kubectl get events`.
//! Events are only ever created, never patched or deleted: the agent's role may create
//! events and nothing else.

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

/// Why an object is not enforced, as an event's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotEnforced {
    /// The parser refused this version; the previous one, if any, stays in force.
    Refused,
    /// Left out of the desired state; the rest is enforced.
    LeftOut,
}

impl NotEnforced {
    fn reason(self) -> &'static str {
        match self {
            NotEnforced::Refused => "Refused",
            NotEnforced::LeftOut => "LeftOut",
        }
    }

    /// The event's note: what happened on `node`, and what that leaves in force.
    fn note(self, node: &str, message: &str) -> String {
        match self {
            NotEnforced::Refused => format!(
                "refused on node {node}, its previous version (if any) stays in force: {message}"
            ),
            NotEnforced::LeftOut => {
                format!("left out on node {node}, the rest is enforced: {message}")
            }
        }
    }
}

pub struct ObjectEvents {
    client: Client,
    node: String,
    /// The watched kinds' API resources, to name an object by its kind.
    resources: Vec<ApiResource>,
    /// The objects (why, file, error) already reported, as of the last report.
    reported: BTreeSet<(NotEnforced, PathBuf, String)>,
}

impl ObjectEvents {
    pub fn new(client: Client, node: &str, resources: Vec<ApiResource>) -> ObjectEvents {
        ObjectEvents {
            client,
            node: node.to_string(),
            resources,
            reported: BTreeSet::new(),
        }
    }

    /// Creates an event for each error of an object not enforced that was not reported
    /// the last time (in the background: the API server's answer is only logged).
    pub fn report<'a>(&mut self, errors: impl IntoIterator<Item = (NotEnforced, &'a PolicyError)>) {
        let now: BTreeSet<(NotEnforced, PathBuf, String)> = errors
            .into_iter()
            .map(|(why, e)| {
                (
                    why,
                    e.file.clone(),
                    format!("line {}: {}", e.line, e.message),
                )
            })
            .collect();
        for (why, file, message) in now.difference(&self.reported) {
            let Some(reference) = self.reference(file) else {
                continue;
            };
            let event = self.event(reference, *why, message);
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

    fn event(&self, regarding: ObjectReference, why: NotEnforced, message: &str) -> Event {
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
            reason: Some(why.reason().into()),
            // The API server caps a note at 1 kB.
            note: Some(why.note(&self.node, message).chars().take(1000).collect()),
            regarding: Some(regarding),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(format!("{CONTROLLER}-{}", self.node)),
            type_: Some("Warning".into()),
            ..Default::default()
        }
    }
}
