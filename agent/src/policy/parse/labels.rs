//! Labels and label selectors (matchLabels, matchExpressions), checked as Kubernetes
//! checks them.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::{parser::DocumentParser, raw::RawSelector};
use crate::policy::model::{LabelSelector, Labels, Requirement};

impl DocumentParser<'_> {
    pub(super) fn labels(&mut self, raw: &BTreeMap<String, String>, line: u32) -> Option<Labels> {
        for (k, v) in raw {
            if !valid_label_key(k) {
                self.error(line, format!("label key {k:?} is invalid; expected [prefix/]name with name of at most 63 alphanumerics, '-', '_' or '.'"));
                return None;
            }
            if !valid_label_value(v) {
                self.error(line, format!("label value {v:?} of {k:?} is invalid; expected at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"));
                return None;
            }
        }
        Some(raw.clone())
    }

    pub(super) fn selector(&mut self, raw: &Spanned<RawSelector>) -> Option<LabelSelector> {
        let line = self.line(raw);
        let sel = &raw.value;
        let match_labels = match &sel.match_labels {
            Some(l) => self.labels(l, line)?,
            None => Labels::new(),
        };
        let mut match_expressions = Vec::new();
        for req in sel.match_expressions.iter().flatten() {
            let line = self.line(req);
            let r = &req.value;
            let values = r.values.clone().unwrap_or_default();
            let requirement = match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    self.error(line, format!("matchExpressions operator {} needs values; expected a non-empty values list", r.operator));
                    return None;
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    self.error(line, format!("matchExpressions operator {} takes no values; expected values to be absent", r.operator));
                    return None;
                }
                "In" => Requirement::In(r.key.clone(), values),
                "NotIn" => Requirement::NotIn(r.key.clone(), values),
                "Exists" => Requirement::Exists(r.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
                other => {
                    self.error(line, format!("unknown matchExpressions operator {other:?}; expected In, NotIn, Exists or DoesNotExist"));
                    return None;
                }
            };
            if !valid_label_key(&r.key) {
                self.error(
                    line,
                    format!("matchExpressions key {:?} is not a valid label key", r.key),
                );
                return None;
            }
            match_expressions.push(requirement);
        }
        Some(LabelSelector {
            match_labels,
            match_expressions,
        })
    }
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub(super) fn valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && !name.contains('/')
                && valid_label_name(name)
        }
        None => valid_label_name(key),
    }
}

pub(super) fn valid_label_value(value: &str) -> bool {
    value.is_empty() || valid_label_name(value)
}
