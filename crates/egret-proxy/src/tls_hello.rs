//! A bounds-checked parser for the TLS ClientHello at the start of a connection.
//!
//! This is what lets a sidecar route app-originated TLS by SNI without terminating it: Istio
//! routes `TLS`/`HTTPS` ports (and sniffed TLS on undeclared ports) by the ClientHello's SNI
//! (`istio-egress-spec.md` §1, "filter chains keyed on SNI"), and Envoy's `tls_inspector`
//! supplies the SNI and ALPN. We do the same from the peeked bytes.
//!
//! Design points:
//! - The input is untrusted and arbitrary. Every access goes through `get()`; nothing here can
//!   panic (enforced by `clippy::indexing_slicing` below and by the prefix/mutation tests).
//! - A ClientHello may be split across TCP segments (the caller re-parses a longer buffer,
//!   guided by [`Parse::NeedMore`]) and across TLS records (handshake fragments are
//!   reassembled here). A hello that would need more than [`MAX_CLIENT_HELLO_BYTES`] of records
//!   is reported as `NeedMore(n)` with `n` above the cap; callers treat that as too large.
//! - Fail closed: anything that starts like TLS but is malformed is [`Parse::Invalid`], never
//!   "not TLS" (which would let it through as opaque TCP, `reliability-and-users.md` §4 item 10).
//!   SNI contents are validated so that the policy layer only ever sees a plain host name
//!   (lower-cased, without a trailing dot) — see §2.3 "Host/authority tricks".

#![deny(clippy::indexing_slicing)]

use std::borrow::Cow;

/// The most bytes of TLS records we are prepared to buffer to find a complete ClientHello.
/// Real hellos are 200 B – 2 KiB (post-quantum key shares make them larger); 16 KiB is one
/// maximum-size TLS record.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// TLS record content type `handshake`.
pub const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// RFC 8446 §5.1: a TLSPlaintext fragment MUST NOT exceed 2^14 bytes.
const MAX_RECORD_LEN: usize = 1 << 14;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// draft-ietf-tls-esni `encrypted_client_hello`.
const EXT_ECH: u16 = 0xfe0d;

/// The parts of a ClientHello the data plane needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's `host_name`, validated, ASCII lower-cased, trailing dot
    /// removed. `None` when the extension is absent. IP literals (which RFC 6066 forbids but
    /// clients send) are passed through as strings: the policy layer decides.
    pub sni: Option<String>,
    /// The ALPN protocol names in client preference order (`h2`, `http/1.1`, …). Names are
    /// opaque bytes on the wire; non-UTF-8 bytes are replaced with U+FFFD.
    pub alpn: Vec<String>,
    /// `ClientHello.legacy_version` (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `supported_versions` extension (TLS 1.3 clients), GREASE values included;
    /// empty when absent.
    pub supported_versions: Vec<u16>,
    /// The client offered Encrypted Client Hello: `sni` is then only the outer (public) name.
    pub ech: bool,
    /// How many bytes at the start of the buffer the records carrying the hello occupy.
    pub record_len: usize,
}

/// The result of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A complete, well-formed ClientHello.
    Complete(ClientHello),
    /// Looks like TLS so far but the hello is incomplete. For no longer buffer (starting with
    /// the same bytes) shorter than this many bytes can the answer be `Complete` or `NotTls`
    /// (malformed bytes may show up as `Invalid` earlier), so callers need not re-parse
    /// before they have it. May exceed [`MAX_CLIENT_HELLO_BYTES`]: callers cap.
    NeedMore(usize),
    /// The bytes are not a TLS handshake record (first byte not 0x16, or not version 3.x).
    NotTls,
    /// A TLS handshake record whose contents are not a valid ClientHello.
    Invalid(&'static str),
}

/// Parses the ClientHello at the start of `buf` (the first bytes the client sent).
///
/// Bytes after the hello (in the same or later records) are ignored.
pub fn parse(buf: &[u8]) -> Parse {
    match record_prefix(buf) {
        Prefix::NotTls => return Parse::NotTls,
        Prefix::NeedMore(n) => return Parse::NeedMore(n),
        Prefix::Tls => {}
    }
    match reassemble(buf) {
        Ok(Reassembled::Complete {
            message,
            record_len,
        }) => match parse_client_hello(&message) {
            Ok(mut hello) => {
                hello.record_len = record_len;
                Parse::Complete(hello)
            }
            Err(e) => Parse::Invalid(e),
        },
        Ok(Reassembled::NeedMore(n)) => Parse::NeedMore(n),
        Err(e) => Parse::Invalid(e),
    }
}

enum Prefix {
    Tls,
    NotTls,
    NeedMore(usize),
}

/// Decides from the first three bytes whether this is a TLS handshake record at all.
/// SSLv2-compatible hellos (first byte 0x80) are not TLS for us.
fn record_prefix(buf: &[u8]) -> Prefix {
    match buf.first() {
        None => return Prefix::NeedMore(1),
        Some(&CONTENT_TYPE_HANDSHAKE) => {}
        Some(_) => return Prefix::NotTls,
    }
    // NeedMore(len + 1) here, not 5: the next byte may already make this "not TLS".
    match buf.get(1) {
        None => return Prefix::NeedMore(2),
        Some(3) => {}
        Some(_) => return Prefix::NotTls,
    }
    // legacy_record_version 3.0 (SSL 3) .. 3.4; clients send 3.1 or 3.3 in practice.
    match buf.get(2) {
        None => Prefix::NeedMore(3),
        Some(0..=4) => Prefix::Tls,
        Some(_) => Prefix::NotTls,
    }
}

enum Reassembled<'a> {
    Complete {
        message: Cow<'a, [u8]>,
        record_len: usize,
    },
    NeedMore(usize),
}

/// Collects handshake fragments from consecutive handshake records until the first handshake
/// message (which must be a ClientHello) is complete. Returns the ClientHello *body*.
fn reassemble(buf: &[u8]) -> Result<Reassembled<'_>, &'static str> {
    // Fragments seen so far. Borrowed while everything came from one record.
    let mut hs: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut off = 0usize;
    loop {
        // Once the handshake header is known, the total message length is known.
        let total = handshake_total(&hs)?;
        if let Some(total) = total
            && hs.len() >= total
        {
            let body = match hs {
                Cow::Borrowed(b) => {
                    Cow::Borrowed(b.get(HANDSHAKE_HEADER_LEN..total).unwrap_or(&[]))
                }
                Cow::Owned(mut v) => {
                    v.truncate(total);
                    v.drain(..HANDSHAKE_HEADER_LEN.min(v.len()));
                    Cow::Owned(v)
                }
            };
            return Ok(Reassembled::Complete {
                message: body,
                record_len: off,
            });
        }
        // Handshake bytes still missing after what we have (at least 1 if the header is not
        // complete yet: the header tells the rest).
        let missing = match total {
            Some(t) => t.saturating_sub(hs.len()),
            None => HANDSHAKE_HEADER_LEN.saturating_sub(hs.len()),
        };

        let Some(header) = buf.get(off..off.saturating_add(RECORD_HEADER_LEN)) else {
            return Ok(Reassembled::NeedMore(
                off.saturating_add(RECORD_HEADER_LEN)
                    .saturating_add(missing),
            ));
        };
        let (content_type, major, len) = match header {
            &[t, major, _minor, hi, lo] => (t, major, usize::from(u16::from_be_bytes([hi, lo]))),
            _ => return Err("truncated record header"),
        };
        if content_type != CONTENT_TYPE_HANDSHAKE {
            // RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other record types.
            return Err("non-handshake record inside ClientHello");
        }
        if major != 3 {
            return Err("bad record version");
        }
        if len == 0 {
            // RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
            return Err("empty handshake record");
        }
        if len > MAX_RECORD_LEN {
            return Err("record too large");
        }
        let start = off.saturating_add(RECORD_HEADER_LEN);
        let end = start.saturating_add(len);
        let Some(fragment) = buf.get(start..end) else {
            // A partial record. Look at what has arrived of it to reject early (wrong handshake
            // type) and to give a tight lower bound once the hello's length is visible.
            let partial = buf.get(start..).unwrap_or(&[]);
            let missing = match total {
                Some(t) => t.saturating_sub(hs.len()),
                None => {
                    let head: Vec<u8> = hs
                        .iter()
                        .chain(partial)
                        .take(HANDSHAKE_HEADER_LEN)
                        .copied()
                        .collect();
                    match handshake_total(&head)? {
                        Some(t) => t.saturating_sub(hs.len()),
                        None => missing,
                    }
                }
            };
            let need = if missing > len {
                end.saturating_add(RECORD_HEADER_LEN)
                    .saturating_add(missing - len)
            } else {
                end
            };
            return Ok(Reassembled::NeedMore(need));
        };
        hs = match hs {
            Cow::Borrowed([]) => Cow::Borrowed(fragment),
            other => {
                let mut v = other.into_owned();
                v.extend_from_slice(fragment);
                Cow::Owned(v)
            }
        };
        off = end;
    }
}

/// Returns an error if the handshake bytes seen so far cannot start a ClientHello.
fn check_handshake_type(hs: &[u8]) -> Result<(), &'static str> {
    match hs.first() {
        None | Some(&HANDSHAKE_CLIENT_HELLO) => Ok(()),
        Some(_) => Err("first handshake message is not a ClientHello"),
    }
}

/// Total length (header included) of the handshake message at the start of `hs`, once its
/// 4-byte header is there.
fn handshake_total(hs: &[u8]) -> Result<Option<usize>, &'static str> {
    check_handshake_type(hs)?;
    match hs.get(..HANDSHAKE_HEADER_LEN) {
        Some(&[_, a, b, c]) => {
            let body = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            Ok(Some(body.saturating_add(HANDSHAKE_HEADER_LEN)))
        }
        _ => Ok(None),
    }
}

/// A forward-only cursor over a byte slice; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(what),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        match self.take(1, what)? {
            &[b] => Ok(b),
            _ => Err(what),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        match self.take(2, what)? {
            &[a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(what),
        }
    }

    /// An `opaque x<0..2^8-1>` vector.
    fn vec_u8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// An `opaque x<0..2^16-1>` vector.
    fn vec_u16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2; also valid for TLS 1.0–1.2, RFC 5246 §7.4.1.2).
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16("truncated legacy_version")?;
    if legacy_version >> 8 != 3 {
        return Err("bad legacy_version");
    }
    r.take(32, "truncated random")?;
    let session_id = r.vec_u8("truncated session id")?;
    if session_id.len() > 32 {
        return Err("session id too long");
    }
    let suites = r.vec_u16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suites");
    }
    let compression = r.vec_u8("truncated compression methods")?;
    if compression.is_empty() {
        return Err("no compression methods");
    }

    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
        legacy_version,
        supported_versions: Vec::new(),
        ech: false,
        record_len: 0,
    };
    // TLS 1.0–1.2 allow a hello without the extensions block.
    if r.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec_u16("truncated extensions")?;
    if !r.is_empty() {
        return Err("trailing bytes after extensions");
    }

    let mut seen: Vec<u16> = Vec::new();
    let mut ext = Reader::new(extensions);
    while !ext.is_empty() {
        let ty = ext.u16("truncated extension")?;
        let data = ext.vec_u16("truncated extension")?;
        // RFC 8446 §4.2: at most one extension of each type. Two SNIs would let different
        // parsers (ours, the origin's) disagree about the destination.
        if seen.contains(&ty) {
            return Err("duplicate extension");
        }
        seen.push(ty);
        match ty {
            EXT_SERVER_NAME => hello.sni = Some(parse_sni(data)?),
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = parse_supported_versions(data)?,
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3 `ServerNameList`. Only `host_name` (type 0) exists; anything else is rejected
/// because its encoding is undefined (and a second name must not be smuggled past us).
fn parse_sni(data: &[u8]) -> Result<String, &'static str> {
    let mut outer = Reader::new(data);
    let list = outer.vec_u16("truncated server_name list")?;
    if !outer.is_empty() {
        return Err("trailing bytes in server_name");
    }
    let mut r = Reader::new(list);
    let mut host: Option<String> = None;
    if r.is_empty() {
        return Err("empty server_name list");
    }
    while !r.is_empty() {
        let name_type = r.u8("truncated server_name")?;
        if name_type != 0 {
            return Err("unsupported server_name type");
        }
        let name = r.vec_u16("truncated server_name")?;
        if host.is_some() {
            return Err("duplicate sni host_name");
        }
        host = Some(normalize_host_name(name).ok_or("bad sni")?);
    }
    host.ok_or("empty server_name list")
}

/// Validates and canonicalizes an SNI host name: 1–255 bytes of `[A-Za-z0-9._:-]` (`:` for
/// IPv6 literals some clients send), no empty labels, lower-cased, one trailing dot removed.
/// Anything else (NUL, spaces, `*`, `%`, `/`, non-ASCII / raw UTF-8 IDNs) is refused rather
/// than repaired.
fn normalize_host_name(name: &[u8]) -> Option<String> {
    if name.is_empty() || name.len() > 255 {
        return None;
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return None;
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    // "", ".", "a..b", ".a", "a.." are not host names.
    if name.is_empty() || name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return None;
    }
    let s = std::str::from_utf8(name).ok()?;
    Some(s.to_ascii_lowercase())
}

/// RFC 7301 §3.1 `ProtocolNameList`: non-empty list of non-empty names.
fn parse_alpn(data: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut outer = Reader::new(data);
    let list = outer.vec_u16("truncated alpn list")?;
    if !outer.is_empty() {
        return Err("trailing bytes in alpn");
    }
    if list.is_empty() {
        return Err("empty alpn list");
    }
    let mut r = Reader::new(list);
    let mut out = Vec::new();
    while !r.is_empty() {
        let name = r.vec_u8("truncated alpn name")?;
        if name.is_empty() {
            return Err("empty alpn name");
        }
        out.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(out)
}

/// RFC 8446 §4.2.1 (ClientHello form): `ProtocolVersion versions<2..254>`.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, &'static str> {
    let mut outer = Reader::new(data);
    let list = outer.vec_u8("truncated supported_versions")?;
    if !outer.is_empty() || list.is_empty() || list.len() % 2 != 0 {
        return Err("bad supported_versions");
    }
    Ok(list
        .chunks_exact(2)
        .map(|c| match c {
            &[a, b] => u16::from_be_bytes([a, b]),
            _ => 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    /// Builds a handshake message (type + 24-bit length + body) for a ClientHello with the
    /// given extensions; `None` omits the extensions block entirely.
    fn hello_message(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xAB; 32]);
        body.push(32);
        body.extend_from_slice(&[0xCD; 32]);
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[0x01, 0x00]);
        if let Some(exts) = extensions {
            let mut block = Vec::new();
            for (ty, data) in exts {
                block.extend_from_slice(&ty.to_be_bytes());
                block.extend_from_slice(&(data.len() as u16).to_be_bytes());
                block.extend_from_slice(data);
            }
            body.extend_from_slice(&(block.len() as u16).to_be_bytes());
            body.extend_from_slice(&block);
        }
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Frames a handshake message into records of at most `chunk` bytes.
    fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in msg.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (ty, name) in names {
            list.push(*ty);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (EXT_SERVER_NAME, data)
    }

    fn alpn_ext(names: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (EXT_ALPN, data)
    }

    fn with_sni(name: &[u8]) -> Vec<u8> {
        records(
            &hello_message(Some(&[sni_ext(&[(0, name)])])),
            MAX_RECORD_LEN,
        )
    }

    fn complete(buf: &[u8]) -> ClientHello {
        match parse(buf) {
            Parse::Complete(h) => h,
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    #[test]
    fn sni_alpn_versions_ech() {
        let msg = hello_message(Some(&[
            sni_ext(&[(0, b"API.Example.Test.")]),
            alpn_ext(&[b"h2", b"http/1.1"]),
            (EXT_SUPPORTED_VERSIONS, vec![4, 0x03, 0x04, 0x03, 0x03]),
            (EXT_ECH, vec![1, 2, 3]),
        ]));
        let buf = records(&msg, MAX_RECORD_LEN);
        let h = complete(&buf);
        assert_eq!(h.sni.as_deref(), Some("api.example.test"));
        assert_eq!(h.alpn, ["h2", "http/1.1"]);
        assert_eq!(h.legacy_version, 0x0303);
        assert_eq!(h.supported_versions, [0x0304, 0x0303]);
        assert!(h.ech);
        assert_eq!(h.record_len, buf.len());
    }

    #[test]
    fn no_extensions_block() {
        let h = complete(&records(&hello_message(None), 100_000));
        assert_eq!(h.sni, None);
        assert!(h.alpn.is_empty());
    }

    #[test]
    fn reassembles_across_records_of_every_size() {
        let msg = hello_message(Some(&[
            sni_ext(&[(0, b"a.example.test")]),
            alpn_ext(&[b"h2"]),
        ]));
        for chunk in 1..=msg.len() {
            let buf = records(&msg, chunk);
            let h = complete(&buf);
            assert_eq!(h.sni.as_deref(), Some("a.example.test"), "chunk {chunk}");
            assert_eq!(h.record_len, buf.len());
        }
    }

    #[test]
    fn trailing_data_is_ignored_and_not_counted() {
        let mut buf = with_sni(b"x.test");
        let len = buf.len();
        buf.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xFF]);
        assert_eq!(complete(&buf).record_len, len);
    }

    #[test]
    fn need_more_is_a_tight_lower_bound_on_every_prefix() {
        for chunk in [3, 7, 64, MAX_RECORD_LEN] {
            let buf = records(&hello_message(Some(&[sni_ext(&[(0, b"a.test")])])), chunk);
            for n in 0..buf.len() {
                match parse(&buf[..n]) {
                    Parse::NeedMore(need) => {
                        assert!(need > n, "chunk {chunk} prefix {n}: need {need}");
                        assert!(need <= buf.len(), "chunk {chunk} prefix {n}: need {need}");
                        // Nothing shorter than `need` can complete.
                        assert!(matches!(parse(&buf[..need - 1]), Parse::NeedMore(_)));
                    }
                    other => panic!("chunk {chunk} prefix {n}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn oversized_hello_reports_need_beyond_cap_early() {
        // Header says a 60 000-byte hello: we learn that from 9 bytes.
        let buf = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xEA, 0x60];
        match parse(&buf) {
            Parse::NeedMore(n) => assert!(n > MAX_CLIENT_HELLO_BYTES, "{n}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse(&[0x16, 0x05]), Parse::NotTls);
        assert_eq!(parse(&[0x16, 0x03, 0x09]), Parse::NotTls);
        assert_eq!(parse(&[0x80, 0x2e, 0x01]), Parse::NotTls);
        assert_eq!(parse(&[]), Parse::NeedMore(1));
        assert_eq!(parse(&[0x16]), Parse::NeedMore(2));
        assert_eq!(parse(&[0x16, 0x03]), Parse::NeedMore(3));
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Parse::NeedMore(9));
    }

    #[test]
    fn bad_sni_values() {
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b".a.test",
            b"a.test..",
            b"a\0.test",
            b"a b.test",
            b"*.example.test",
            b"a.test/x",
            b"a%2e.test",
            "bücher.test".as_bytes(),
            &[b'a'; 256],
        ] {
            assert_eq!(parse(&with_sni(bad)), Parse::Invalid("bad sni"), "{bad:?}");
        }
        assert_eq!(complete(&with_sni(&[b'a'; 255])).sni.unwrap().len(), 255);
    }

    #[test]
    fn ip_literal_sni_passes_through() {
        assert_eq!(
            complete(&with_sni(b"10.0.0.1")).sni.as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            complete(&with_sni(b"2001:DB8::1")).sni.as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn structural_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                records(
                    &hello_message(Some(&[sni_ext(&[(0, b"a.test"), (0, b"b.test")])])),
                    9999,
                ),
                "duplicate sni host_name",
            ),
            (
                records(&hello_message(Some(&[sni_ext(&[(1, b"a.test")])])), 9999),
                "unsupported server_name type",
            ),
            (
                records(
                    &hello_message(Some(&[
                        sni_ext(&[(0, b"a.test")]),
                        sni_ext(&[(0, b"b.test")]),
                    ])),
                    9999,
                ),
                "duplicate extension",
            ),
            (
                records(&hello_message(Some(&[alpn_ext(&[])])), 9999),
                "empty alpn list",
            ),
            (
                records(&hello_message(Some(&[alpn_ext(&[b""])])), 9999),
                "empty alpn name",
            ),
            (
                records(&hello_message(Some(&[(EXT_SERVER_NAME, vec![0, 0])])), 9999),
                "empty server_name list",
            ),
            (vec![0x16, 0x03, 0x01, 0x00, 0x00], "empty handshake record"),
            (vec![0x16, 0x03, 0x01, 0x40, 0x01, 0x01], "record too large"),
            (
                vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00],
                "first handshake message is not a ClientHello",
            ),
            // The type is checked as soon as the first byte of the handshake arrives.
            (
                vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x0b],
                "first handshake message is not a ClientHello",
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(parse(&buf), Parse::Invalid(want));
        }
        // An alert record between two handshake fragments.
        let msg = hello_message(Some(&[sni_ext(&[(0, b"a.test")])]));
        let mut buf = records(&msg[..10], 10);
        buf.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
        buf.extend_from_slice(&records(&msg[10..], 9999));
        assert_eq!(
            parse(&buf),
            Parse::Invalid("non-handshake record inside ClientHello")
        );
    }

    #[test]
    fn never_panics_on_mutations() {
        let msg = hello_message(Some(&[
            sni_ext(&[(0, b"a.example.test")]),
            alpn_ext(&[b"h2", b"http/1.1"]),
            (EXT_SUPPORTED_VERSIONS, vec![2, 0x03, 0x04]),
        ]));
        for chunk in [5, MAX_RECORD_LEN] {
            let buf = records(&msg, chunk);
            for i in 0..buf.len() {
                for v in [
                    0x00,
                    0x01,
                    0x7f,
                    0x80,
                    0xff,
                    buf[i] ^ 0x01,
                    buf[i].wrapping_add(1),
                ] {
                    let mut m = buf.clone();
                    m[i] = v;
                    let _ = parse(&m);
                    let _ = parse(&m[..i]);
                }
            }
        }
    }
}
