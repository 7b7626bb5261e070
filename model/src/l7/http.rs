//! Strict HTTP/1.x request-head parser (RFC 9112, RFC 3986).
//!
//! [`parse_head`] takes the bytes of one complete request head (request line,
//! header fields, and the empty line that ends the head) and returns a
//! [`RequestHead`] borrowing from them, or the [`L7Reason`] it was refused
//! for. It never allocates and never panics, whatever the bytes.
//!
//! Everything that two HTTP implementations could read differently is
//! refused rather than guessed at (a refusal is a deny, never a bypass):
//! bare LF or bare CR, control bytes, obsolete line folding, whitespace
//! before a colon, duplicate or invalid `Content-Length`, `Content-Length`
//! with `Transfer-Encoding`, any transfer coding other than exactly
//! `chunked`, `Upgrade`, `CONNECT`, a missing or duplicate `Host` (1.1), a
//! `Host` that disagrees with an absolute-form target, request targets with
//! characters outside RFC 3986, dot segments (also percent-encoded or with
//! `;` parameters) and encoded `/`, `\` or NUL in the path.
#![forbid(unsafe_code)]

use super::L7Reason;

/// Most header fields a head may carry.
pub const MAX_HEADERS: usize = 100;

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body after a head is delimited (RFC 9112 §6.3, for requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: the next byte starts the next request head.
    None,
    /// Exactly this many body bytes follow.
    Length(u64),
    /// A chunked body follows.
    Chunked,
}

/// A parsed, validated request head. All strings borrow the head bytes.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a str,
    target: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<&'a str>,
    version: Version,
    /// The header field lines, each ending with CRLF (validated).
    fields: &'a [u8],
    body: BodyFraming,
}

impl<'a> RequestHead<'a> {
    /// The method token, case-sensitive (`GET`).
    pub fn method(&self) -> &'a str {
        self.method
    }
    /// The request target as sent.
    pub fn target(&self) -> &'a str {
        self.target
    }
    /// The path (without the query), as sent (not percent-decoded): `"/"`
    /// for an absolute-form target without a path, `"*"` for `OPTIONS *`.
    pub fn path(&self) -> &'a str {
        self.path
    }
    /// The query after `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }
    /// The host without port: from an absolute-form target, else the `Host`
    /// field. `None` only for an HTTP/1.0 request without `Host`.
    pub fn host(&self) -> Option<&'a str> {
        self.host
    }
    pub fn version(&self) -> Version {
        self.version
    }
    /// How the body that follows is delimited.
    pub fn body(&self) -> BodyFraming {
        self.body
    }
    /// The header fields in order: (name as sent, value without surrounding
    /// whitespace). Values may hold obs-text (bytes ≥ 0x80), hence bytes.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.fields }
    }
    /// The first value of the field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Iterator over the header fields of a [`RequestHead`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let end = find_crlf(self.rest)?;
        let line = self.rest.get(..end)?;
        self.rest = self.rest.get(end + 2..).unwrap_or(&[]);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(line.get(..colon)?).ok()?;
        Some((name, trim_ows(line.get(colon + 1..)?)))
    }
}

/// Index of the first CRLF (of the first LF, which the head check already
/// required to follow a CR).
fn find_crlf(b: &[u8]) -> Option<usize> {
    let lf = b.iter().position(|&x| x == b'\n')?;
    (lf > 0 && b[lf - 1] == b'\r').then(|| lf - 1)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

const fn class_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static TCHAR: [bool; 256] = class_table(b"!#$%&'*+-.^_`|~");
static PCHAR: [bool; 256] = class_table(b"-._~!$&'()*+,;=:@");

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// RFC 3986 unreserved / sub-delims / ":" / "@" (pchar without pct-encoded).
fn is_pchar(b: u8) -> bool {
    PCHAR[usize::from(b)]
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Validates an origin-form path: pchars, `/`, valid `%HH`; refuses `%2f`,
/// `%5c`, `%00`, `%2e` and dot segments (`.`, `..`, also with `;params`).
fn check_path(path: &[u8]) -> Result<(), L7Reason> {
    if path.first() != Some(&b'/') {
        return Err(L7Reason::BadTarget);
    }
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let h = path.get(i + 1).copied().and_then(hex);
            let l = path.get(i + 2).copied().and_then(hex);
            let (Some(h), Some(l)) = (h, l) else {
                return Err(L7Reason::BadTarget);
            };
            let c = h << 4 | l;
            if matches!(c, b'/' | b'\\' | 0 | b'.') {
                return Err(L7Reason::PathNotNormal);
            }
            i += 3;
            continue;
        }
        if b != b'/' && !is_pchar(b) {
            return Err(L7Reason::BadTarget);
        }
        i += 1;
    }
    for seg in path.split(|&b| b == b'/') {
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        if name == b"." || name == b".." {
            return Err(L7Reason::PathNotNormal);
        }
    }
    Ok(())
}

fn check_query(q: &[u8]) -> Result<(), L7Reason> {
    let mut i = 0;
    while i < q.len() {
        let b = q[i];
        if b == b'%' {
            if q.get(i + 1).copied().and_then(hex).is_none()
                || q.get(i + 2).copied().and_then(hex).is_none()
            {
                return Err(L7Reason::BadTarget);
            }
            i += 3;
            continue;
        }
        if b != b'/' && b != b'?' && !is_pchar(b) {
            return Err(L7Reason::BadTarget);
        }
        i += 1;
    }
    Ok(())
}

/// Validates `host [":" port]` and returns the host part. Hosts are
/// reg-names of letters, digits, `-`, `.`, `_`, or a bracketed IPv6 literal.
fn split_authority(a: &[u8]) -> Result<&[u8], L7Reason> {
    let (host, port) = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']').ok_or(L7Reason::BadHost)?;
        let inner = a.get(1..close).ok_or(L7Reason::BadHost)?;
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(L7Reason::BadHost);
        }
        let rest = a.get(close + 1..).unwrap_or(&[]);
        match rest {
            [] => (a.get(..close + 1).unwrap_or(a), None),
            [b':', p @ ..] => (a.get(..close + 1).unwrap_or(a), Some(p)),
            _ => return Err(L7Reason::BadHost),
        }
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(c) => (a.get(..c).unwrap_or(a), a.get(c + 1..)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return Err(L7Reason::BadHost);
    }
    if host.first() != Some(&b'[')
        && !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(L7Reason::BadHost);
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
            return Err(L7Reason::BadHost);
        }
    }
    Ok(host)
}

fn as_str(b: &[u8]) -> Result<&str, L7Reason> {
    std::str::from_utf8(b).map_err(|_| L7Reason::BadTarget)
}

/// A validated request line (the part of [`RequestHead`] it determines).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    path: &'a [u8],
    query: Option<&'a [u8]>,
    version: Version,
    /// Host and full authority of an absolute-form target.
    target_host: Option<&'a [u8]>,
    target_authority: Option<&'a [u8]>,
}

/// Validates a request line (without its CRLF): `method SP request-target
/// SP HTTP-version`, HTTP/1.0 or HTTP/1.1 only, with every target check of
/// [`parse_head`]. The stream inspector calls it as soon as the line's CR
/// arrives, before any later byte can pass (an HTTP/0.9 server acts on the
/// request line alone).
pub(crate) fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, L7Reason> {
    let sp1 = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(L7Reason::BadRequestLine)?;
    let sp2 = line
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(L7Reason::BadRequestLine)?;
    if sp2 <= sp1 + 1 {
        return Err(L7Reason::BadRequestLine);
    }
    let method = &line[..sp1];
    let target = &line[sp1 + 1..sp2];
    let version = match &line[sp2 + 1..] {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(L7Reason::BadVersion),
    };
    if !is_token(method) {
        return Err(L7Reason::BadMethod);
    }
    if method == b"CONNECT" {
        return Err(L7Reason::Unsupported);
    }
    if target.contains(&b' ') {
        return Err(L7Reason::BadRequestLine);
    }

    let mut target_host: Option<&[u8]> = None;
    let mut target_authority: Option<&[u8]> = None;
    let (path, query): (&[u8], Option<&[u8]>) = if target == b"*" {
        if method != b"OPTIONS" {
            return Err(L7Reason::BadTarget);
        }
        (b"*", None)
    } else {
        let rest = if target.first() == Some(&b'/') {
            target
        } else {
            let after = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
                &target[7..]
            } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
                &target[8..]
            } else {
                return Err(L7Reason::BadTarget);
            };
            let a_end = after
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after.len());
            let authority = &after[..a_end];
            if authority.contains(&b'@') {
                return Err(L7Reason::BadHost);
            }
            target_host = Some(split_authority(authority)?);
            target_authority = Some(authority);
            &after[a_end..]
        };
        let (p, q) = match rest.iter().position(|&b| b == b'?') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let p: &[u8] = if p.is_empty() && target_host.is_some() {
            b"/"
        } else {
            p
        };
        check_path(p)?;
        if let Some(q) = q {
            check_query(q)?;
        }
        (p, q)
    };
    Ok(RequestLine {
        method,
        target,
        path,
        query,
        version,
        target_host,
        target_authority,
    })
}

/// Validates one header field line (without its CRLF) and returns (name,
/// value without surrounding whitespace): no obsolete folding, a colon, a
/// token name with no whitespace before the colon. The stream inspector
/// calls it as soon as the line's CR arrives.
pub(crate) fn parse_field_line(fl: &[u8]) -> Result<(&[u8], &[u8]), L7Reason> {
    match fl.first() {
        Some(b' ' | b'\t') => return Err(L7Reason::ObsFold),
        None => return Err(L7Reason::BadHeader),
        _ => {}
    }
    let colon = fl
        .iter()
        .position(|&b| b == b':')
        .ok_or(L7Reason::BadHeader)?;
    let name = &fl[..colon];
    if name.iter().any(|&b| b == b' ' || b == b'\t') {
        return Err(L7Reason::WhitespaceBeforeColon);
    }
    if !is_token(name) {
        return Err(L7Reason::BadHeader);
    }
    Ok((name, trim_ows(&fl[colon + 1..])))
}

/// Parses one complete request head: `head` must end with the empty line
/// (`\r\n\r\n`) and hold nothing after it.
pub fn parse_head(head: &[u8]) -> Result<RequestHead<'_>, L7Reason> {
    // Line endings and control bytes first, over the whole head: CR only
    // before LF, LF only after CR, no other control byte but HTAB.
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(L7Reason::BareCr),
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(L7Reason::BareLf),
            b'\r' | b'\n' | b'\t' => {}
            0..=0x1f | 0x7f => return Err(L7Reason::ControlByte),
            _ => {}
        }
    }
    if !head.ends_with(b"\r\n\r\n") {
        return Err(L7Reason::BadRequestLine);
    }
    let line_end = find_crlf(head).ok_or(L7Reason::BadRequestLine)?;
    // The header lines, each with its CRLF, without the final empty line.
    let fields = head
        .get(line_end + 2..head.len() - 2)
        .ok_or(L7Reason::BadRequestLine)?;
    let RequestLine {
        method,
        target,
        path,
        query,
        version,
        target_host,
        target_authority,
    } = parse_request_line(&head[..line_end])?;

    // Header fields.
    let mut host_field: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut count = 0usize;
    let mut rest = fields;
    while !rest.is_empty() {
        let end = find_crlf(rest).ok_or(L7Reason::BadHeader)?;
        let fl = &rest[..end];
        rest = &rest[end + 2..];
        count += 1;
        if count > MAX_HEADERS {
            return Err(L7Reason::TooManyHeaders);
        }
        let (name, value) = parse_field_line(fl)?;
        if name.eq_ignore_ascii_case(b"host") {
            if host_field.is_some() {
                return Err(L7Reason::DuplicateHost);
            }
            host_field = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(L7Reason::DuplicateContentLength);
            }
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err(L7Reason::BadContentLength);
            }
            let n = value
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(L7Reason::BadTransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            return Err(L7Reason::Unsupported);
        }
    }
    if chunked && content_length.is_some() {
        return Err(L7Reason::ContentLengthAndTransferEncoding);
    }
    if chunked && version == Version::Http10 {
        return Err(L7Reason::BadTransferEncoding);
    }
    let field_host = match host_field {
        Some(v) => Some(split_authority(v)?),
        None if version == Version::Http11 => return Err(L7Reason::MissingHost),
        None => None,
    };
    if let (Some(ta), Some(hf)) = (target_authority, host_field) {
        if !ta.eq_ignore_ascii_case(hf) {
            return Err(L7Reason::HostMismatch);
        }
    }
    let host = target_host.or(field_host);
    let body = if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    Ok(RequestHead {
        method: as_str(method)?,
        target: as_str(target)?,
        path: as_str(path)?,
        query: query.map(as_str).transpose()?,
        host: host.map(as_str).transpose()?,
        version,
        fields,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> RequestHead<'_> {
        parse_head(s.as_bytes()).unwrap()
    }
    fn err(s: &[u8]) -> L7Reason {
        parse_head(s).unwrap_err()
    }

    #[test]
    fn simple_get() {
        let h = ok("GET /public/a?x=1 HTTP/1.1\r\nHost: App1.example:8080\r\nAccept: */*\r\n\r\n");
        assert_eq!(h.method(), "GET");
        assert_eq!(h.path(), "/public/a");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(h.host(), Some("App1.example"));
        assert_eq!(h.version(), Version::Http11);
        assert_eq!(h.body(), BodyFraming::None);
        let hs: Vec<_> = h.headers().collect();
        assert_eq!(
            hs,
            vec![("Host", &b"App1.example:8080"[..]), ("Accept", &b"*/*"[..])]
        );
        assert_eq!(h.header("accept"), Some(&b"*/*"[..]));
    }

    #[test]
    fn absolute_form_takes_host_from_target() {
        let h = ok("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.host(), Some("a.example"));
        assert_eq!(h.path(), "/x");
        let h = ok("GET http://a.example HTTP/1.0\r\n\r\n");
        assert_eq!(h.path(), "/");
        assert_eq!(
            err(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n"),
            L7Reason::HostMismatch
        );
        assert_eq!(
            err(b"GET http://u@a.example/x HTTP/1.0\r\n\r\n"),
            L7Reason::BadHost
        );
    }

    #[test]
    fn http10_without_host() {
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.host(), None);
        assert_eq!(h.version(), Version::Http10);
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], L7Reason)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", L7Reason::MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", L7Reason::DuplicateHost),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", L7Reason::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\rX\r\n\r\n", L7Reason::BareCr),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", L7Reason::ControlByte),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", L7Reason::ObsFold),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", L7Reason::WhitespaceBeforeColon),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", L7Reason::BadVersion),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadRequestLine),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadMethod),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::Unsupported),
            (b"GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::PathNotNormal),
            (b"GET /a/..;x/b HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::PathNotNormal),
            (b"GET /a/%2e%2E/b HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::PathNotNormal),
            (b"GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::PathNotNormal),
            (b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadTarget),
            (b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadTarget),
            (b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadTarget),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", L7Reason::BadTarget),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", L7Reason::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", L7Reason::Unsupported),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", L7Reason::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", L7Reason::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", L7Reason::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", L7Reason::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", L7Reason::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", L7Reason::BadTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", L7Reason::BadTransferEncoding),
            (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", L7Reason::BadHeader),
        ];
        for (bytes, reason) in cases {
            assert_eq!(
                parse_head(bytes).map(|_| ()),
                Err(*reason),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn framing() {
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").body(),
            BodyFraming::Length(12)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").body(),
            BodyFraming::Chunked
        );
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").path(), "*");
    }
}
