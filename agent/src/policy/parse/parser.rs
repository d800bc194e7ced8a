//! The parser of one YAML text's documents: the file and line offset it reads, the errors
//! it collects, and the checks every kind shares (names, which spec fields a kind may
//! have, fail modes). The kinds add their own methods in the files beside this one.

use std::path::Path;

use serde_saphyr::Spanned;

use super::raw::RawSpec;
use crate::policy::{
    error::PolicyError,
    model::{DomainPattern, FailMode, Origin},
};

/// Parses documents of one text: the file, where in it the text starts, and the errors
/// found so far. A method that finds an error records it and returns None (or false);
/// the document is then skipped and parsing goes on with the next.
pub(super) struct DocumentParser<'a> {
    pub(super) file: &'a Path,
    pub(super) line_offset: u32,
    pub(super) errors: &'a mut Vec<PolicyError>,
}

impl DocumentParser<'_> {
    /// The file's line of a parsed value.
    pub(super) fn line<T>(&self, s: &Spanned<T>) -> u32 {
        s.referenced.line() as u32 + self.line_offset
    }

    pub(super) fn error(&mut self, line: u32, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    pub(super) fn origin(&self, line: u32) -> Origin {
        Origin {
            file: self.file.to_path_buf(),
            line,
        }
    }

    /// Rejects spec fields that belong to another kind.
    pub(super) fn only_fields(
        &mut self,
        spec: &RawSpec,
        line: u32,
        kind: &str,
        allowed: &[&str],
    ) -> bool {
        let foreign: Vec<&str> = spec
            .present()
            .into_iter()
            .filter(|f| !allowed.contains(f))
            .collect();
        if foreign.is_empty() {
            return true;
        }
        self.error(
            line,
            format!(
                "{kind} spec has {}, which belong to another kind; expected only {}",
                foreign.join(", "),
                allowed.join(", ")
            ),
        );
        false
    }

    pub(super) fn check_dns_name(&mut self, value: &Spanned<String>, field: &str) -> bool {
        let v = &value.value;
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !v.starts_with(['-', '.'])
            && !v.ends_with(['-', '.']);
        if !ok {
            self.error(
                self.line(value),
                format!("{field} {v:?} is not a valid name; expected lowercase letters, digits, '-' and '.', at most 253 characters"),
            );
        }
        ok
    }

    /// A domain-name pattern (a flow's `fqdn`, an entry of `domainNames`), or an error
    /// at its line saying what is wrong with it.
    pub(super) fn domain(&mut self, value: &Spanned<String>, field: &str) -> Option<DomainPattern> {
        match DomainPattern::parse(&value.value) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                self.error(self.line(value), format!("{field}: {e}"));
                None
            }
        }
    }

    pub(super) fn fail_mode(&mut self, value: &str, line: u32, field: &str) -> Option<FailMode> {
        match value {
            "closed" => Some(FailMode::Closed),
            "open" => Some(FailMode::Open),
            other => {
                self.error(
                    line,
                    format!("{field} {other:?} is invalid; expected closed or open"),
                );
                None
            }
        }
    }
}
