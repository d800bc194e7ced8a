//! Domain-name patterns, as the network-policy-api's `DomainName` (v1alpha2) writes them:
//! an exact name (`pypi.org`) or a leading `*.` wildcard (`*.pythonhosted.org`) that
//! stands for ONE OR MORE whole labels (so `a.b.pythonhosted.org` matches and
//! `pythonhosted.org` does not). Names compare case-insensitively and a trailing dot (a
//! fully qualified name) is tolerated on both sides, as DNS treats them.
//!
//! Upstream's regex, `^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+
//! [a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`, is checked label by label here so that
//! an error can say which label is wrong and why.

use std::fmt;

use stagewall_common::IDENTITY_NAME_FIRST;

/// The longest name DNS carries, as text without the trailing dot (RFC 1035 2.3.4).
pub const DOMAIN_MAX: usize = 253;
/// The longest label (RFC 1035 2.3.4).
pub const LABEL_MAX: usize = 63;

/// A domain-name pattern of an egress rule, in canonical form (lower case, no trailing
/// dot); `wildcard` when it began with `*.` (`suffix` is then the text after it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainPattern {
    text: String,
    wildcard: bool,
}

/// What is wrong with a pattern. The text says what was expected, for the parser to put
/// after the file and line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainPatternError {
    #[error("domain name is empty; expected a name such as pypi.org or *.pythonhosted.org")]
    Empty,
    #[error("domain name {0:?} is {1} characters long; expected at most {DOMAIN_MAX}")]
    TooLong(String, usize),
    #[error(
        "domain name {0:?} has a `*` that is not the whole first label; expected `*.` only at the start, as in *.pythonhosted.org"
    )]
    MisplacedWildcard(String),
    #[error(
        "domain name {0:?} has a single label; expected at least two (pypi.org, *.pythonhosted.org)"
    )]
    SingleLabel(String),
    #[error("domain name {0:?} has an empty label; expected labels separated by single dots")]
    EmptyLabel(String),
    #[error(
        "domain name {name:?}: label {label:?} is {len} characters long; expected at most {LABEL_MAX}"
    )]
    LabelTooLong {
        name: String,
        label: String,
        len: usize,
    },
    #[error(
        "domain name {name:?}: label {label:?} is not valid; expected letters, digits, `-` and `_`, starting and ending with a letter or digit"
    )]
    BadLabel { name: String, label: String },
}

impl DomainPattern {
    /// Parses a pattern as upstream's `DomainName` allows it.
    pub fn parse(text: &str) -> Result<DomainPattern, DomainPatternError> {
        let bad = || text.to_string();
        if text.is_empty() {
            return Err(DomainPatternError::Empty);
        }
        // Upstream's maxLength counts the text as written, trailing dot included.
        if text.len() > DOMAIN_MAX {
            return Err(DomainPatternError::TooLong(bad(), text.len()));
        }
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.contains('*') {
            return Err(DomainPatternError::MisplacedWildcard(bad()));
        }
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err(DomainPatternError::EmptyLabel(bad()));
        }
        // The regex wants one `label.` at least before the last label: two labels after
        // the wildcard, which is not a label of its own.
        if labels.len() < 2 {
            return Err(DomainPatternError::SingleLabel(bad()));
        }
        for label in &labels {
            if label.len() > LABEL_MAX {
                return Err(DomainPatternError::LabelTooLong {
                    name: bad(),
                    label: label.to_string(),
                    len: label.len(),
                });
            }
            if !valid_label(label) {
                return Err(DomainPatternError::BadLabel {
                    name: bad(),
                    label: label.to_string(),
                });
            }
        }
        let suffix = rest.to_ascii_lowercase();
        Ok(DomainPattern {
            text: if wildcard {
                format!("*.{suffix}")
            } else {
                suffix
            },
            wildcard,
        })
    }

    /// The canonical text: lower case, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Does a name from a DNS question or answer match? Case-insensitive, a trailing dot
    /// tolerated; a wildcard needs at least one whole label before its suffix.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.text);
        }
        // `*.suffix`: the name ends in `.suffix` with something before the dot.
        let dotted = &self.text[1..];
        name.len() > dotted.len()
            && name.is_char_boundary(name.len() - dotted.len())
            && name[name.len() - dotted.len()..].eq_ignore_ascii_case(dotted)
    }

    /// The pattern's identity (IDENTITY_NAME_FIRST and up): a hash of its canonical
    /// text, so it is the same in every compile and across restarts, as the learnt
    /// entries that carry it outlive both (stagewall-common).
    pub fn identity(&self) -> u32 {
        IDENTITY_NAME_FIRST | (fnv1a_32(self.text.as_bytes()) & !IDENTITY_NAME_FIRST)
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}

/// `[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?`
fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// 32-bit FNV-1a: small, fixed forever (identities must not change between builds), and
/// spreads short strings well enough; collisions are refused by the compiler.
fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(text: &str) -> DomainPattern {
        DomainPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_names_match_themselves_whatever_the_case_and_trailing_dot() {
        let pypi = p("PyPI.org.");
        assert_eq!(pypi.as_str(), "pypi.org");
        assert_eq!(pypi.to_string(), "pypi.org");
        assert!(!pypi.is_wildcard());
        for name in ["pypi.org", "PYPI.ORG", "pypi.org."] {
            assert!(pypi.matches(name), "{name}");
        }
        for name in ["www.pypi.org", "pypi.org.evil", "ypi.org", "pypi.orgx", ""] {
            assert!(!pypi.matches(name), "{name}");
        }
    }

    #[test]
    fn a_wildcard_matches_one_or_more_whole_labels() {
        let hosted = p("*.PythonHosted.org");
        assert_eq!(hosted.as_str(), "*.pythonhosted.org");
        assert!(hosted.is_wildcard());
        for name in [
            "files.pythonhosted.org",
            "a.b.pythonhosted.org.",
            "X.PYTHONHOSTED.ORG",
        ] {
            assert!(hosted.matches(name), "{name}");
        }
        for name in [
            "pythonhosted.org",
            "pythonhosted.org.",
            "xpythonhosted.org",
            ".pythonhosted.org.x",
            "files.pythonhosted.org.evil",
        ] {
            assert!(!hosted.matches(name), "{name}");
        }
    }

    #[test]
    fn bad_patterns_say_what_is_wrong_and_what_was_expected() {
        let err = |t: &str| DomainPattern::parse(t).unwrap_err().to_string();
        assert!(err("").contains("is empty"));
        assert!(err("org").contains("single label; expected at least two"));
        assert!(err("*.org").contains("single label"));
        assert!(err("pypi.*.org").contains("`*` that is not the whole first label"));
        assert!(err("*pypi.org").contains("`*` that is not the whole first label"));
        assert!(err("**.pypi.org").contains("`*`"));
        assert!(err("*").contains("`*`"));
        assert!(err("pypi..org").contains("empty label"));
        assert!(err(".pypi.org").contains("empty label"));
        assert!(err("pypi.org..").contains("empty label"));
        assert!(err("-pypi.org").contains("label \"-pypi\" is not valid"));
        assert!(err("pypi_.org").contains("label \"pypi_\" is not valid"));
        assert!(err("py pi.org").contains("not valid"));
        assert!(err("10.0.0.1/8").contains("not valid"));
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(err(&long_label).contains("64 characters long; expected at most 63"));
        let long_name = format!("{}org", "abcdefgh.".repeat(28));
        assert!(
            err(&long_name).contains("expected at most 253"),
            "{long_name}"
        );
        assert!(err("_x.org").contains("not valid"));
        // What upstream allows: underscores inside, digits anywhere, 63-character labels.
        for ok in ["a_b.org", "1.2", "3com.net", "x--y.example.com"] {
            assert!(DomainPattern::parse(ok).is_ok(), "{ok}");
        }
        assert!(DomainPattern::parse(&format!("{}.org", "a".repeat(63))).is_ok());
    }

    #[test]
    fn identities_are_pinned_and_in_the_name_range() {
        // FNV-1a of "pypi.org" with the top bit set: a kernel entry learnt by one build
        // must mean the same pattern to the next, so this value never changes.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(
            p("pypi.org").identity(),
            0x8000_0000 | fnv1a_32(b"pypi.org")
        );
        assert_eq!(p("pypi.org").identity(), 0xdfd0_ddb5);
        assert_eq!(p("PYPI.org.").identity(), p("pypi.org").identity());
        assert_ne!(p("*.pypi.org").identity(), p("pypi.org").identity());
        assert!(stagewall_common::is_name_identity(
            p("*.pythonhosted.org").identity()
        ));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([-a-zA-Z0-9_]{0,6}[a-zA-Z0-9])?"
    }

    proptest! {
        /// Whatever the case and trailing dot, a parsed pattern matches the name it was
        /// written as (without the `*.`, with a label in its place), and its canonical
        /// text parses to itself.
        #[test]
        fn patterns_match_what_they_name_and_round_trip(
            labels in proptest::collection::vec(label(), 2..5),
            wildcard: bool,
            extra in proptest::collection::vec(label(), 1..3),
            dot: bool,
        ) {
            let suffix = labels.join(".");
            let text = format!("{}{suffix}{}", if wildcard { "*." } else { "" }, if dot { "." } else { "" });
            let pattern = DomainPattern::parse(&text).unwrap();
            prop_assert_eq!(DomainPattern::parse(pattern.as_str()).unwrap(), pattern.clone());
            let longer = format!("{}.{}", extra.join("."), suffix.to_ascii_uppercase());
            prop_assert_eq!(pattern.matches(&suffix), !wildcard);
            prop_assert_eq!(pattern.matches(&format!("{longer}.")), wildcard);
        }

        /// Matching never panics, and a match is always the suffix (wildcard) or the
        /// whole name, compared without case.
        #[test]
        fn a_match_is_the_pattern_read_without_case(name in "[a-zA-Z0-9.*_-]{0,20}\\.?") {
            for pattern in [p("pypi.org"), p("*.pythonhosted.org")] {
                if pattern.matches(&name) {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    let suffix = pattern.as_str().trim_start_matches("*.");
                    let dotted = format!(".{suffix}");
                    prop_assert!(name == suffix || name.ends_with(&dotted));
                }
            }
        }
    }
}
