//! What is wrong with the policy input, kept structured until it is printed: each error
//! names where (file and line, or a Kubernetes object) and what was expected. Parsing,
//! pipeline expansion and the whole-set checks all report in these terms, and the sources
//! hand them on unchanged to whoever prints them (`stagewall check`, the agent's log).

use std::path::PathBuf;

/// One problem in the input: where, what is wrong, and what was expected. Printed as
/// `FILE:LINE: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct PolicyError {
    /// The policy file, or for an object of the API server
    /// `kubernetes/<kind>/<namespace>/<name>`.
    pub file: PathBuf,
    /// The line in `file` (0: the file or object as a whole).
    pub line: u32,
    pub message: String,
}

/// All the errors of one load, in file and line order. Printed one error a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_a_line(.0))]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` if `errors` is empty, else `Err` with them.
    pub fn result<T>(errors: Vec<PolicyError>, value: T) -> Result<T, PolicyErrors> {
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(PolicyErrors(errors))
        }
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn one_a_line(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(PolicyError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error and its sources on one line, joined by `: `, as anyhow's `{:#}` prints an
/// error: for the library's typed errors, whose own text is one step of the chain. Here
/// at the bottom of the crate so that every part may print errors this way.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_as_file_line_message_one_a_line() {
        let error = |file: &str, line, message: &str| PolicyError {
            file: file.into(),
            line,
            message: message.into(),
        };
        let errors = PolicyErrors(vec![
            error("a.yaml", 3, "invalid CIDR"),
            error("kubernetes/pods/ml/t0", 0, "not a v1 Pod"),
        ]);
        assert_eq!(
            errors.to_string(),
            "a.yaml:3: invalid CIDR\nkubernetes/pods/ml/t0:0: not a v1 Pod"
        );
        assert_eq!(PolicyErrors(Vec::new()).to_string(), "");
    }

    #[test]
    fn a_chain_prints_as_anyhow_prints_it() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading {0}")]
        struct Reading(&'static str, #[source] std::io::Error);
        let e = Reading("x.json", std::io::Error::other("gone"));
        let expected = format!(
            "{:#}",
            anyhow::Error::new(Reading("x.json", std::io::Error::other("gone")))
        );
        assert_eq!(Chain(&e).to_string(), expected);
        assert_eq!(expected, "reading x.json: gone");
    }
}
