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
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            Filter::from_query("verdict=dropped&x=1").verdict,
            Some(Verdict::Dropped)
        );
    }
}
