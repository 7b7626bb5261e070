//! DNS (RFC 1035) for FQDN policy: parse a query (UDP payload, or TCP with
//! its 2-byte length prefix), match its name against allowed patterns,
//! answer REFUSED in place, and read A/AAAA answers of a response along the
//! CNAME chain of its question. No allocation, no panic on any bytes.
//!
//! Names may be compressed (RFC 1035 §4.1.4). A pointer must point strictly
//! before the label it replaces, so every walk goes backwards and ends; on
//! top, a walk follows at most [`MAX_POINTERS`] pointers and reads at most
//! 255 bytes of name (RFC 1035 §2.3.4), so a loop or an endless name is
//! refused ([`DnsError::BadName`]).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most compression pointers one name may follow.
pub const MAX_POINTERS: usize = 32;
/// Longest name on the wire (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Longest CNAME chain followed from the question.
pub const MAX_CHAIN: usize = 8;
/// Answer records a response may carry to be read (more: refused).
pub const MAX_ANSWERS: u16 = 64;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;
pub const RCODE_REFUSED: u8 = 5;

const HEADER: usize = field::ARCOUNT.end;

/// Byte ranges of the DNS header (RFC 1035 §4.1.1) and the TCP length
/// prefix (§4.2.2).
mod field {
    use core::ops::Range;
    pub const FLAGS: Range<usize> = 2..4;
    pub const ANCOUNT: Range<usize> = 6..8;
    pub const ARCOUNT: Range<usize> = 10..12;
    /// ANCOUNT, NSCOUNT and ARCOUNT together.
    pub const RECORD_COUNTS: Range<usize> = ANCOUNT.start..ARCOUNT.end;
    pub const TCP_LENGTH: Range<usize> = 0..2;
}

/// Why a DNS message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// message shorter than its header or a field it declares
    #[error("message shorter than its header or a field it declares")]
    Truncated,
    /// not a standard query with exactly one question
    #[error("not a standard query with exactly one question")]
    NotAQuery,
    /// not a response with exactly one question
    #[error("not a response with exactly one question")]
    NotAResponse,
    /// invalid name (label type, pointer loop or forward pointer, length)
    #[error("invalid name (label type, pointer loop or forward pointer, length)")]
    BadName,
    /// TCP message whose length prefix is not matched by the bytes
    #[error("TCP message whose length prefix is not matched by the bytes")]
    Incomplete,
    /// more answer records than are read
    #[error("more answer records than are read")]
    TooManyAnswers,
}

fn be16(m: &[u8], at: usize) -> Result<u16, DnsError> {
    match m.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(DnsError::Truncated),
    }
}

fn be32(m: &[u8], at: usize) -> Result<u32, DnsError> {
    match m.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(DnsError::Truncated),
    }
}

/// A (possibly compressed) name inside a message, validated.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a> {
    msg: &'a [u8],
    at: usize,
}

/// Validates the name at `at`; returns it and the offset just after it in
/// place (after its first pointer, or its root label).
fn read_name(msg: &[u8], at: usize) -> Result<(Name<'_>, usize), DnsError> {
    let mut pos = at;
    let mut end_in_place = None;
    let mut pointers = 0;
    let mut total = 1usize; // the root label
                            // The lowest offset a pointer may target: strictly before any label
                            // visited so far.
    let mut limit = at;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    let end = end_in_place.unwrap_or(pos + 1);
                    return Ok((Name { msg, at }, end));
                }
                total += 1 + usize::from(len);
                if total > MAX_NAME {
                    return Err(DnsError::BadName);
                }
                if msg.len() < pos + 1 + usize::from(len) {
                    return Err(DnsError::Truncated);
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let target = usize::from(be16(msg, pos)? & 0x3fff);
                if end_in_place.is_none() {
                    end_in_place = Some(pos + 2);
                }
                pointers += 1;
                // A name never starts inside the header: a pointer there
                // would make the name change when weir rewrites the header
                // (REFUSED in place), so the name judged would not be the
                // name answered.
                if target < HEADER || target >= limit || pointers > MAX_POINTERS {
                    return Err(DnsError::BadName);
                }
                limit = target;
                pos = target;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

impl<'a> Name<'a> {
    /// The labels, in order (not including the root).
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            msg: self.msg,
            pos: self.at,
            hops: 0,
        }
    }

    /// Case-insensitive equality of two names (of any messages).
    pub fn eq_name(&self, other: &Name<'_>) -> bool {
        let mut a = self.labels();
        let mut b = other.labels();
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => {}
                _ => return false,
            }
        }
    }

    /// Number of labels.
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Writes the dotted form (`www.example.com`, no final dot) into `out`
    /// and returns its length, or `None` if it does not fit.
    pub fn write_dotted(&self, out: &mut [u8]) -> Option<usize> {
        let mut n = 0;
        for (i, l) in self.labels().enumerate() {
            if i > 0 {
                *out.get_mut(n)? = b'.';
                n += 1;
            }
            out.get_mut(n..n + l.len())?.copy_from_slice(l);
            n += l.len();
        }
        Some(n)
    }
}

/// Iterator over the labels of a validated [`Name`].
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    msg: &'a [u8],
    pos: usize,
    hops: usize,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let len = *self.msg.get(self.pos)?;
            if len & 0xc0 == 0xc0 {
                self.hops += 1;
                if self.hops > MAX_POINTERS {
                    return None;
                }
                self.pos = usize::from(be16(self.msg, self.pos).ok()? & 0x3fff);
                continue;
            }
            if len == 0 || len & 0xc0 != 0 {
                return None;
            }
            let l = self
                .msg
                .get(self.pos + 1..self.pos + 1 + usize::from(len))?;
            self.pos += 1 + usize::from(len);
            return Some(l);
        }
    }
}

/// A parsed query.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    pub qname: Name<'a>,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset just after the question (QTYPE, QCLASS included).
    pub question_end: usize,
}

/// Parses a query from a UDP payload: QR=0, OPCODE=0 (QUERY), exactly one
/// question, no answer or authority records (an additional section, e.g.
/// an EDNS OPT record, is allowed and ignored).
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, DnsError> {
    if msg.len() < HEADER {
        return Err(DnsError::Truncated);
    }
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    let (qd, an, ns) = (be16(msg, 4)?, be16(msg, 6)?, be16(msg, 8)?);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qd != 1 || an != 0 || ns != 0 {
        return Err(DnsError::NotAQuery);
    }
    let (qname, end) = read_name(msg, HEADER)?;
    let qtype = be16(msg, end)?;
    let qclass = be16(msg, end + 2)?;
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        qname,
        qtype,
        qclass,
        question_end: end + 4,
    })
}

/// The DNS message of a TCP stream chunk starting with its 2-byte length.
pub fn tcp_message(stream: &[u8]) -> Result<&[u8], DnsError> {
    let len = usize::from(be16(stream, 0).map_err(|_| DnsError::Incomplete)?);
    stream.get(2..2 + len).ok_or(DnsError::Incomplete)
}

/// Parses a query sent over TCP (2-byte length prefix, RFC 1035 §4.2.2).
pub fn parse_query_tcp(stream: &[u8]) -> Result<Query<'_>, DnsError> {
    parse_query(tcp_message(stream)?)
}

/// Rewrites the query in `msg` into a REFUSED response in place: same id,
/// opcode, RD and question; QR=1, RCODE=5, no answer, authority or
/// additional records (an EDNS OPT record is dropped). Returns the new
/// length (the end of the question).
pub fn refuse_in_place(msg: &mut [u8]) -> Result<usize, DnsError> {
    let q = parse_query(msg)?;
    let end = q.question_end;
    let flags = 0x8000 | if q.rd { 0x0100 } else { 0 } | u16::from(RCODE_REFUSED);
    msg[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
    msg[field::RECORD_COUNTS].fill(0);
    Ok(end)
}

/// [`refuse_in_place`] for a TCP message with its length prefix (rewritten
/// too). Returns the new length including the prefix.
pub fn refuse_in_place_tcp(stream: &mut [u8]) -> Result<usize, DnsError> {
    let len = tcp_message(stream)?.len();
    let at = field::TCP_LENGTH.end;
    let n = refuse_in_place(&mut stream[at..at + len])?;
    let n16 = u16::try_from(n).map_err(|_| DnsError::Truncated)?;
    stream[field::TCP_LENGTH].copy_from_slice(&n16.to_be_bytes());
    Ok(n + at)
}

/// A pattern of allowed names: `example.com` (exactly), `*.example.com`
/// (exactly one more, non-empty label: not `example.com`, not
/// `a.b.example.com`, as Cilium's `matchPattern`), or `*` (any name).
/// Case-insensitive; a final dot is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    wildcard: bool,
    /// Lowercase labels of the fixed part, in order.
    labels: Vec<Vec<u8>>,
}

impl NamePattern {
    pub fn parse(s: &str) -> Option<NamePattern> {
        let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if s == "*" {
            return Some(NamePattern {
                wildcard: true,
                labels: Vec::new(),
            });
        }
        let (wildcard, fixed) = match s.strip_prefix("*.") {
            Some(f) => (true, f),
            None => (false, s.as_str()),
        };
        let labels: Vec<Vec<u8>> = fixed.split('.').map(|l| l.as_bytes().to_vec()).collect();
        let ok = labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        ok.then_some(NamePattern { wildcard, labels })
    }

    /// Whether `name` matches. Does not allocate.
    pub fn matches(&self, name: &Name<'_>) -> bool {
        if self.wildcard && self.labels.is_empty() {
            return true;
        }
        let n = name.label_count();
        let skip = usize::from(self.wildcard);
        if n != self.labels.len() + skip {
            return false;
        }
        name.labels()
            .skip(skip)
            .zip(&self.labels)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl NamePattern {
    /// Whether a dotted name (`www.example.com`, a final dot ignored)
    /// matches; the same rules as [`NamePattern::matches`]. Does not allocate.
    pub fn matches_dotted(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if self.wildcard && self.labels.is_empty() {
            return !name.is_empty();
        }
        let skip = usize::from(self.wildcard);
        if name.split('.').count() != self.labels.len() + skip {
            return false;
        }
        if self.wildcard && name.split('.').next().is_none_or(str::is_empty) {
            return false;
        }
        name.split('.')
            .skip(skip)
            .zip(&self.labels)
            .all(|(a, b)| a.as_bytes().eq_ignore_ascii_case(b))
    }
}

/// Allowed names of one DNS rule: any pattern matching allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsRuleSet {
    patterns: Vec<NamePattern>,
}

impl DnsRuleSet {
    /// Compiles patterns; returns the first invalid one on error.
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| NamePattern::parse(p.as_ref()).ok_or_else(|| p.as_ref().to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(|patterns| DnsRuleSet { patterns })
    }

    pub fn allows(&self, name: &Name<'_>) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }
}

/// A resource record's place in a message.
#[derive(Debug, Clone, Copy)]
struct Rr<'a> {
    owner: Name<'a>,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    rdlen: usize,
}

fn read_rr(msg: &[u8], at: usize) -> Result<(Rr<'_>, usize), DnsError> {
    let (owner, p) = read_name(msg, at)?;
    let rtype = be16(msg, p)?;
    let class = be16(msg, p + 2)?;
    let ttl = be32(msg, p + 4)?;
    let rdlen = usize::from(be16(msg, p + 8)?);
    let rdata = p + 10;
    if msg.len() < rdata + rdlen {
        return Err(DnsError::Truncated);
    }
    if rtype == TYPE_CNAME {
        // The target must be a valid name inside the RDATA.
        let (_, end) = read_name(msg, rdata)?;
        if end > rdata + rdlen {
            return Err(DnsError::BadName);
        }
    }
    Ok((
        Rr {
            owner,
            rtype,
            class,
            ttl,
            rdata,
            rdlen,
        },
        rdata + rdlen,
    ))
}

/// A parsed response: its question and answer section, validated.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    msg: &'a [u8],
    pub id: u16,
    pub rcode: u8,
    pub qname: Name<'a>,
    pub qtype: u16,
    answers_at: usize,
    ancount: u16,
}

/// Parses a response (UDP payload): QR=1, exactly one question, every
/// answer record well-formed (at most [`MAX_ANSWERS`]). Authority and
/// additional sections are not read.
pub fn parse_response(msg: &[u8]) -> Result<Response<'_>, DnsError> {
    if msg.len() < HEADER {
        return Err(DnsError::Truncated);
    }
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 || be16(msg, 4)? != 1 {
        return Err(DnsError::NotAResponse);
    }
    let ancount = be16(msg, 6)?;
    if ancount > MAX_ANSWERS {
        return Err(DnsError::TooManyAnswers);
    }
    let (qname, end) = read_name(msg, HEADER)?;
    let qtype = be16(msg, end)?;
    let _qclass = be16(msg, end + 2)?;
    let answers_at = end + 4;
    let mut p = answers_at;
    for _ in 0..ancount {
        p = read_rr(msg, p)?.1;
    }
    Ok(Response {
        msg,
        id,
        rcode: (flags & 0xf) as u8,
        qname,
        qtype,
        answers_at,
        ancount,
    })
}

impl<'a> Response<'a> {
    /// The A/AAAA answers (class IN) whose owner is the question's name or
    /// is reached from it by CNAME records of the answer section (at most
    /// [`MAX_CHAIN`] hops), with the smallest TTL along the way. Records for
    /// other names are ignored (they were not asked for). Nothing if the
    /// RCODE is not NOERROR.
    pub fn addresses(&self) -> Addresses<'a> {
        Addresses {
            resp: *self,
            pos: self.answers_at,
            left: if self.rcode == 0 { self.ancount } else { 0 },
        }
    }

    fn answers(&self) -> impl Iterator<Item = Rr<'a>> + 'a {
        let msg = self.msg;
        let mut pos = self.answers_at;
        (0..self.ancount).map_while(move |_| {
            let (rr, next) = read_rr(msg, pos).ok()?;
            pos = next;
            Some(rr)
        })
    }

    /// If `owner` is on the CNAME chain of the question, the smallest TTL of
    /// the CNAME records leading to it (`u32::MAX` for the question itself).
    fn chain_ttl(&self, owner: &Name<'_>) -> Option<u32> {
        let mut cur = self.qname;
        let mut ttl = u32::MAX;
        for _ in 0..=MAX_CHAIN {
            if cur.eq_name(owner) {
                return Some(ttl);
            }
            let cname = self.answers().find(|rr| {
                rr.rtype == TYPE_CNAME && rr.class == CLASS_IN && rr.owner.eq_name(&cur)
            })?;
            ttl = ttl.min(cname.ttl);
            cur = read_name(self.msg, cname.rdata).ok()?.0;
        }
        None
    }
}

/// Iterator of (address, TTL in seconds) from [`Response::addresses`].
#[derive(Debug, Clone)]
pub struct Addresses<'a> {
    resp: Response<'a>,
    pos: usize,
    left: u16,
}

impl Iterator for Addresses<'_> {
    type Item = (IpAddr, u32);
    fn next(&mut self) -> Option<(IpAddr, u32)> {
        while self.left > 0 {
            self.left -= 1;
            let (rr, next) = read_rr(self.resp.msg, self.pos).ok()?;
            self.pos = next;
            if rr.class != CLASS_IN {
                continue;
            }
            let rdata = self.resp.msg.get(rr.rdata..rr.rdata + rr.rdlen)?;
            let addr = match (rr.rtype, rdata) {
                (TYPE_A, &[a, b, c, d]) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                (TYPE_AAAA, r) if r.len() == 16 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(r);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                _ => continue,
            };
            if let Some(chain) = self.resp.chain_ttl(&rr.owner) {
                return Some((addr, rr.ttl.min(chain)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `dns` fuzz target: a question name whose compression
    /// pointer points into the header (offset 1) read the flags and counts
    /// as labels, and changed when the header was rewritten to REFUSED.
    #[test]
    fn a_pointer_into_the_header_is_a_bad_name() {
        let msg: [u8; 49] = [
            0x00, 0x07, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x02,
            0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x31, 0x02, 0x02, 0x02, 0x02, 0x02,
            0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x15, 0x15, 0xc0, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        ];
        assert!(parse_query(&msg).is_err());
        let mut q = vec![0u8; 12];
        q[5] = 1; // one question
        q.extend_from_slice(&[0xc0, 0x04, 0x00, 0x01, 0x00, 0x01]);
        assert_eq!(parse_query(&q).err(), Some(DnsError::BadName));
    }
}
