//! Which events a reader wants: the same filters for `GET /v1/events` and
//! `stagewall events`.

use super::{Verdict, VerdictEvent};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    /// `namespace/name`, or a name alone (any namespace).
    pub workload: Option<String>,
    /// dropped, would-drop or allowed.
    pub verdict: Option<Verdict>,
}

impl Filter {
    pub fn matches(&self, e: &VerdictEvent) -> bool {
        self.namespace.as_ref().is_none_or(|n| &e.namespace == n)
            && self.workload.as_ref().is_none_or(|w| {
                &e.workload == w || e.workload.rsplit('/').next() == Some(w.as_str())
            })
            && self.verdict.is_none_or(|v| e.verdict == v)
    }

    /// From a URL query: `namespace=..&workload=..&verdict=..` (other keys ignored). A
    /// verdict that is none of dropped, would-drop or allowed asks for Unknown: no event
    /// of a verdict the agent knows matches it.
    pub fn from_query(query: &str) -> Filter {
        let mut f = Filter::default();
        // form_urlencoded decodes `+` and percent escapes; a broken escape stays as it is
        // and bytes that are not UTF-8 become U+FFFD.
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "namespace" => f.namespace = Some(v),
                "workload" => f.workload = Some(v),
                "verdict" => f.verdict = Some(v.parse().unwrap_or(Verdict::Unknown)),
                _ => {}
            }
        }
        f
    }

    /// The query that `from_query` reads back.
    pub fn to_query(&self) -> String {
        [
            ("namespace", self.namespace.clone()),
            ("workload", self.workload.clone()),
            ("verdict", self.verdict.map(|v| v.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// Percent-encodes everything but unreserved characters (for URL queries).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let f = Filter {
            namespace: Some("ml-pipeline".into()),
            workload: Some("ml-pipeline/trainer 0".into()),
            verdict: Some(Verdict::WouldDrop),
        };
        assert_eq!(Filter::from_query(&f.to_query()), f);
        assert_eq!(
            Filter::from_query("namespace=ml+pipeline&workload=a%2Fb")
                .namespace
                .as_deref(),
            Some("ml pipeline")
        );
        assert_eq!(
            Filter::from_query("verdict=dropped&x=1").verdict,
            Some(Verdict::Dropped)
        );
    }

    #[test]
    fn a_broken_escape_before_a_multibyte_character_is_kept_as_it_is() {
        // Once a panic: the escape's two digits were sliced out of the middle of the é.
        let f = Filter::from_query("namespace=%a\u{e9}&workload=%zz%");
        assert_eq!(f.namespace.as_deref(), Some("%a\u{e9}"));
        assert_eq!(f.workload.as_deref(), Some("%zz%"));
    }
}
