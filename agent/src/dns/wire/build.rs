//! Writing DNS messages: a query (what a workload sends) and a response, for tests and
//! the unit tests' stand-in resolver. Names are written without compression.

use std::net::IpAddr;

use super::{
    CLASS_IN, FLAG_QR, FLAG_RA, FLAG_RD, HEADER_LEN, Name, TYPE_A, TYPE_AAAA, TYPE_CNAME, WireError,
};

fn put_name(out: &mut Vec<u8>, name: &Name) {
    for label in name.labels() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

fn header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// A standard query (recursion desired) for `name` and `qtype` in class IN.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let name = Name::from_text(name)?;
    let mut out = Vec::with_capacity(HEADER_LEN + 260);
    header(&mut out, id, FLAG_RD, [1, 0, 0, 0]);
    put_name(&mut out, &name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// A response to one question, built record by record.
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    id: u16,
    flags: u16,
    question: (Name, u16),
    answers: Vec<u8>,
    count: u16,
}

impl ResponseBuilder {
    /// A NOERROR response (recursion desired and available) to `name` and `qtype`.
    pub fn new(id: u16, name: &str, qtype: u16) -> Result<Self, WireError> {
        Ok(ResponseBuilder {
            id,
            flags: FLAG_QR | FLAG_RD | FLAG_RA,
            question: (Name::from_text(name)?, qtype),
            answers: Vec::new(),
            count: 0,
        })
    }

    /// Sets the flags word (QR, TC, RCODE...) as it is on the wire.
    pub fn flags(mut self, flags: u16) -> Self {
        self.flags = flags;
        self
    }

    fn record(
        mut self,
        owner: &str,
        rtype: u16,
        ttl: u32,
        rdata: &[u8],
    ) -> Result<Self, WireError> {
        put_name(&mut self.answers, &Name::from_text(owner)?);
        self.answers.extend_from_slice(&rtype.to_be_bytes());
        self.answers.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.answers.extend_from_slice(&ttl.to_be_bytes());
        let len = u16::try_from(rdata.len()).map_err(|_| WireError::TooLong)?;
        self.answers.extend_from_slice(&len.to_be_bytes());
        self.answers.extend_from_slice(rdata);
        self.count = self.count.checked_add(1).ok_or(WireError::TooLong)?;
        Ok(self)
    }

    /// An A or AAAA answer, by the address's family.
    pub fn addr(self, owner: &str, ttl: u32, addr: IpAddr) -> Result<Self, WireError> {
        match addr {
            IpAddr::V4(a) => self.record(owner, TYPE_A, ttl, &a.octets()),
            IpAddr::V6(a) => self.record(owner, TYPE_AAAA, ttl, &a.octets()),
        }
    }

    pub fn cname(self, owner: &str, ttl: u32, target: &str) -> Result<Self, WireError> {
        let mut data = Vec::new();
        put_name(&mut data, &Name::from_text(target)?);
        self.record(owner, TYPE_CNAME, ttl, &data)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 260 + self.answers.len());
        header(&mut out, self.id, self.flags, [1, self.count, 0, 0]);
        put_name(&mut out, &self.question.0);
        out.extend_from_slice(&self.question.1.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&self.answers);
        out
    }
}
