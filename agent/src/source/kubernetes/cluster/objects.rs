//! What the view reads of an API object besides what the parser reads: a Node's name,
//! labels and addresses, and the object with what other writers change stripped, as the
//! parser is given it.

use std::net::IpAddr;

use super::object_path;
use crate::policy::model::{Labels, Node, Origin};

/// A Node's name, labels and addresses (status.addresses: InternalIP, ExternalIP; host
/// names are skipped). Read leniently, not by the parser: the API server has validated
/// the object, and a Node refused here would silently leave nodes peers short of it.
pub(super) fn node_info(object: &serde_json::Value) -> Node {
    let mut addresses: Vec<IpAddr> = object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["address"].as_str()?.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    let labels: Labels = object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    Node {
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        labels,
        addresses,
        origin: Origin {
            file: object_path("nodes", object),
            line: 0,
        },
    }
}

/// An object as the parser reads it: without what the API server and the agents write on
/// their own (`metadata.managedFields`, `metadata.resourceVersion`, `status`). The lines
/// errors name are lines of this text, so a status write (each node's agent makes one,
/// and server-side apply adds a managedFields entry per node, above the spec) neither
/// moves them nor makes every agent rebuild its policy.
pub(super) fn spec_only(object: &serde_json::Value) -> serde_json::Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    object
}
