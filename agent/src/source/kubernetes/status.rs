//! The status of the stagewall.io objects (Pipeline, Workload): whether each node's agent
//! accepted the object's current generation (or why not, with the line) and enforces it,
//! and the sum of that over the nodes: `Accepted` and `Enforced` conditions and
//! `enforced: N/M` (what `kubectl get pipelines` shows).
//!
//! Many agents write one object's status, so the writes are laid out not to fight:
//! - Each agent owns one entry of `status.nodes` (a list-map keyed by node), written by
//!   server-side apply under a field manager of its own node. Appliers of different
//!   entries never conflict and no agent reads before writing; the list is bounded by the
//!   schema (`maxItems`), one entry per node, so 1,000 nodes are 1,000 small entries.
//! - The sum (conditions, counts) is computed by the agent that just wrote its entry, from
//!   the object the API server answered with, and written with that object's
//!   resourceVersion as a precondition. A write based on a stale object is refused (409)
//!   and dropped, not retried: the agent whose entry write came last holds the current
//!   resourceVersion, so its sum is written, and it counts every entry. No agent retries
//!   against another, so a change costs at most two writes per node.
//! - Writes happen only when this node's verdict on an object changed, at most once per
//!   `DEBOUNCE` for a burst of changes (a rollout touching many objects is one round).
//!
//! An entry of a node that is gone (its Node object deleted) is not counted; it stays in
//! the list until the object is recreated or the entry patched away.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{cluster::Key, seen::Seen};
use crate::policy::error::PolicyError;

/// The kinds whose objects carry a status (the stagewall.io CRDs have the subresource).
pub const STATUS_KINDS: [&str; 2] = ["pipelines", "workloads"];

/// How long a change waits for more before the statuses are written: one round of
/// writes for a burst of changes.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// How long a failed write waits before it is tried again (without a change meanwhile).
const RETRY: Duration = Duration::from_secs(30);

/// The API server caps a condition's message; entries keep theirs short (one per node).
const ENTRY_MESSAGE_MAX: usize = 256;

/// What this node says of one object's generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The object's uid: one deleted and made again under its name is written anew.
    pub uid: String,
    pub generation: i64,
    pub accepted: bool,
    pub enforced: bool,
    /// CamelCase, as condition reasons are: Enforced, NotApplied, Invalid, LeftOut.
    pub reason: &'static str,
    pub message: String,
    /// The line of the object's JSON the error is at (0: the object as a whole).
    pub line: u32,
}

/// What became of this node's desired state, as the objects' status reports it: the
/// outcome of applying the last state given to the agent (`last_given`; a failed apply
/// leaves the state before it in the kernel, and says so), or why the latest desired
/// state was refused (never given). A refused state reverted to the last one given
/// (nothing to apply) reports that one's outcome again, not the refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    last_given: Result<(), String>,
    latest: Result<(), String>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            last_given: Ok(()),
            latest: Ok(()),
        }
    }
}

impl Applied {
    /// The agent applied the desired state last given (or failed to).
    pub fn applied(&mut self, outcome: Result<(), String>) {
        self.last_given = outcome.clone();
        self.latest = outcome;
    }

    /// The latest desired state was refused; the last one given stays.
    pub fn refused(&mut self, why: String) {
        self.latest = Err(why);
    }

    /// The desired state is the last one given again.
    pub fn back_to_last_given(&mut self) {
        self.latest = self.last_given.clone();
    }

    /// What the status says of the objects accepted.
    pub fn outcome(&self) -> Result<(), &str> {
        self.latest.as_ref().map(|_| ()).map_err(String::as_str)
    }
}

/// This node's verdicts on every object with a status: refused by the parser (`seen`),
/// left out of the desired state (`left_out`), or accepted, and then enforced if the
/// last desired state was `applied`.
pub fn verdicts(
    seen: &BTreeMap<Key, Seen>,
    left_out: &[PolicyError],
    applied: Result<(), &str>,
) -> BTreeMap<Key, Verdict> {
    let left_out: BTreeMap<Key, &PolicyError> = left_out
        .iter()
        .filter_map(|e| Some((super::cluster::key_of_file(&e.file)?, e)))
        .collect();
    seen.iter()
        .filter(|(key, _)| STATUS_KINDS.contains(&key.0.as_str()))
        .map(|(key, seen)| {
            let error = seen
                .refused
                .as_ref()
                .and_then(|errors| errors.iter().next())
                .map(|e| ("Invalid", e))
                .or_else(|| left_out.get(key).map(|e| ("LeftOut", *e)));
            let verdict = match (error, applied) {
                (Some((reason, e)), _) => Verdict {
                    uid: seen.uid.clone(),
                    generation: seen.generation,
                    accepted: false,
                    enforced: false,
                    reason,
                    message: format!("line {}: {}", e.line, e.message),
                    line: e.line,
                },
                (None, Ok(())) => Verdict {
                    uid: seen.uid.clone(),
                    generation: seen.generation,
                    accepted: true,
                    enforced: true,
                    reason: "Enforced",
                    message: String::new(),
                    line: 0,
                },
                (None, Err(why)) => Verdict {
                    uid: seen.uid.clone(),
                    generation: seen.generation,
                    accepted: true,
                    enforced: false,
                    reason: "NotApplied",
                    message: why.to_string(),
                    line: 0,
                },
            };
            (key.clone(), verdict)
        })
        .collect()
}

/// What the writer is given: every verdict, and the nodes that exist (None: not known).
#[derive(Clone, Debug, Default, PartialEq)]
struct Round {
    verdicts: BTreeMap<Key, Verdict>,
    nodes: Option<BTreeSet<String>>,
}

/// Writes this node's verdicts in the background, as described above.
pub struct StatusWriter {
    round: watch::Sender<Round>,
}

impl StatusWriter {
    pub fn start(client: Client, node: &str, resources: &[ApiResource]) -> StatusWriter {
        let (round, rounds) = watch::channel(Round::default());
        let resources: Vec<ApiResource> = resources
            .iter()
            .filter(|r| STATUS_KINDS.contains(&r.plural.as_str()))
            .cloned()
            .collect();
        tokio::spawn(write_rounds(client, node.to_string(), resources, rounds));
        StatusWriter { round }
    }

    /// The verdicts now; written if they differ from those written last.
    pub fn report(&self, verdicts: BTreeMap<Key, Verdict>, nodes: Option<BTreeSet<String>>) {
        self.round.send_if_modified(|round| {
            let next = Round { verdicts, nodes };
            let changed = *round != next;
            *round = next;
            changed
        });
    }
}

async fn write_rounds(
    client: Client,
    node: String,
    resources: Vec<ApiResource>,
    mut rounds: watch::Receiver<Round>,
) {
    let mut written: BTreeMap<Key, Verdict> = BTreeMap::new();
    let mut failed = false;
    loop {
        let next = if failed {
            tokio::time::timeout(RETRY, rounds.changed())
                .await
                .unwrap_or(Ok(()))
        } else {
            rounds.changed().await
        };
        if next.is_err() {
            return; // the agent is gone
        }
        tokio::time::sleep(DEBOUNCE).await;
        let round = rounds.borrow_and_update().clone();
        written.retain(|key, _| round.verdicts.contains_key(key));
        failed = false;
        for (key, verdict) in &round.verdicts {
            if written.get(key) == Some(verdict) {
                continue;
            }
            let Some(resource) = resources.iter().find(|r| r.plural == key.0) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.1, resource);
            match write(&api, resource, &node, &key.2, verdict, round.nodes.as_ref()).await {
                Ok(()) => {
                    written.insert(key.clone(), verdict.clone());
                }
                // Deleted meanwhile: its next version is another round.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    failed = true;
                    log::warn!(
                        "Kubernetes: could not write the status of {} {}/{} (tried again in {RETRY:?}): {e}",
                        resource.kind,
                        key.1,
                        key.2
                    );
                }
            }
        }
    }
}

/// The field manager of one node's entries.
fn manager(node: &str) -> String {
    // Field managers are at most 128 characters; node names up to 253.
    format!("stagewall-agent-{node}")
        .chars()
        .take(128)
        .collect()
}

/// Applies this node's entry of `name`'s status, then the sum if it changed.
async fn write(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    node: &str,
    name: &str,
    verdict: &Verdict,
    nodes: Option<&BTreeSet<String>>,
) -> Result<(), kube::Error> {
    let entry = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name},
        "status": {"nodes": [entry(node, verdict)]},
    });
    let params = PatchParams::apply(&manager(node)).force();
    let object = api
        .patch_status(name, &params, &Patch::Apply(&entry))
        .await?;
    let object = serde_json::to_value(&object).expect("API objects serialise");
    let Some(sum) = sum(&object, nodes, Timestamp::now()) else {
        return Ok(());
    };
    let patch = json!({
        "metadata": {"resourceVersion": object["metadata"]["resourceVersion"]},
        "status": sum,
    });
    let params = PatchParams {
        field_manager: Some("stagewall-agent".into()),
        ..Default::default()
    };
    match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        // Another entry was written since: the agent that wrote it writes the sum.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        result => result.map(drop),
    }
}

fn entry(node: &str, v: &Verdict) -> Value {
    let mut entry = json!({
        "node": node,
        "observedGeneration": v.generation,
        "accepted": v.accepted,
        "enforced": v.enforced,
        "reason": v.reason,
    });
    if !v.message.is_empty() {
        entry["message"] = v
            .message
            .chars()
            .take(ENTRY_MESSAGE_MAX)
            .collect::<String>()
            .into();
    }
    if v.line > 0 {
        entry["line"] = v.line.into();
    }
    entry
}

/// The status fields summing up `object`'s node entries (those of `nodes` only, when
/// known), or None when the object already says so. A condition keeps its
/// lastTransitionTime while its status stays.
fn sum(object: &Value, nodes: Option<&BTreeSet<String>>, now: Timestamp) -> Option<Value> {
    let generation = object["metadata"]["generation"]
        .as_i64()
        .unwrap_or_default();
    let status = &object["status"];
    let entries: Vec<&Value> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| nodes.is_none_or(|nodes| e["node"].as_str().is_some_and(|n| nodes.contains(n))))
        .collect();
    let current: Vec<&&Value> = entries
        .iter()
        .filter(|e| e["observedGeneration"].as_i64() == Some(generation))
        .collect();
    let reporting = entries.len();
    let enforced = current.iter().filter(|e| e["enforced"] == true).count();
    let rejected = current.iter().find(|e| e["accepted"] == false);
    let (accepted, accepted_reason, accepted_message) = match rejected {
        Some(e) => (
            "False",
            e["reason"].as_str().unwrap_or("Rejected").to_string(),
            format!(
                "rejected on node {}: {}",
                e["node"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            ),
        ),
        None if current.is_empty() => (
            "Unknown",
            "Pending".into(),
            format!("no node has reported generation {generation} yet"),
        ),
        None => (
            "True",
            "Accepted".into(),
            format!("accepted on {} of {reporting} nodes", current.len()),
        ),
    };
    let (last_given, last_given_reason) = match enforced {
        0 => ("False", "NotEnforced"),
        n if n == reporting => ("True", "Enforced"),
        _ => ("False", "PartlyEnforced"),
    };
    let condition = |type_: &str, status_: &str, reason: &str, message: String| {
        let before = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_);
        let since = match before {
            Some(c) if c["status"] == status_ => c["lastTransitionTime"].clone(),
            _ => now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
        };
        json!({
            "type": type_,
            "status": status_,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        })
    };
    let sum = json!({
        "observedGeneration": generation,
        "enforced": format!("{enforced}/{reporting}"),
        "enforcedNodes": enforced,
        "reportingNodes": reporting,
        "conditions": [
            condition("Accepted", accepted, &accepted_reason, accepted_message),
            condition(
                "Enforced",
                last_given,
                last_given_reason,
                format!("enforced on {enforced} of {reporting} nodes"),
            ),
        ],
    });
    let unchanged = [
        "observedGeneration",
        "enforced",
        "enforcedNodes",
        "reportingNodes",
        "conditions",
    ]
    .iter()
    .all(|field| status[field] == sum[field]);
    (!unchanged).then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::error::PolicyErrors;

    fn object(generation: i64, nodes: Value) -> Value {
        json!({"metadata": {"generation": generation}, "status": {"nodes": nodes}})
    }

    #[test]
    fn the_sum_counts_current_entries_of_existing_nodes() {
        let now = Timestamp::UNIX_EPOCH;
        let o = object(
            2,
            json!([
                {"node": "a", "observedGeneration": 2, "accepted": true, "enforced": true},
                {"node": "b", "observedGeneration": 1, "accepted": true, "enforced": true},
                {"node": "gone", "observedGeneration": 2, "accepted": true, "enforced": true},
            ]),
        );
        let nodes: BTreeSet<String> = ["a".into(), "b".into()].into();
        let s = sum(&o, Some(&nodes), now).unwrap();
        assert_eq!(s["enforced"], "1/2");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["conditions"][1]["reason"], "PartlyEnforced");
        // Written back, the same sum is no change: no second write.
        let mut written = o.clone();
        for (k, v) in s.as_object().unwrap() {
            written["status"][k] = v.clone();
        }
        assert_eq!(sum(&written, Some(&nodes), now), None);
    }

    /// A refused desired state reverted to the last one given: nothing is applied (it is
    /// in force), so the status must say that state's outcome again (it kept saying
    /// NotApplied until the next change).
    #[test]
    fn a_refused_state_reverted_to_the_one_last_given_reports_its_outcome() {
        let mut applied = Applied::default();
        applied.applied(Ok(()));
        applied.refused("this node's desired state was refused: too large".into());
        assert_eq!(
            applied.outcome(),
            Err("this node's desired state was refused: too large")
        );
        applied.back_to_last_given();
        assert_eq!(applied.outcome(), Ok(()));
        // A state given that failed to apply stays failed after a refusal is reverted.
        applied.applied(Err("maps full".into()));
        applied.refused("refused".into());
        applied.back_to_last_given();
        assert_eq!(applied.outcome(), Err("maps full"));
    }

    #[test]
    fn verdicts_say_refused_left_out_enforced_or_not_applied() {
        let key = |kind: &str, name: &str| (kind.to_string(), "ml".to_string(), name.to_string());
        let error = |kind: &str, name: &str, line| PolicyError {
            file: format!("kubernetes/{kind}/ml/{name}").into(),
            line,
            message: "what is wrong; expected this".into(),
        };
        let seen = |refused: Option<PolicyError>| Seen {
            uid: "u".into(),
            generation: 3,
            refused: refused.map(|e| PolicyErrors(vec![e])),
        };
        let seen: BTreeMap<Key, Seen> = [
            (
                key("pipelines", "bad"),
                seen(Some(error("pipelines", "bad", 7))),
            ),
            (key("workloads", "clash"), seen(None)),
            (key("pipelines", "good"), seen(None)),
            // No status: NetworkPolicies' refusals are Events only.
            (
                key("networkpolicies", "np"),
                seen(Some(error("networkpolicies", "np", 2))),
            ),
        ]
        .into();
        let left_out = [error("workloads", "clash", 0)];
        let v = verdicts(&seen, &left_out, Ok(()));
        assert_eq!(v.len(), 3);
        let bad = &v[&key("pipelines", "bad")];
        assert_eq!((bad.accepted, bad.reason, bad.line), (false, "Invalid", 7));
        assert_eq!(bad.message, "line 7: what is wrong; expected this");
        assert_eq!(v[&key("workloads", "clash")].reason, "LeftOut");
        let good = &v[&key("pipelines", "good")];
        assert_eq!(
            (good.accepted, good.enforced, good.generation),
            (true, true, 3)
        );
        let failed = verdicts(&seen, &left_out, Err("the kernel refused it"));
        let good = &failed[&key("pipelines", "good")];
        assert_eq!(
            (good.accepted, good.enforced, good.reason),
            (true, false, "NotApplied")
        );
    }

    #[test]
    fn a_rejection_names_its_node_reason_and_line() {
        let o = object(
            1,
            json!([
                {"node": "a", "observedGeneration": 1, "accepted": false, "enforced": false,
                 "reason": "Invalid", "message": "line 12: flow names stage \"x\"", "line": 12},
            ]),
        );
        let s = sum(&o, None, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][0]["reason"], "Invalid");
        assert_eq!(
            s["conditions"][0]["message"],
            "rejected on node a: line 12: flow names stage \"x\""
        );
        assert_eq!(s["enforced"], "0/1");
    }
}
