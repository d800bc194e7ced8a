//! Domain names on the wire (RFC 1035 4.1.4): labels, compression pointers, and the
//! canonical text the rest of the agent matches rules against.

use super::WireError;

/// Longest name as text (RFC 1035 2.3.4: 255 octets on the wire, so 253 characters
/// without the root's empty label and the length octets).
pub const NAME_MAX: usize = 253;
/// Most compression pointers followed while reading one name. Each pointer must also
/// point before the label that holds it, so reading always ends; this bounds the work.
const POINTER_HOPS_MAX: usize = 32;

/// A name in canonical text: ASCII lower case, labels joined by '.', no trailing dot
/// (the root is ""). Held inline, so parsing allocates nothing per name. A label byte
/// must be printable ASCII other than '.' (0x21..=0x7e): a name with any other byte (a
/// '.' inside a label would read as two labels) is refused, so the text always stands
/// for exactly one wire name.
#[derive(Clone, Copy)]
pub struct Name {
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl Name {
    pub const ROOT: Name = Name {
        len: 0,
        bytes: [0; NAME_MAX],
    };

    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored (`push_label`), so this cannot fail.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The name of `text` (case and one trailing dot ignored), checked as the wire
    /// would: labels of 1 to 63 bytes, at most NAME_MAX characters.
    pub fn from_text(text: &str) -> Result<Name, WireError> {
        let text = text.strip_suffix('.').unwrap_or(text);
        let mut name = Name::ROOT;
        if text.is_empty() {
            return Ok(name);
        }
        for label in text.split('.') {
            name.push_label(label.as_bytes())?;
        }
        Ok(name)
    }

    /// The labels, for encoding.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        self.as_str()
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::as_bytes)
    }

    fn push_label(&mut self, label: &[u8]) -> Result<(), WireError> {
        if label.is_empty() || label.len() > 63 {
            return Err(WireError::BadName);
        }
        let at = self.len as usize;
        let dot = usize::from(at > 0);
        if at + dot + label.len() > NAME_MAX {
            return Err(WireError::BadName);
        }
        if dot == 1 {
            self.bytes[at] = b'.';
        }
        for (i, &b) in label.iter().enumerate() {
            if !(0x21..=0x7e).contains(&b) || b == b'.' {
                return Err(WireError::BadName);
            }
            self.bytes[at + dot + i] = b.to_ascii_lowercase();
        }
        self.len = (at + dot + label.len()) as u8;
        Ok(())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads the name at `pos` of `msg`: gives the name (when `decode`; else the root, after
/// checking the structure only) and the position after it in the sequence that holds it
/// (after the first pointer, if any).
pub(super) fn read_name(msg: &[u8], pos: usize, decode: bool) -> Result<(Name, usize), WireError> {
    let mut name = Name::ROOT;
    let mut at = pos;
    let mut end = None;
    let mut hops = 0;
    // Octets of the name on the wire (length octets included), at most 255.
    let mut wire_len = 0usize;
    loop {
        let &len = msg.get(at).ok_or(WireError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                wire_len += 1 + len as usize;
                if wire_len > 255 {
                    return Err(WireError::BadName);
                }
                if len == 0 {
                    return Ok((name, end.unwrap_or(at + 1)));
                }
                let label = msg
                    .get(at + 1..at + 1 + len as usize)
                    .ok_or(WireError::Truncated)?;
                if decode {
                    name.push_label(label)?;
                }
                at += 1 + len as usize;
            }
            0xc0 => {
                let &low = msg.get(at + 1).ok_or(WireError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                hops += 1;
                // Strictly backwards: no loop, whatever the hop limit.
                if target >= at || hops > POINTER_HOPS_MAX {
                    return Err(WireError::BadPointer);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(WireError::BadName), // 0x40 and 0x80: obsolete label types
        }
    }
}
