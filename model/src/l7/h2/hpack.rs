//! A bounded HPACK decoder (RFC 7541) for the client→server header blocks
//! of one HTTP/2 connection.
//!
//! Hand-written rather than taken from a crate: the crates that decode
//! HPACK (`hpack`, `fluke-hpack`, `httlib-hpack`) allocate a `Vec` per
//! field and grow their tables as told, and the decoder inside `h2` is not
//! public. Here every buffer is allocated once, when the decoder is made:
//! the dynamic table lives in a fixed arena of [`TABLE_MAX`] bytes (at
//! most `TABLE_MAX / 32` entries, the RFC's 32-byte overhead per entry),
//! and decoded fields go to a caller's fixed buffer. Anything beyond a
//! bound, or invalid, is an error: the caller denies the connection.
#![forbid(unsafe_code)]

use super::tables::{HUFFMAN_LEN, STATIC};

/// The dynamic table size the decoder supports: the protocol default
/// (`SETTINGS_HEADER_TABLE_SIZE` = 4096). A server that advertised more
/// lets its clients send size updates above this: refused (fail closed).
pub const TABLE_MAX: usize = 4096;
const MAX_ENTRIES: usize = TABLE_MAX / 32;

/// Why a header block cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Invalid representation, index, integer, string or Huffman code.
    Invalid,
    /// The decoded fields exceed the caller's bound.
    TooLarge,
}

/// The canonical Huffman code of RFC 7541 Appendix B, rebuilt from the
/// code lengths: for each length, the first code and where its symbols
/// start in `symbols` (sorted by length, then value).
struct Huffman {
    symbols: [u16; 257],
    first: [u32; 31],
    count: [u16; 31],
    offset: [u16; 31],
}

const fn build_huffman() -> Huffman {
    let mut h = Huffman {
        symbols: [0; 257],
        first: [0; 31],
        count: [0; 31],
        offset: [0; 31],
    };
    let mut n = 0usize;
    let mut len = 1usize;
    let mut code: u32 = 0;
    while len <= 30 {
        h.offset[len] = n as u16;
        h.first[len] = code;
        let mut s = 0usize;
        while s < 257 {
            if HUFFMAN_LEN[s] as usize == len {
                h.symbols[n] = s as u16;
                n += 1;
                h.count[len] += 1;
                code += 1;
            }
            s += 1;
        }
        code <<= 1;
        len += 1;
    }
    h
}

static HUFFMAN: Huffman = build_huffman();

/// Appends the Huffman decoding of `src` to `out[*at..]`.
fn huffman_decode(src: &[u8], out: &mut [u8], at: &mut usize) -> Result<(), HpackError> {
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in src {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return Err(HpackError::Invalid);
            }
            let i = code.wrapping_sub(HUFFMAN.first[len]);
            if i < u32::from(HUFFMAN.count[len]) {
                let sym = HUFFMAN.symbols[usize::from(HUFFMAN.offset[len]) + i as usize];
                if sym == 256 {
                    // EOS inside a string: a decoding error (§5.2).
                    return Err(HpackError::Invalid);
                }
                let slot = out.get_mut(*at).ok_or(HpackError::TooLarge)?;
                *slot = sym as u8;
                *at += 1;
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the start of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HpackError::Invalid);
    }
    Ok(())
}

/// Reads an HPACK integer with an `n`-bit prefix from `b[*pos..]`
/// (at most 2^24: larger values are no use to any bounded field).
fn integer(b: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let first = *b.get(*pos).ok_or(HpackError::Invalid)?;
    *pos += 1;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*pos).ok_or(HpackError::Invalid)?;
        *pos += 1;
        v += usize::from(c & 0x7f) << shift;
        shift += 7;
        if v > 1 << 24 {
            return Err(HpackError::Invalid);
        }
        if c & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 21 {
            return Err(HpackError::Invalid);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    at: u16,
    name: u16,
    value: u16,
}

/// The decoder of one direction of one connection: the dynamic table.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Entry bytes (name then value), compacted when the tail is full.
    arena: Box<[u8]>,
    used: usize,
    /// Ring of entries, newest at `head - 1`.
    entries: [Entry; MAX_ENTRIES],
    head: usize,
    len: usize,
    /// RFC size (name + value + 32 per entry).
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// One decoded field: ranges into the caller's output buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Field {
    pub name: (u32, u32),
    pub value: (u32, u32),
    /// Where the field's representation starts in the block (its first
    /// byte tells its kind: indexed, literal with or without indexing).
    pub rep: u32,
}

impl Decoder {
    /// A decoder with an empty table of the default size (allocates the
    /// arena once).
    pub fn new() -> Self {
        Decoder {
            arena: vec![0u8; TABLE_MAX].into_boxed_slice(),
            used: 0,
            entries: [Entry::default(); MAX_ENTRIES],
            head: 0,
            len: 0,
            size: 0,
            max: TABLE_MAX,
        }
    }

    /// Forgets the table (a new connection).
    pub fn reset(&mut self) {
        self.used = 0;
        self.head = 0;
        self.len = 0;
        self.size = 0;
        self.max = TABLE_MAX;
    }

    /// Entries in the dynamic table and their RFC size.
    pub fn table(&self) -> (usize, usize) {
        (self.len, self.size)
    }

    fn entry(&self, i: usize) -> Option<(&[u8], &[u8])> {
        if i >= self.len {
            return None;
        }
        let e = self.entries[(self.head + MAX_ENTRIES - 1 - i) % MAX_ENTRIES];
        let (a, n, v) = (usize::from(e.at), usize::from(e.name), usize::from(e.value));
        Some((self.arena.get(a..a + n)?, self.arena.get(a + n..a + n + v)?))
    }

    fn evict_oldest(&mut self) {
        if self.len == 0 {
            return;
        }
        let e = self.entries[(self.head + MAX_ENTRIES - self.len) % MAX_ENTRIES];
        self.size -= usize::from(e.name) + usize::from(e.value) + 32;
        self.len -= 1;
        if self.len == 0 {
            self.used = 0;
        }
    }

    fn set_max(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            self.evict_oldest();
        }
    }

    /// Moves the live entries to the front of the arena (oldest first).
    fn compact(&mut self) {
        let mut to = 0usize;
        for k in (0..self.len).rev() {
            let idx = (self.head + MAX_ENTRIES - 1 - k) % MAX_ENTRIES;
            let e = self.entries[idx];
            let n = usize::from(e.name) + usize::from(e.value);
            let from = usize::from(e.at);
            self.arena.copy_within(from..from + n, to);
            self.entries[idx].at = to as u16;
            to += n;
        }
        self.used = to;
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        while self.len > 0 && self.size + size > self.max {
            self.evict_oldest();
        }
        if size > self.max {
            // Larger than the table: the table ends up empty (§4.4).
            return;
        }
        let n = name.len() + value.len();
        if self.used + n > self.arena.len() {
            self.compact();
        }
        // Live bytes + n <= max - 32 * entries <= arena: always fits now.
        let at = self.used;
        self.arena[at..at + name.len()].copy_from_slice(name);
        self.arena[at + name.len()..at + n].copy_from_slice(value);
        self.used += n;
        self.entries[self.head] = Entry {
            at: at as u16,
            name: name.len() as u16,
            value: value.len() as u16,
        };
        self.head = (self.head + 1) % MAX_ENTRIES;
        self.len += 1;
        self.size += size;
    }

    /// Name and value of index `i` (1-based: static, then dynamic).
    fn lookup(&self, i: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match i {
            0 => Err(HpackError::Invalid),
            1..=61 => Ok(STATIC[i - 1]),
            _ => self.entry(i - 62).ok_or(HpackError::Invalid),
        }
    }

    /// Decodes one complete header block into `out` (names then values,
    /// back to back) and `fields` (at most `fields.len()`); returns the
    /// number of fields. The table is updated as the block says, so every
    /// block of the connection must be decoded, in order. On error the
    /// table is in an unknown state: the caller ends the connection.
    pub fn decode(
        &mut self,
        block: &[u8],
        out: &mut [u8],
        fields: &mut [Field],
    ) -> Result<usize, HpackError> {
        let (mut pos, mut at, mut count) = (0usize, 0usize, 0usize);
        while pos < block.len() {
            let b = block[pos];
            let rep = pos as u32;
            if b & 0x80 != 0 {
                // Indexed field.
                let i = integer(block, &mut pos, 7)?;
                let (n, v) = self.lookup(i)?;
                let mut f = push(out, &mut at, n, v)?;
                f.rep = rep;
                *fields.get_mut(count).ok_or(HpackError::TooLarge)? = f;
                count += 1;
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if count > 0 {
                    return Err(HpackError::Invalid);
                }
                let max = integer(block, &mut pos, 5)?;
                if max > TABLE_MAX {
                    return Err(HpackError::Invalid);
                }
                self.set_max(max);
            } else {
                let (prefix, index) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = integer(block, &mut pos, prefix)?;
                let name_at = at;
                if i == 0 {
                    string(block, &mut pos, out, &mut at)?;
                } else {
                    let (n, _) = self.lookup(i)?;
                    copy(out, &mut at, n)?;
                }
                let value_at = at;
                string(block, &mut pos, out, &mut at)?;
                let f = Field {
                    name: (name_at as u32, (value_at - name_at) as u32),
                    value: (value_at as u32, (at - value_at) as u32),
                    rep,
                };
                if index {
                    let (n, v) = (&out[name_at..value_at], &out[value_at..at]);
                    self.insert(n, v);
                }
                *fields.get_mut(count).ok_or(HpackError::TooLarge)? = f;
                count += 1;
            }
        }
        Ok(count)
    }
}

fn copy(out: &mut [u8], at: &mut usize, s: &[u8]) -> Result<(), HpackError> {
    let dst = out
        .get_mut(*at..*at + s.len())
        .ok_or(HpackError::TooLarge)?;
    dst.copy_from_slice(s);
    *at += s.len();
    Ok(())
}

fn push(out: &mut [u8], at: &mut usize, n: &[u8], v: &[u8]) -> Result<Field, HpackError> {
    let na = *at;
    copy(out, at, n)?;
    let va = *at;
    copy(out, at, v)?;
    Ok(Field {
        name: (na as u32, n.len() as u32),
        value: (va as u32, v.len() as u32),
        rep: 0,
    })
}

fn string(b: &[u8], pos: &mut usize, out: &mut [u8], at: &mut usize) -> Result<(), HpackError> {
    let huff = b.get(*pos).ok_or(HpackError::Invalid)? & 0x80 != 0;
    let n = integer(b, pos, 7)?;
    let src = b.get(*pos..*pos + n).ok_or(HpackError::Invalid)?;
    *pos += n;
    if huff {
        huffman_decode(src, out, at)
    } else {
        copy(out, at, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = [0u8; 4096];
        let mut fields = [Field::default(); 32];
        let n = d.decode(block, &mut out, &mut fields)?;
        Ok(fields[..n]
            .iter()
            .map(|f| {
                let s = |(a, l): (u32, u32)| {
                    String::from_utf8(out[a as usize..(a + l) as usize].to_vec()).unwrap()
                };
                (s(f.name), s(f.value))
            })
            .collect())
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// RFC 7541 C.3: requests without Huffman, one connection.
    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        let mut d = Decoder::new();
        let r1 = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(
            decode(&mut d, &r1).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table(), (1, 57));
        let r2 = hex("8286 84be 5808 6e6f 2d63 6163 6865");
        assert_eq!(
            decode(&mut d, &r2).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.table(), (2, 110));
        let r3 = hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
        assert_eq!(
            decode(&mut d, &r3).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.table(), (3, 164));
    }

    /// RFC 7541 C.4: the same requests with Huffman.
    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new();
        let r1 = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(
            decode(&mut d, &r1).unwrap()[3],
            (":authority".into(), "www.example.com".into())
        );
        let r2 = hex("8286 84be 5886 a8eb 1064 9cbf");
        assert_eq!(
            decode(&mut d, &r2).unwrap()[4],
            ("cache-control".into(), "no-cache".into())
        );
        let r3 = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(
            decode(&mut d, &r3).unwrap()[4],
            ("custom-key".into(), "custom-value".into())
        );
        assert_eq!(d.table(), (3, 164));
    }

    /// RFC 7541 C.5 (responses, 256-byte table): evictions.
    #[test]
    fn rfc7541_c5_evictions() {
        let mut d = Decoder::new();
        // Size update to 256 first (C.5 runs with a 256-byte table).
        let r1 = hex("3fe1 01
             4803 3330 3258 0770 7269 7661 7465 611d
             4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768
             7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d");
        assert_eq!(decode(&mut d, &r1).unwrap().len(), 4);
        assert_eq!(d.table(), (4, 222));
        let r2 = hex("4803 3330 37c1 c0bf");
        let f = decode(&mut d, &r2).unwrap();
        assert_eq!(f[0], (":status".into(), "307".into()));
        assert_eq!(f[3].0, "location");
        assert_eq!(d.table(), (4, 222));
    }

    #[test]
    fn bad_input_is_an_error() {
        for b in [
            &hex("80")[..],                   // index 0
            &hex("be")[..],                   // dynamic index past the table
            &hex("82 3f e2 1f")[..],          // size update after a field
            &hex("3f e2 1f")[..],             // size update above 4096
            &hex("41 85 ff ff ff ff ff")[..], // Huffman EOS in the string
            &hex("41 81 00")[..],             // Huffman padding not all ones
            &hex("41 0a 61")[..],             // string past the block
            &hex("ff ff ff ff ff 7f")[..],    // integer overflow
        ] {
            let mut d = Decoder::new();
            assert_eq!(decode(&mut d, b), Err(HpackError::Invalid), "{b:02x?}");
        }
        // Out of room for decoded fields.
        let mut d = Decoder::new();
        let mut out = [0u8; 4];
        let mut fields = [Field::default(); 4];
        assert_eq!(
            d.decode(&hex("82"), &mut out, &mut fields),
            Err(HpackError::TooLarge)
        );
    }

    #[test]
    fn table_stays_bounded_under_many_inserts() {
        let mut d = Decoder::new();
        let mut block = vec![0x40, 0x05];
        block.extend_from_slice(b"xname");
        block.push(0x7f);
        block.push(0x81); // 127 + 129 = 256-byte value (2-byte length)
        block.push(0x01);
        block.extend(std::iter::repeat_n(b'v', 256));
        for _ in 0..100 {
            decode(&mut d, &block).unwrap();
            assert!(d.table().1 <= TABLE_MAX);
        }
        assert_eq!(d.table(), (13, 13 * (256 + 5 + 32)));
        // Entries are still right after compactions.
        let f = decode(&mut d, &hex("be")).unwrap();
        assert_eq!(f[0].0, "xname");
        assert_eq!(f[0].1.len(), 256);
    }
}
