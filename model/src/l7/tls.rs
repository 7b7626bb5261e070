//! TLS server-name (SNI) rules, judged on the client's first flight without
//! terminating TLS: the ClientHello is reassembled from the client→server
//! byte stream (bounded, in the same head buffers as HTTP heads), its
//! `server_name` read, and the connection allowed or refused before the
//! hello's last byte reaches the server.
//!
//! Parsed by hand rather than with `tls-parser` (rusticata): only the
//! record framing, the ClientHello's fixed fields and two extensions
//! (`server_name`, `encrypted_client_hello`) are read, and tls-parser
//! collects records, messages and extensions into `Vec`s (an allocation per
//! hello on the worker). Everything here works on borrowed bytes, never
//! allocates, and never panics on any input.
//!
//! Strictness (every ambiguity is a deny, like the HTTP parser):
//! - the stream must start with handshake records (content type 22,
//!   version 3.x, 1..=16384 bytes each) carrying exactly one ClientHello,
//!   which ends at the end of a record (no other handshake message after it
//!   in the first flight); a hello in several records is put together;
//! - ClientHello fields must fill the message exactly (session id ≤ 32,
//!   cipher suites even and non-empty, at least one compression method,
//!   extensions filling the rest); at most [`MAX_EXTENSIONS`] extensions,
//!   no type twice (RFC 8446 §4.2);
//! - `server_name`: exactly one `host_name` entry, a valid DNS name (ASCII
//!   letters, digits, `-`, `_`, labels of 1..=63 bytes, ≤ 253 bytes, no
//!   final dot: RFC 6066 §3);
//! - `encrypted_client_hello` (0xfe0d), or the older draft ESNI (0xffce):
//!   the real name is hidden, refused where TLS rules apply;
//! - no `server_name`: refused where TLS rules apply.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::dns::NamePattern;
use super::L7Reason;

/// Record content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Largest plaintext record (RFC 8446 §5.1).
const RECORD_MAX: usize = 16384;
/// Most extensions read in one hello (real clients send about 20).
pub const MAX_EXTENSIONS: usize = 64;
/// Extension types.
const EXT_SERVER_NAME: u16 = 0;
const EXT_ECH: u16 = 0xfe0d;
const EXT_ESNI_DRAFT: u16 = 0xffce;

/// What a ClientHello says that rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The `host_name` of `server_name`, as sent (validated, not lowercased).
    pub sni: Option<&'a str>,
    /// An `encrypted_client_hello` (or draft ESNI) extension is present.
    pub ech: bool,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// Where the ClientHello that starts `stream` ends: `Ok(Some(n))` when its
/// last record is complete at stream byte `n`, `Ok(None)` when more bytes
/// are needed, `Err` as soon as the bytes so far cannot start a valid hello
/// (checked byte by byte, so nothing invalid is forwarded while waiting).
pub fn hello_extent(stream: &[u8]) -> Result<Option<usize>, L7Reason> {
    let mut o = 0usize;
    // The handshake header (type + 24-bit length) as it arrives, and how
    // many handshake bytes were seen so far.
    let mut hdr = [0u8; 4];
    let mut have = 0usize;
    loop {
        let rest = stream.get(o..).unwrap_or_default();
        if let Some(&t) = rest.first() {
            if t != HANDSHAKE {
                return Err(L7Reason::TlsMalformed);
            }
        }
        if let Some(&v) = rest.get(1) {
            if v != 3 {
                return Err(L7Reason::TlsMalformed);
            }
        }
        let Some(rec_len) = be16(rest, 3) else {
            return Ok(None);
        };
        if rec_len == 0 || rec_len > RECORD_MAX {
            return Err(L7Reason::TlsMalformed);
        }
        let body = rest.get(5..).unwrap_or_default();
        let got = body.len().min(rec_len);
        for &b in body.iter().take(got) {
            if have < 4 {
                hdr[have] = b;
                if have == 0 && b != CLIENT_HELLO {
                    return Err(L7Reason::TlsMalformed);
                }
            }
            have += 1;
        }
        let need = (have >= 4).then(|| {
            4 + ((usize::from(hdr[1]) << 16) | (usize::from(hdr[2]) << 8) | usize::from(hdr[3]))
        });
        if let Some(need) = need {
            if have > need {
                // Another message after the hello in its record.
                return Err(L7Reason::TlsMalformed);
            }
        }
        if got < rec_len {
            return Ok(None);
        }
        o += 5 + rec_len;
        if need == Some(have) {
            return Ok(Some(o));
        }
    }
}

/// Puts the handshake bytes of the records in `buf[..end]` (a complete
/// hello: [`hello_extent`] said `Some(end)`) together at the start of
/// `buf`, in place; returns their length.
pub fn defragment(buf: &mut [u8], end: usize) -> usize {
    let end = end.min(buf.len());
    let (mut r, mut w) = (0usize, 0usize);
    while r + 5 <= end {
        let Some(n) = be16(buf, r + 3) else { break };
        let from = r + 5;
        let to = (from + n).min(end);
        buf.copy_within(from..to, w);
        w += to - from;
        r = from + n;
    }
    w
}

/// Reads a ClientHello handshake message (`hs`: type, length, body).
pub fn parse_client_hello(hs: &[u8]) -> Result<ClientHello<'_>, L7Reason> {
    let bad = L7Reason::TlsMalformed;
    let (Some(&CLIENT_HELLO), Some(l)) = (hs.first(), hs.get(1..4)) else {
        return Err(bad);
    };
    let len = (usize::from(l[0]) << 16) | (usize::from(l[1]) << 8) | usize::from(l[2]);
    let body = hs.get(4..).unwrap_or_default();
    if body.len() != len {
        return Err(bad);
    }
    // legacy_version: TLS 1.0 .. 1.2 (TLS 1.3 sends 1.2 here).
    match body.get(..2) {
        Some([3, 1..=3]) => {}
        _ => return Err(bad),
    }
    let mut at = 2 + 32;
    let sid = usize::from(*body.get(at).ok_or(bad)?);
    if sid > 32 {
        return Err(bad);
    }
    at += 1 + sid;
    let suites = be16(body, at).ok_or(bad)?;
    if suites == 0 || suites % 2 != 0 {
        return Err(bad);
    }
    at += 2 + suites;
    let comp = usize::from(*body.get(at).ok_or(bad)?);
    if comp == 0 {
        return Err(bad);
    }
    at += 1 + comp;
    if at > body.len() {
        return Err(bad);
    }
    let mut hello = ClientHello {
        sni: None,
        ech: false,
    };
    if at == body.len() {
        // No extensions (TLS ≤ 1.2 allows it): no server name.
        return Ok(hello);
    }
    let ext_len = be16(body, at).ok_or(bad)?;
    let exts = body.get(at + 2..).unwrap_or_default();
    if exts.len() != ext_len {
        return Err(bad);
    }
    let mut types = [0u16; MAX_EXTENSIONS];
    let mut count = 0usize;
    let mut p = 0usize;
    while p < exts.len() {
        let t = be16(exts, p).ok_or(bad)? as u16;
        let n = be16(exts, p + 2).ok_or(bad)?;
        let data = exts.get(p + 4..p + 4 + n).ok_or(bad)?;
        p += 4 + n;
        if count == MAX_EXTENSIONS || types[..count].contains(&t) {
            return Err(bad);
        }
        types[count] = t;
        count += 1;
        match t {
            EXT_SERVER_NAME => hello.sni = Some(server_name(data)?),
            EXT_ECH | EXT_ESNI_DRAFT => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The one `host_name` of a `server_name` extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<&str, L7Reason> {
    let bad = L7Reason::TlsMalformed;
    let list = be16(data, 0).ok_or(bad)?;
    if list + 2 != data.len() {
        return Err(bad);
    }
    // Exactly one entry: type host_name (0), 2-byte length, the name.
    if data.get(2) != Some(&0) {
        return Err(bad);
    }
    let n = be16(data, 3).ok_or(bad)?;
    if 5 + n != data.len() {
        return Err(bad);
    }
    let name = data.get(5..).unwrap_or_default();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split(|&b| b == b'.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(bad);
    }
    std::str::from_utf8(name).map_err(|_| bad)
}

/// Why a complete first flight is refused before any rule is looked at:
/// ECH hides the name rules would judge; without a name there is nothing
/// to judge.
pub fn precheck<'a>(h: &ClientHello<'a>) -> Result<&'a str, L7Reason> {
    if h.ech {
        return Err(L7Reason::TlsEch);
    }
    h.sni.ok_or(L7Reason::TlsNoSni)
}

/// The TLS part of a port rule's L7 set: allowed server names (plain data:
/// `name` or `*.suffix`, or `*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRuleSpec {
    pub sni: String,
}

/// Compiled server-name patterns; the first match allows.
#[derive(Debug, Clone, Default)]
pub struct TlsRuleSet {
    patterns: Vec<NamePattern>,
}

impl TlsRuleSet {
    /// Compiles the patterns; `Err(i)`: pattern `i` is not a name,
    /// `*.name` or `*`.
    pub fn compile(spec: &[TlsRuleSpec]) -> Result<Self, usize> {
        let mut patterns = Vec::with_capacity(spec.len());
        for (i, r) in spec.iter().enumerate() {
            patterns.push(NamePattern::parse(&r.sni).ok_or(i)?);
        }
        Ok(TlsRuleSet { patterns })
    }

    /// Index of the first pattern matching the server name (allow), or
    /// `None` (deny). Case-insensitive; does not allocate.
    pub fn judge(&self, sni: &str) -> Option<usize> {
        self.patterns.iter().position(|p| p.matches_dotted(sni))
    }

    /// Whether the set has no pattern (then it is not a TLS set).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello captured from Python's `ssl` (OpenSSL 3) with
    /// `server_hostname="api.example.com"`: one 512-byte record.
    const PYTHON_HELLO: &[u8] = include_bytes!("testdata/client_hello_python_api.example.com.bin");

    fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
        let mut d = Vec::new();
        d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name);
        (0, d)
    }

    /// A handshake message ClientHello with these extensions.
    fn hello_msg(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[0x5a; 32]);
        b.push(0); // session id
        b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        b.extend_from_slice(&[1, 0]); // null compression
        let mut e = Vec::new();
        for (t, d) in exts {
            e.extend_from_slice(&t.to_be_bytes());
            e.extend_from_slice(&(d.len() as u16).to_be_bytes());
            e.extend_from_slice(d);
        }
        b.extend_from_slice(&(e.len() as u16).to_be_bytes());
        b.extend_from_slice(&e);
        let mut m = vec![CLIENT_HELLO];
        m.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&b);
        m
    }

    /// `msg` in records of at most `max` bytes.
    fn records(msg: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in msg.chunks(max) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    fn judge_stream(stream: &[u8]) -> Result<Option<String>, L7Reason> {
        let mut buf = stream.to_vec();
        let end = hello_extent(&buf)?.expect("complete");
        assert_eq!(end, stream.len());
        let n = defragment(&mut buf, end);
        let h = parse_client_hello(&buf[..n])?;
        precheck(&h).map(|s| Some(s.to_string()))
    }

    #[test]
    fn captured_python_hello() {
        assert_eq!(&PYTHON_HELLO[..5], &[0x16, 3, 1, 2, 0]);
        assert_eq!(
            judge_stream(PYTHON_HELLO),
            Ok(Some("api.example.com".into()))
        );
        // Every proper prefix: more bytes needed, never an error.
        for k in 0..PYTHON_HELLO.len() {
            assert_eq!(hello_extent(&PYTHON_HELLO[..k]), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn crafted_hellos() {
        let ok = hello_msg(&[(10, vec![0, 2, 0, 29]), sni_ext(b"Www.Example.com")]);
        assert_eq!(
            judge_stream(&records(&ok, 1 << 14)),
            Ok(Some("Www.Example.com".into()))
        );
        // The same hello in records of 7 bytes: put together.
        assert_eq!(
            judge_stream(&records(&ok, 7)),
            Ok(Some("Www.Example.com".into()))
        );
        // No server name; ECH (and draft ESNI) with or without one.
        let none = hello_msg(&[(10, vec![0, 2, 0, 29])]);
        assert_eq!(judge_stream(&records(&none, 512)), Err(L7Reason::TlsNoSni));
        for t in [EXT_ECH, EXT_ESNI_DRAFT] {
            let ech = hello_msg(&[sni_ext(b"public.example"), (t, vec![0; 40])]);
            assert_eq!(judge_stream(&records(&ech, 512)), Err(L7Reason::TlsEch));
        }
        // No extensions at all (TLS 1.2 allows it): no name.
        let mut bare = hello_msg(&[]);
        bare.truncate(bare.len() - 2);
        let l = (bare.len() - 4) as u32;
        bare[1..4].copy_from_slice(&l.to_be_bytes()[1..]);
        assert_eq!(judge_stream(&records(&bare, 512)), Err(L7Reason::TlsNoSni));
    }

    #[test]
    fn malformed_hellos() {
        let m = L7Reason::TlsMalformed;
        let bad = Err(m);
        // Not a handshake record; SSLv2-style; a plain HTTP request.
        assert_eq!(hello_extent(b"\x17\x03\x03\x00\x01x"), bad);
        assert_eq!(hello_extent(b"\x80\x2e\x01\x03\x01"), bad);
        assert_eq!(hello_extent(b"GET / HTTP/1.1\r\n"), bad);
        // Wrong record version byte, empty and oversized records.
        assert_eq!(hello_extent(b"\x16\x02"), bad);
        assert_eq!(hello_extent(b"\x16\x03\x01\x00\x00"), bad);
        assert_eq!(hello_extent(b"\x16\x03\x01\x40\x01"), bad);
        // Not a ClientHello (a ServerHello), checked on its first byte.
        assert_eq!(hello_extent(b"\x16\x03\x03\x00\x30\x02"), bad);
        // A second message after the hello in its record.
        let ok = hello_msg(&[sni_ext(b"a.example")]);
        let mut two = ok.clone();
        two.extend_from_slice(&[CLIENT_HELLO, 0, 0, 0]);
        assert_eq!(hello_extent(&records(&two, 1 << 14)), bad);
        // Duplicate server_name; two names in one; bad names.
        let dup = hello_msg(&[sni_ext(b"a.example"), sni_ext(b"b.example")]);
        assert_eq!(judge_stream(&records(&dup, 512)), Err(m));
        for name in [
            &b"a.example."[..],
            b"",
            b"a..example",
            b"a example",
            b"a.ex\x00ample",
            &[b'a'; 64][..],
        ] {
            let h = hello_msg(&[sni_ext(name)]);
            assert_eq!(judge_stream(&records(&h, 512)), Err(m), "{name:?}");
        }
        let mut two_names = sni_ext(b"a.example").1;
        two_names.extend_from_slice(&[0, 0, 1, b'b']);
        let l = (two_names.len() - 2) as u16;
        two_names[..2].copy_from_slice(&l.to_be_bytes());
        let h = hello_msg(&[(0, two_names)]);
        assert_eq!(judge_stream(&records(&h, 512)), Err(m));
        // Length fields that do not add up: every truncation of the body
        // with its lengths kept is refused, never a panic.
        let ok = hello_msg(&[sni_ext(b"a.example")]);
        for k in 4..ok.len() {
            assert_eq!(parse_client_hello(&ok[..k]), Err(m), "cut at {k}");
        }
        // Too many extensions.
        let many: Vec<(u16, Vec<u8>)> = (0..=MAX_EXTENSIONS as u16)
            .map(|t| (t + 100, vec![]))
            .collect();
        assert_eq!(parse_client_hello(&hello_msg(&many)), Err(m));
    }

    #[test]
    fn rules() {
        let spec = |v: &[&str]| -> Vec<TlsRuleSpec> {
            v.iter()
                .map(|s| TlsRuleSpec { sni: s.to_string() })
                .collect()
        };
        let set = TlsRuleSet::compile(&spec(&["api.example.com", "*.svc.example"])).unwrap();
        assert_eq!(set.judge("api.example.com"), Some(0));
        assert_eq!(set.judge("API.Example.COM"), Some(0));
        assert_eq!(set.judge("x.svc.example"), Some(1));
        assert_eq!(set.judge("svc.example"), None);
        assert_eq!(set.judge("a.b.svc.example"), None);
        assert_eq!(set.judge("evil.example.com"), None);
        assert_eq!(
            TlsRuleSet::compile(&spec(&["ok.example", "bad name"])).unwrap_err(),
            1
        );
        assert!(TlsRuleSet::compile(&spec(&["*"]))
            .unwrap()
            .judge("anything.at.all")
            .is_some());
    }
}
