//! Protocol detection on connections whose port has no declared protocol (DESIGN.md "The
//! request path", step 2).
//!
//! Istio sniffs the protocol when a port's `protocol` is empty or unknown
//! (`istio-egress-spec.md` §1, `ports[].protocol`): Envoy's `tls_inspector` (SNI, ALPN) and
//! `http_inspector` (HTTP/1 request line, HTTP/2 preface) look at the first bytes; anything
//! else is plain TCP. A declared protocol always wins and skips this module.
//!
//! [`detect`] reads incrementally — it never assumes the first read holds everything (a
//! ClientHello can arrive one byte per TCP segment, `reliability-and-users.md` §4 item 10) —
//! and returns the bytes it consumed so the chosen handler can replay them through
//! [`crate::io::PrefixedIo`].
//!
//! Timeouts: Istio's `MeshConfig.protocolDetectionTimeout` treats a connection as plain TCP
//! when the client has sent nothing within the period. (Istio's default is `0s`, "no timeout",
//! which stalls server-first protocols such as MySQL or SMTP forever unless the port is
//! declared; egret always uses a finite timeout.) So: nothing received when the timeout
//! elapses → [`Detected::Opaque`] with no bytes. A client that started a TLS ClientHello and
//! went quiet is different: it is either broken or probing, and it is refused with
//! [`DetectError::Timeout`] (the caller closes the socket). Anything malformed that starts like
//! TLS fails closed ([`DetectError::InvalidTls`]) instead of being waved through as opaque TCP.

use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::tls_hello::{self, CONTENT_TYPE_HANDSHAKE, ClientHello, Parse};

/// The most bytes detection will buffer before deciding.
pub const MAX_PEEK: usize = tls_hello::MAX_CLIENT_HELLO_BYTES;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/1 method plus its space must appear within this many bytes.
const MAX_METHOD_PEEK: usize = 16;

/// Methods that decide HTTP/1 as soon as `METHOD SP` is seen (RFC 9110 §9 and PATCH). Other
/// token methods (extensions, or lower-case `get` from a text protocol like memcached) are only
/// HTTP/1 once the whole request line `METHOD SP target SP HTTP/1.x` is seen, as with Envoy's
/// `http_inspector`, which rejects what its HTTP parser cannot read.
const COMMON_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// What the client speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A complete, well-formed TLS ClientHello (route by SNI; ALPN for observability).
    Tls(ClientHello),
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// Anything else, including server-first protocols (the client sent nothing in time).
    Opaque,
}

/// Why detection refused the connection. The caller closes it; all of these are logged and
/// counted, none are routed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The client started a TLS ClientHello and stopped sending before completing it.
    #[error("protocol detection timed out in the middle of a TLS ClientHello")]
    Timeout,
    /// The client closed the connection without sending a byte.
    #[error("connection closed by the client before it sent any data")]
    Eof,
    /// The ClientHello does not fit in [`MAX_PEEK`] bytes.
    #[error("TLS ClientHello larger than the {MAX_PEEK}-byte detection limit")]
    TooLarge,
    /// The client sent a TLS handshake record that is not a valid ClientHello.
    #[error("malformed TLS ClientHello: {0}")]
    InvalidTls(&'static str),
    /// Reading from the client failed.
    #[error("reading from the client during protocol detection: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `io` until the protocol is known, for at most `timeout` overall.
///
/// Returns what was detected and every byte read (replay them with
/// [`crate::io::PrefixedIo`]). Outcomes:
/// - TLS: first byte 0x16 and a complete ClientHello → [`Detected::Tls`]; malformed →
///   [`DetectError::InvalidTls`]; larger than [`MAX_PEEK`] → [`DetectError::TooLarge`];
///   timeout while incomplete → [`DetectError::Timeout`].
/// - The 24-byte HTTP/2 preface → [`Detected::Http2`] (a matching prefix keeps reading).
/// - `METHOD SP` of a common method within the first 16 bytes, or a complete
///   `METHOD SP target SP HTTP/1.x` line → [`Detected::Http1`].
/// - Anything else → [`Detected::Opaque`]; also on timeout with nothing read (server-first
///   protocols; empty bytes), on timeout or EOF with undecided non-TLS bytes, and on reaching
///   [`MAX_PEEK`] without a TLS decision.
/// - EOF with nothing read → [`DetectError::Eof`]. EOF after some bytes → `Opaque` with them.
pub async fn detect<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> Result<(Detected, Bytes), DetectError> {
    let mut buf = BytesMut::with_capacity(1024);
    // `read_buf` is cancel-safe: when the timeout drops the read, every byte already read is
    // in `buf`.
    let outcome = tokio::time::timeout(timeout, read_until_decided(io, &mut buf)).await;
    let detected = match outcome {
        Ok(result) => result?,
        Err(_elapsed) => {
            if buf.first() == Some(&CONTENT_TYPE_HANDSHAKE) {
                // Undecided bytes starting with 0x16 are always an incomplete ClientHello:
                // a non-TLS 0x16 prefix was already decided as opaque.
                tracing::debug!(
                    read = buf.len(),
                    "protocol detection timed out mid-ClientHello"
                );
                return Err(DetectError::Timeout);
            }
            tracing::trace!(read = buf.len(), "protocol detection timed out; opaque");
            Detected::Opaque
        }
    };
    Ok((detected, buf.freeze()))
}

async fn read_until_decided<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<Detected, DetectError> {
    let mut classifier = Classifier::default();
    loop {
        match classifier.step(buf) {
            Step::Done(d) => return Ok(d),
            Step::TooLarge => return Err(DetectError::TooLarge),
            Step::InvalidTls(reason) => return Err(DetectError::InvalidTls(reason)),
            Step::NeedMore => {}
        }
        let room = MAX_PEEK.saturating_sub(buf.len());
        if room == 0 {
            // Only a long HTTP/1-looking line gets here (TLS reports TooLarge above).
            return Ok(Detected::Opaque);
        }
        buf.reserve(room.min(4096));
        let n = io.read_buf(&mut (&mut *buf).limit(room)).await?;
        if n == 0 {
            if buf.is_empty() {
                return Err(DetectError::Eof);
            }
            // Half-closed before we could decide: whatever it is, it is not something we
            // can parse; the TCP path forwards it unchanged.
            return Ok(Detected::Opaque);
        }
    }
}

enum Step {
    Done(Detected),
    NeedMore,
    TooLarge,
    InvalidTls(&'static str),
}

/// Classifies the growing buffer. It remembers how far it got so that a client dribbling
/// bytes one per segment costs linear work, not a re-parse of up to [`MAX_PEEK`] bytes per
/// byte: TLS is re-parsed only once `tls_hello::parse`'s `NeedMore` lower bound is reached
/// (with tiny records that bound shrinks the remaining work geometrically), and a long HTTP/1
/// request-target is scanned once.
#[derive(Default)]
struct Classifier {
    /// Do not look again before the buffer has this many bytes.
    need: usize,
    /// Bytes of the HTTP/1 request-target already known to be valid.
    target_scanned: usize,
}

impl Classifier {
    fn step(&mut self, buf: &[u8]) -> Step {
        if buf.len() < self.need {
            return Step::NeedMore;
        }
        let Some(&first) = buf.first() else {
            return Step::NeedMore;
        };
        if first == CONTENT_TYPE_HANDSHAKE {
            return match tls_hello::parse(buf) {
                Parse::Complete(hello) => Step::Done(Detected::Tls(hello)),
                Parse::NeedMore(n) if n > MAX_PEEK => Step::TooLarge,
                Parse::NeedMore(n) => {
                    self.need = n;
                    Step::NeedMore
                }
                // 0x16 followed by something other than a TLS version: some binary protocol.
                Parse::NotTls => Step::Done(Detected::Opaque),
                Parse::Invalid(reason) => Step::InvalidTls(reason),
            };
        }
        // The preface starts with `PRI `, which would also pass as an HTTP/1 method: check
        // it first.
        match buf.get(..H2_PREFACE.len()) {
            Some(head) if head == H2_PREFACE => return Step::Done(Detected::Http2),
            Some(_) => {}
            None if H2_PREFACE.starts_with(buf) => return Step::NeedMore,
            None => {}
        }
        classify_http1(buf, &mut self.target_scanned)
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn classify_http1(buf: &[u8], target_scanned: &mut usize) -> Step {
    let head = buf.get(..MAX_METHOD_PEEK).unwrap_or(buf);
    let method_len = match head.iter().position(|&b| !is_tchar(b)) {
        // All token characters so far: wait for the space unless 16 bytes already passed.
        None if head.len() < MAX_METHOD_PEEK => return Step::NeedMore,
        None => return Step::Done(Detected::Opaque),
        Some(0) => return Step::Done(Detected::Opaque),
        Some(i) if head.get(i) == Some(&b' ') => i,
        Some(_) => return Step::Done(Detected::Opaque),
    };
    let method = buf.get(..method_len).unwrap_or_default();
    if COMMON_METHODS.contains(&method) {
        return Step::Done(Detected::Http1);
    }
    let rest = buf.get(method_len.saturating_add(1)..).unwrap_or_default();
    match request_line_tail(rest, target_scanned) {
        Some(true) => Step::Done(Detected::Http1),
        Some(false) => Step::Done(Detected::Opaque),
        None => Step::NeedMore,
    }
}

/// Checks `target SP HTTP/1.x (CR) LF` incrementally: `Some(true)` matches, `Some(false)`
/// cannot match, `None` is a matching prefix so far. `scanned` bytes of `rest` are already
/// known to be request-target characters.
fn request_line_tail(rest: &[u8], scanned: &mut usize) -> Option<bool> {
    // request-target: visible ASCII, no spaces (RFC 9112 §3.2).
    let from = (*scanned).min(rest.len());
    let unscanned = rest.get(from..).unwrap_or_default();
    let target_len = match unscanned.iter().position(|&b| !b.is_ascii_graphic()) {
        None => {
            *scanned = rest.len();
            return None;
        }
        Some(i) => from.saturating_add(i),
    };
    match rest.get(target_len) {
        Some(b' ') if target_len > 0 => {}
        _ => return Some(false),
    }
    let version = rest.get(target_len.saturating_add(1)..).unwrap_or_default();
    const HTTP1: &[u8] = b"HTTP/1.";
    let Some(after) = version.strip_prefix(HTTP1) else {
        return if HTTP1.starts_with(version) {
            None
        } else {
            Some(false)
        };
    };
    match after {
        [] => None,
        [d, ..] if !d.is_ascii_digit() => Some(false),
        [_] | [_, b'\r'] => None,
        [_, b'\n', ..] | [_, b'\r', b'\n', ..] => Some(true),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn outcome(step: Step) -> Option<Detected> {
        match step {
            Step::Done(d) => Some(d),
            Step::NeedMore => None,
            Step::TooLarge => panic!("too large"),
            Step::InvalidTls(r) => panic!("invalid tls {r}"),
        }
    }

    /// The decision on `buf`, checking that feeding it one byte at a time through one
    /// classifier (as `detect` does with 1-byte reads) decides the same, no later.
    fn decided(buf: &[u8]) -> Option<Detected> {
        let whole = outcome(Classifier::default().step(buf));
        let mut incremental = Classifier::default();
        for n in 1..=buf.len() {
            if let Some(d) = outcome(incremental.step(&buf[..n])) {
                assert_eq!(Some(d), whole, "{buf:?} decided early at {n}");
                return whole;
            }
        }
        assert_eq!(whole, None, "{buf:?}");
        whole
    }

    #[test]
    fn common_methods_decide_at_the_space() {
        assert_eq!(decided(b"GET"), None);
        assert_eq!(decided(b"GET "), Some(Detected::Http1));
        assert_eq!(decided(b"CONNECT "), Some(Detected::Http1));
        assert_eq!(decided(b"OPTIONS * HTTP/1.1\r\n"), Some(Detected::Http1));
    }

    #[test]
    fn other_methods_need_the_request_line() {
        assert_eq!(decided(b"PROPFIND /x HT"), None);
        assert_eq!(decided(b"PROPFIND /x HTTP/1.1"), None);
        assert_eq!(decided(b"PROPFIND /x HTTP/1.1\r"), None);
        assert_eq!(decided(b"PROPFIND /x HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(decided(b"get / HTTP/1.0\n"), Some(Detected::Http1));
        // memcached and Redis inline commands are not HTTP.
        assert_eq!(decided(b"get key\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"set k 0 0 5\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"SET k v\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"FOO / HTTP/2.0\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"FOO / HTTP/1.x\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"FOO  / HTTP/1.1\r\n"), Some(Detected::Opaque));
    }

    #[test]
    fn non_methods_are_opaque() {
        assert_eq!(decided(b" GET /"), Some(Detected::Opaque));
        assert_eq!(decided(b"GET\t/"), Some(Detected::Opaque));
        assert_eq!(decided(b"*3\r\n$3\r\nSET\r\n"), Some(Detected::Opaque));
        assert_eq!(decided(b"ABCDEFGHIJKLMNOP "), Some(Detected::Opaque));
        assert_eq!(decided(b"ABCDEFGHIJKLMNO"), None);
        assert_eq!(decided(b"ABCDEFGHIJKLMNO "), None);
        assert_eq!(decided(&[0x00, 0x01]), Some(Detected::Opaque));
    }

    #[test]
    fn h2_preface_prefixes_wait_and_diverging_pri_is_http1_or_opaque() {
        for n in 1..H2_PREFACE.len() {
            assert_eq!(decided(&H2_PREFACE[..n]), None, "{n}");
        }
        assert_eq!(decided(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(decided(b"PRI * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(decided(b"PRI * HTTP/2.0\r\n\r\nXX"), Some(Detected::Opaque));
    }

    #[test]
    fn non_tls_0x16() {
        assert_eq!(decided(&[0x16, 0x00, 0x01]), Some(Detected::Opaque));
    }
}
