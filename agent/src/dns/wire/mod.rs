//! DNS messages on the wire (RFC 1035 4.1), read from untrusted bytes: every length is
//! checked, every loop is bounded, and nothing here panics. The proxy reads what it needs
//! of an answer (ID, flags, the question, A, AAAA and CNAME answers with their TTLs),
//! skips the rest (authority, additional, EDNS's OPT record) after checking its
//! structure, and follows the CNAME chain from the question (`resolve_chain`).

mod build;
mod name;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use build::{ResponseBuilder, query};
pub use name::{NAME_MAX, Name};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub const FLAG_QR: u16 = 1 << 15;
pub const FLAG_TC: u16 = 1 << 9;
pub const FLAG_RD: u16 = 1 << 8;
pub const FLAG_RA: u16 = 1 << 7;
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_NXDOMAIN: u8 = 3;

pub const HEADER_LEN: usize = 12;
/// Most A, AAAA and CNAME answers of one message kept (more are an error: no resolver
/// sends them for one question, and they would only cost time).
pub const ANSWERS_MAX: usize = 256;
/// Most CNAMEs followed from the question to the addresses.
pub const CHAIN_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a name is malformed (label type, length or a byte a name may not hold)")]
    BadName,
    #[error("a compression pointer points forward or too often")]
    BadPointer,
    #[error("a record's data does not fit its type")]
    BadRecord,
    #[error("more than {ANSWERS_MAX} address and CNAME answers")]
    TooManyAnswers,
    #[error("a DNS message over TCP is at most 65535 bytes")]
    TooLong,
}

/// The question of a message with exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

// Names are held inline (no allocation per record); an address answer wastes the room.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RData {
    Addr(IpAddr),
    Cname(Name),
}

/// An answer record of class IN and type A, AAAA or CNAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub owner: Name,
    /// Seconds; a TTL with the top bit set reads as 0 (RFC 2181 8).
    pub ttl: u32,
    pub data: RData,
}

/// A parsed message: the header, its question (when it has exactly one), and the answers
/// the proxy learns from.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub question_count: u16,
    /// The question when there is exactly one (several questions are never learnt from).
    pub question: Option<Question>,
    pub answers: Vec<Record>,
}

impl Message {
    /// Reads `raw`; an error names the first field that is wrong. Bytes after the
    /// sections the header announces are ignored.
    pub fn parse(raw: &[u8]) -> Result<Message, WireError> {
        let header = raw.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
        let (id, flags) = (word(0), word(2));
        let counts = [word(4), word(6), word(8), word(10)];
        let mut pos = HEADER_LEN;
        let mut question = None;
        for _ in 0..counts[0] {
            let (name, after) = name::read_name(raw, pos, counts[0] == 1)?;
            let fixed = raw.get(after..after + 4).ok_or(WireError::Truncated)?;
            question = Some(Question {
                name,
                qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
                qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
            });
            pos = after + 4;
        }
        if counts[0] != 1 {
            question = None;
        }
        let mut answers = Vec::new();
        let records = u32::from(counts[1]) + u32::from(counts[2]) + u32::from(counts[3]);
        for i in 0..records {
            let in_answers = i < u32::from(counts[1]);
            pos = read_record(raw, pos, in_answers, &mut answers)?;
        }
        Ok(Message {
            id,
            flags,
            question_count: counts[0],
            question,
            answers,
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub fn is_truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }

    /// Whether addresses may be learnt from this message: a complete (not truncated)
    /// NOERROR response to a standard query with one question, for A or AAAA in class IN.
    pub fn is_learnable(&self) -> bool {
        self.is_response()
            && !self.is_truncated()
            && self.opcode() == 0
            && self.rcode() == RCODE_NOERROR
            && self.question.is_some_and(|q| {
                q.qclass == CLASS_IN && (q.qtype == TYPE_A || q.qtype == TYPE_AAAA)
            })
    }
}

/// Reads the resource record at `pos`, keeping it in `answers` when it is an answer the
/// proxy learns from; gives the position after it.
fn read_record(
    raw: &[u8],
    pos: usize,
    in_answers: bool,
    answers: &mut Vec<Record>,
) -> Result<usize, WireError> {
    let (_, after_owner) = name::read_name(raw, pos, false)?;
    let fixed = raw
        .get(after_owner..after_owner + 10)
        .ok_or(WireError::Truncated)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let start = after_owner + 10;
    let rdata = raw.get(start..start + rdlen).ok_or(WireError::Truncated)?;
    let end = start + rdlen;
    // EDNS's OPT (class is the UDP size, "TTL" the extended flags) and every other type
    // are skipped here: their data is in bounds, which is all that matters.
    if !in_answers || class != CLASS_IN {
        return Ok(end);
    }
    let data = match rtype {
        TYPE_A => {
            let b: [u8; 4] = rdata.try_into().map_err(|_| WireError::BadRecord)?;
            RData::Addr(IpAddr::V4(Ipv4Addr::from(b)))
        }
        TYPE_AAAA => {
            let b: [u8; 16] = rdata.try_into().map_err(|_| WireError::BadRecord)?;
            RData::Addr(IpAddr::V6(Ipv6Addr::from(b)))
        }
        TYPE_CNAME => {
            // The target may point back into the message, but must end where the data does.
            let (target, after) = name::read_name(raw, start, true)?;
            if after != end {
                return Err(WireError::BadRecord);
            }
            RData::Cname(target)
        }
        _ => return Ok(end),
    };
    if answers.len() == ANSWERS_MAX {
        return Err(WireError::TooManyAnswers);
    }
    let (owner, _) = name::read_name(raw, pos, true)?;
    let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
    answers.push(Record { owner, ttl, data });
    Ok(end)
}

/// What an answer says a question's name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The question's name, then each CNAME target in order (canonical text).
    pub names: Vec<String>,
    /// The addresses of the last name, each with the smallest TTL along the chain.
    pub addrs: Vec<(IpAddr, u32)>,
}

/// Follows the CNAME chain of a learnable message (`Message::is_learnable`) from its
/// question to the addresses. None when the message is not learnable, the chain is
/// longer than CHAIN_MAX, loops, or forks (two CNAMEs for one name). A chain that ends
/// without addresses (NODATA) gives its names and no addresses.
pub fn resolve_chain(msg: &Message) -> Option<Resolution> {
    if !msg.is_learnable() {
        return None;
    }
    let question = msg.question?;
    let mut chain: Vec<Name> = vec![question.name];
    let mut ttl = u32::MAX;
    loop {
        let current = chain[chain.len() - 1];
        let mut next = None;
        for r in &msg.answers {
            if let RData::Cname(target) = r.data
                && r.owner == current
            {
                if next.is_some() {
                    return None; // a fork: not an answer anyone can follow
                }
                next = Some((target, r.ttl));
            }
        }
        let Some((target, cname_ttl)) = next else {
            break;
        };
        if chain.contains(&target) || chain.len() > CHAIN_MAX {
            return None;
        }
        ttl = ttl.min(cname_ttl);
        chain.push(target);
    }
    let last = chain[chain.len() - 1];
    let mut addrs = Vec::new();
    for r in &msg.answers {
        if let RData::Addr(addr) = r.data
            && r.owner == last
            && !addrs.iter().any(|(a, _)| *a == addr)
        {
            addrs.push((addr, ttl.min(r.ttl)));
        }
    }
    Some(Resolution {
        names: chain.iter().map(|n| n.as_str().to_string()).collect(),
        addrs,
    })
}

/// Lowers every answer record's TTL in `raw` to at most `max` seconds, in place, so that
/// no client caches an address longer than the proxy keeps it learnt. `raw` must be a
/// message `Message::parse` accepted (else an error, and nothing is guaranteed changed).
pub fn cap_ttls(raw: &mut [u8], max: u32) -> Result<(), WireError> {
    let word = |raw: &[u8], i: usize| -> Result<u16, WireError> {
        let b = raw.get(i..i + 2).ok_or(WireError::Truncated)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    let (questions, answers) = (word(raw, 4)?, word(raw, 6)?);
    let mut pos = HEADER_LEN;
    for _ in 0..questions {
        pos = name::read_name(raw, pos, false)?.1 + 4;
    }
    for _ in 0..answers {
        let at = name::read_name(raw, pos, false)?.1;
        let ttl = raw.get_mut(at + 4..at + 8).ok_or(WireError::Truncated)?;
        let value = u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]);
        // A TTL with the top bit set reads as 0 (RFC 2181 8): write what it means.
        let capped = if value > i32::MAX as u32 {
            0
        } else {
            value.min(max)
        };
        ttl.copy_from_slice(&capped.to_be_bytes());
        pos = at + 10 + usize::from(word(raw, at + 8)?);
    }
    Ok(())
}

/// The length a TCP message's 2-byte prefix announces (RFC 1035 4.2.2).
pub fn tcp_length(prefix: [u8; 2]) -> usize {
    usize::from(u16::from_be_bytes(prefix))
}

/// The 2-byte prefix of a message sent over TCP.
pub fn tcp_prefix(msg: &[u8]) -> Result<[u8; 2], WireError> {
    u16::try_from(msg.len())
        .map(u16::to_be_bytes)
        .map_err(|_| WireError::TooLong)
}

/// Whether `reply` answers `query`: the same ID and, where the query has one question,
/// the same question (name compared without case). A reply that fails this is not the
/// resolver's answer to this query (spoofed or stale) and is dropped.
pub fn answers_query(query: &Message, reply: &Message) -> bool {
    reply.is_response()
        && reply.id == query.id
        && reply.question_count == query.question_count
        && reply.question == query.question
}
