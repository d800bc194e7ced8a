//! YAML documents (multi-document files in a directory, or objects of the API server) to
//! the policy model. Every error names the file, the line and what was expected; parsing
//! never stops at the first bad document, so `stagewall check` reports all of them at once.
//!
//! From the bottom up: `raw` (the documents as written) -> `parser` (one text's parser and
//! the checks every kind shares) -> `labels`, `network_policy`,
//! `cluster_network_policy`, `stagewall_kinds` (each kind's spec) -> `document` (a text's documents, dispatched by kind) -> `whole_set`
//! (pipelines expanded, checks across documents) -> `cache` (documents unchanged since the
//! last load are not parsed again) -> `load` (the files of a directory).

mod cache;
mod cluster_network_policy;
mod document;
mod labels;
mod load;
mod network_policy;
mod parser;
mod raw;
mod stagewall_kinds;
mod whole_set;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;

pub use self::{
    cache::{ParseCache, split_documents},
    document::{API_CORE, API_NETWORKING, API_POLICY, API_STAGEWALL, parse_into, parse_text},
    load::{MAX_FILE_BYTES, list_files, load_dir, load_files, policy_files, read_policy_file},
    whole_set::{complete, validate_set},
};
