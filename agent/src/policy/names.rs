//! Kubernetes object names, checked where they arrive from outside the parser (flow
//! records, the control socket): a namespace is a DNS-1123 label, most objects' names
//! (pods among them) DNS-1123 subdomains. What passes holds no whitespace, quote or line
//! break, so it can be written into YAML or a one-line request as it is.

use crate::policy::model::ObjectName;

/// At most 63 lowercase letters, digits and '-', starting and ending with a letter or
/// digit (RFC 1123, as Kubernetes checks namespaces).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// At most 253 characters: DNS-1123 labels joined by '.' (each label here may be up to
/// 253 long, as Kubernetes allows for a subdomain's parts).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// `namespace/name`, both valid; the error says what was expected.
pub fn object_name(s: &str) -> Result<ObjectName, String> {
    let expected = "expected namespace/name: a namespace of at most 63 lowercase letters, \
                    digits and '-', and a name of at most 253 lowercase letters, digits, '-' \
                    and '.', each starting and ending with a letter or digit";
    match s.split_once('/') {
        Some((namespace, name)) if is_dns1123_label(namespace) && is_dns1123_subdomain(name) => {
            Ok(ObjectName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!("{s:?} is not a valid namespace/name; {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123() {
        for ok in ["a", "ml", "a-b", "0", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "a b",
            "a\n",
            &"a".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain("trainer-0.v2"));
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        for bad in ["", "a..b", ".a", "a.", "a.-b", "a/b", "é", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert_eq!(object_name("ml/a.b").unwrap().to_string(), "ml/a.b");
        for bad in ["ml", "ml/", "/a", "ml/a/b", "m.l/a", "ml/a\n---"] {
            let e = object_name(bad).unwrap_err();
            assert!(e.contains("expected namespace/name"), "{e}");
        }
    }
}
