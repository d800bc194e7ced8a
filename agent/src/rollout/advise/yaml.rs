//! Text written into the advised YAML. Names and labels reach advise from the records and
//! the inventory, which may hold text an attacker chose (a pod name); written raw, a line
//! break in one ends a comment and starts a document of its own. So every string is
//! written as a double-quoted scalar, escaped to printable ASCII, and comments hold only
//! printable ASCII.

use std::{borrow::Cow, fmt::Write as _};

/// `s` as a YAML double-quoted scalar that is printable ASCII: quotes and backslashes
/// escaped, everything else outside ' '..='~' as `\xNN`, `\uNNNN` or `\UNNNNNNNN` (YAML
/// 1.2 §5.7), so no line break of any spelling (\n, \r, NEL, LS, PS) is left in it.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// `s` for a comment: as it is when it is printable ASCII (a valid name always is),
/// quoted and escaped otherwise, so a comment is always one line.
pub fn in_comment(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| matches!(c, ' '..='~')) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(quoted(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_one_printable_ascii_line_that_yaml_reads_back() {
        let nasty = "a\"b\\c\nd\re\u{85}f\u{2028}g\u{2029}h\u{0}i\u{7f}j\u{1F600}k: #l";
        let q = quoted(nasty);
        assert!(q.chars().all(|c| matches!(c, ' '..='~')), "{q}");
        let back: String = serde_saphyr::from_str(&q).unwrap();
        assert_eq!(back, nasty);
        assert_eq!(in_comment("ml/trainer-0"), "ml/trainer-0");
        assert_eq!(in_comment("a\nb"), "\"a\\nb\"");
    }
}
