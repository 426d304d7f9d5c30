//! The downstream half: see `h1/mod.rs`.
//!
//! [`serve`] runs one HTTP/1.1 keep-alive connection in the caller's task: it reads a request
//! head, reads a small `Content-Length` body whole, calls the handler, writes the response, and
//! loops (pipelined requests included). Anything unusual — HTTP/1.0, CONNECT, an upgrade,
//! `Expect`, `Transfer-Encoding`, a body over 64 KiB, a head over 16 KiB or one that does not
//! parse, the HTTP/2 preface — is handed back to the caller with every byte read so far, and
//! hyper serves the rest of the connection exactly as it would have from the first byte (its
//! 400/414/431 answers, `100 Continue`, chunked uploads, WebSocket, CONNECT, h2c).
//!
//! Memory: hyper keeps an 8 KiB read buffer and a write buffer per idle keep-alive connection
//! (issue 8). Here an idle connection holds no buffer at all: reads go through a per-thread
//! scratch buffer inside the poll, and only the bytes actually read are copied out, so what a
//! connection keeps between requests is its socket and this future's few hundred bytes.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::has_token;
use crate::body::InBody;
use crate::h1::timeouts::{Expired, Phase, Timed, Timeouts};
use crate::http::RespBody;

/// The largest request head served here; a longer one goes to hyper (which allows ~400 KiB
/// and answers 431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest `Content-Length` body read whole before the handler runs; a larger one goes to
/// hyper, which streams it.
pub const MAX_BODY: usize = 64 * 1024;
/// Header lines parsed here (hyper: 100; a request with more goes to hyper).
const MAX_HEADERS: usize = 64;
/// How much is read per `read` call (the per-thread scratch buffer).
const SCRATCH: usize = 16 * 1024;
/// A first body frame up to this size is copied behind the response head: one write.
const COALESCE: usize = 16 * 1024;

/// How a connection ended here.
pub enum Served<S> {
    /// Closed: by the client, after `Connection: close`, or on an error.
    Closed,
    /// Not for this server: hyper must serve the connection from `read`, every byte read from
    /// `io` and not consumed by a request served here.
    HandOff { read: Bytes, io: S },
    /// Closed by one of the connection's [`Timeouts`]. A request whose head or body stopped
    /// arriving was answered `408` first (Envoy: "request header timeout" / "stream timeout");
    /// an idle connection is closed without a word, as Envoy's `idle_timeout` does for HTTP/1.
    TimedOut(Expired),
}

/// Serve HTTP/1.1 requests on `io`, whose first bytes (`prefix`) protocol detection already
/// read, until the connection closes, a timeout ends it, or a request needs hyper.
pub async fn serve<S, F, Fut>(io: S, prefix: Bytes, limits: Timeouts, handler: F) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: Fn(Request<InBody>) -> Fut,
    Fut: Future<Output = Response<RespBody>>,
{
    let mut io = Timed::new(io, limits);
    let mut buf = BytesMut::from(prefix);
    loop {
        // Read until one whole head (and its body) is buffered.
        io.set_phase(Phase::Idle);
        let (req, body_len, mut keep_alive) = loop {
            if !buf.is_empty() {
                match parse(&mut buf) {
                    Parsed::Request {
                        req,
                        body_len,
                        keep_alive,
                    } => break (req, body_len, keep_alive),
                    Parsed::HandOff => {
                        return Served::HandOff {
                            read: buf.freeze(),
                            io: io.into_inner(),
                        };
                    }
                    Parsed::Partial => io.set_phase(Phase::Head),
                }
            } else {
                // Idle between requests: drop the last request's allocation so that an idle
                // connection holds no buffer.
                buf = BytesMut::new();
            }
            match read_some(&mut io, &mut buf).await {
                // A clean close between requests, or EOF inside a head: hyper closes too
                // (an incomplete message gets no response).
                Ok(0) => return Served::Closed,
                Err(_) => return timed_out(io, !buf.is_empty()).await,
                Ok(_) => {}
            }
        };
        io.set_phase(Phase::Stream);
        while buf.len() < body_len {
            match read_some(&mut io, &mut buf).await {
                Ok(0) => return Served::Closed,
                Err(_) => return timed_out(io, true).await,
                Ok(_) => {}
            }
        }
        let body = InBody::buffered(buf.split_to(body_len).freeze());
        let head_request = req.method() == Method::HEAD;
        let resp = handler(req.map(|()| body)).await;
        keep_alive &= write_response(&mut io, resp, head_request).await;
        if !keep_alive {
            if let Some(e) = io.expired() {
                // The client stopped taking the response: nothing more can be said to it.
                return Served::TimedOut(e);
            }
            // hyper shuts the write side down after the last response (TLS: close_notify).
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// A read failed: closed by a timeout (a started request is answered `408` first, as Envoy
/// does), or an I/O error (closed).
async fn timed_out<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: Timed<S>,
    started: bool,
) -> Served<S> {
    let Some(e) = io.expired() else {
        return Served::Closed;
    };
    if started {
        let body: &[u8] = match e {
            Expired::RequestHeaders => b"request header timeout",
            _ => b"stream timeout",
        };
        let mut msg = Vec::with_capacity(160);
        msg.extend_from_slice(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: ");
        msg.extend_from_slice(body.len().to_string().as_bytes());
        msg.extend_from_slice(b"\r\ncontent-type: text/plain\r\nconnection: close\r\ndate: ");
        put_date(&mut msg);
        msg.extend_from_slice(b"\r\n\r\n");
        msg.extend_from_slice(body);
        // Bounded like any response: a client that takes nothing is dropped at `stream_idle`.
        io.set_phase(Phase::Stream);
        if io.write_all(&msg).await.is_ok() && io.shutdown().await.is_ok() {
            // A short lingering close (nginx's `lingering_close`, hyper's too): closing with
            // unread bytes from the client would reset the connection, and a reset can
            // discard the 408 before the client reads it.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
    Served::TimedOut(e)
}

/// How long a connection closed by a request timeout keeps reading what the client still
/// sends, so that its `408` is not lost to a reset.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// Every connection on this thread reads through this buffer, then keeps only the bytes
    /// read (see the module docs).
    static SCRATCH_BUF: RefCell<[u8; SCRATCH]> = const { RefCell::new([0; SCRATCH]) };
}

/// One read from `io`, appended to `buf`. `Ok(0)`: end of stream.
async fn read_some<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH_BUF.with(|scratch| {
            // Never re-entered on a thread (a read does not call back into this server); if it
            // were, read through a short-lived heap buffer rather than panic.
            let mut own;
            let mut guard = scratch.try_borrow_mut().ok();
            let space: &mut [u8] = match guard.as_deref_mut() {
                Some(s) => s,
                None => {
                    own = vec![0; SCRATCH];
                    &mut own
                }
            };
            let mut rb = ReadBuf::new(space);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// What the buffered bytes hold.
// Returned once per request and taken apart at once: boxing the request would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for hyper (see the module docs); nothing was consumed.
    HandOff,
    /// A request served here: its head is consumed from the buffer; `body_len` bytes of body
    /// follow it.
    Request {
        req: Request<()>,
        body_len: usize,
        keep_alive: bool,
    },
}

/// Parse the head at the start of `buf` and decide whether it is served here. The head's
/// bytes are frozen and shared by the URI and the header values (no copy), as hyper does.
fn parse(buf: &mut BytesMut) -> Parsed {
    // The HTTP/2 connection preface (h2c prior knowledge): hyper's auto builder serves it.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    if buf.starts_with(PREFACE) {
        return Parsed::HandOff;
    }
    // Uninitialised header slots and plain offsets: nothing per request is zeroed or dropped
    // beyond the headers that are there (a 64-slot array of names cost a memset and a drop
    // loop per request).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let head_len = match r.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        // Too long, too many headers, or malformed: hyper answers (400, 431) or serves it.
        _ => return Parsed::HandOff,
    };
    // HTTP/1.0 (keep-alive rules, no chunked responses) and CONNECT (an upgrade) are hyper's.
    let (Some(method), Some(path), Some(1)) = (r.method, r.path, r.version) else {
        return Parsed::HandOff;
    };
    if method == "CONNECT" {
        return Parsed::HandOff;
    }
    let base = buf.as_ptr() as usize;
    let mut keep_alive = true;
    let mut body_len: Option<usize> = None;
    // (name start, name end, value start, value end) of each header in the head, to slice the
    // frozen head below; both ends are inside the head, at most MAX_HEAD (16 KiB) long.
    let mut spans: SmallVec<[(u16, u16, u16, u16); 16]> = SmallVec::new();
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        // Upgrades (WebSocket), `100-continue` and streamed uploads are hyper's.
        if name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return Parsed::HandOff;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOff;
                }
                // RFC 9112 §9.6: the last response on this connection.
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // More than one (even equal ones), or not a plain decimal: hyper decides
            // (RFC 9112 §6.3: 400 for an invalid length).
            let len = match (body_len, content_length(h.value)) {
                (None, Some(n)) if n <= MAX_BODY => n,
                _ => return Parsed::HandOff,
            };
            body_len = Some(len);
        }
        let ns = h.name.as_ptr() as usize - base;
        let vs = h.value.as_ptr() as usize - base;
        spans.push((
            ns as u16,
            (ns + name.len()) as u16,
            vs as u16,
            (vs + h.value.len()) as u16,
        ));
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    let path_start = path.as_ptr() as usize - base;
    let path_end = path_start + path.len();
    // The borrow of `buf` by the parser ends here: take the head out and share it.
    let head = buf.split_to(head_len).freeze();
    // Origin form or absolute form, as hyper parses it (`Uri::from_maybe_shared`); hyper
    // answers 400 to anything else.
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_start..path_end)) else {
        // Put the head back in front of whatever followed it, for hyper.
        let mut back = BytesMut::with_capacity(head.len() + buf.len());
        back.extend_from_slice(&head);
        back.extend_from_slice(buf);
        *buf = back;
        return Parsed::HandOff;
    };
    // Room for the two headers the proxy adds on the way (x-request-id, x-forwarded-proto):
    // growing a header map rehashes it. Not more: the map's entries are ~112 bytes each, and
    // a typical head's map stays in the allocator's small-size cache (<= 1 KiB).
    let mut map = HeaderMap::with_capacity(spans.len() + 2);
    for &(ns, ne, vs, ve) in &spans {
        // httparse admits only non-empty tokens as names, all of which are valid header names
        // here (the head is far below HeaderName's 64 KiB limit): this never skips one.
        let Ok(name) = HeaderName::from_bytes(&head[usize::from(ns)..usize::from(ne)]) else {
            continue;
        };
        let value = head.slice(usize::from(vs)..usize::from(ve));
        // httparse admitted only bytes a header value may hold, so this does not fail; if it
        // did, the header would be dropped rather than the request failed.
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            map.append(name, v);
        }
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Parsed::Request {
        req,
        body_len: body_len.unwrap_or(0),
        keep_alive,
    }
}

/// A `Content-Length` value: ASCII digits only (RFC 9110 §8.6), at most 19 of them.
fn content_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304): the body is not polled.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Write `resp` to `io`. `false`: the connection must close (the response said
/// `Connection: close`, the body failed or did not match its length, or the client is gone).
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    resp: Response<RespBody>,
    head_request: bool,
) -> bool {
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    // hyper: a response that says `Connection: close` is the last one on the connection, and
    // so is `101` (what follows is another protocol; never sent here, upgrades are hyper's).
    // One look at each header instead of a lookup per question.
    let (mut close, mut te) = (false, false);
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    let mut keep_alive = status != StatusCode::SWITCHING_PROTOCOLS && !close;
    if te {
        // The framing is ours to choose: a stale hop-by-hop header from elsewhere would lie.
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    let framing = framing(&mut parts.headers, status, head_request, &body);
    let mut head = Vec::with_capacity(64 + parts.headers.len() * 48);
    encode_head(&mut head, status, &parts.headers);
    drop(parts);
    let mut remaining = match framing {
        Framing::None => {
            // Dropped unpolled, as hyper does: telemetry counts a HEAD/204/304 response whole.
            drop(body);
            return io.write_all(&head).await.is_ok() && io.flush().await.is_ok() && keep_alive;
        }
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    let chunked = framing == Framing::Chunked;
    let vectored = io.is_write_vectored();
    let mut body = Pin::new(&mut body);
    // The first frame, if it is ready now, goes out with the head in one write.
    let mut pending_head = Some(head);
    let mut ended = false;
    while !ended {
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                // Nothing more to send now: what is written goes out before the body is
                // awaited, so the client sees the response start (hyper flushes here too).
                if let Some(h) = pending_head.take()
                    && io.write_all(&h).await.is_err()
                {
                    return false;
                }
                if io.flush().await.is_err() {
                    return false;
                }
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // RFC 9112 §9.6 / hyper: a response cut short can only be signalled by
                // closing the connection.
                tracing::debug!("response body failed, closing the connection: {e}");
                return false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers are not written to HTTP/1.1 clients, as Envoy's default
                // (`http_protocol_options.enable_trailers: false`): an upstream's trailers
                // (`h1/client.rs` parses them, HTTP/2 carries them) end here.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            // More than the length said would break the framing: hyper errors and closes.
            let Some(left) = remaining.checked_sub(data.len() as u64) else {
                return false;
            };
            remaining = left;
        }
        ended = body.is_end_stream();
        let d: &[u8] = &data;
        let mut line = [0u8; 20];
        let (line, crlf): (&[u8], &[u8]) = if chunked {
            (chunk_size_line(&mut line, data.len()), b"\r\n")
        } else {
            (b"", b"")
        };
        // The terminator of a chunked body rides with its last chunk.
        let last: &[u8] = if chunked && ended { b"0\r\n\r\n" } else { b"" };
        let written = match pending_head.take() {
            // One write for the whole response when it is small (the common case).
            Some(mut h) if data.len() <= COALESCE || !vectored => {
                for part in [line, d, crlf, last] {
                    h.extend_from_slice(part);
                }
                io.write_all(&h).await
            }
            Some(h) => write_all_vectored(io, &mut [&h[..], line, d, crlf, last]).await,
            None if vectored || !chunked => {
                write_all_vectored(io, &mut [line, d, crlf, last]).await
            }
            None => {
                // Not vectored (TLS): one record per chunk rather than three.
                let mut v = Vec::with_capacity(line.len() + data.len() + 2 + last.len());
                for part in [line, d, crlf, last] {
                    v.extend_from_slice(part);
                }
                io.write_all(&v).await
            }
        };
        if written.is_err() {
            return false; // the client is gone
        }
    }
    let mut tail = pending_head.unwrap_or_default();
    if chunked && !ended {
        tail.extend_from_slice(b"0\r\n\r\n");
    }
    if remaining > 0 {
        // The body ended short of its length: the client would wait for the rest (hyper
        // closes the connection).
        keep_alive = false;
    }
    if !tail.is_empty() && io.write_all(&tail).await.is_err() {
        return false;
    }
    io.flush().await.is_ok() && keep_alive
}

/// Decide the framing as hyper's server does (`proto/h1/role.rs`, `Server::encode`), and make
/// the headers say it.
fn framing(
    headers: &mut HeaderMap,
    status: StatusCode,
    head_request: bool,
    body: &RespBody,
) -> Framing {
    // (`transfer-encoding` was removed by the caller: the framing is ours to choose.)
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // RFC 9110 §8.6: never a Content-Length on 1xx/204; on 304 hyper drops it too (the
        // body it has is empty).
        headers.remove(header::CONTENT_LENGTH);
        return Framing::None;
    }
    if head_request {
        // The Content-Length a GET would have had stays; one is added when the body knows it.
        if !headers.contains_key(header::CONTENT_LENGTH)
            && !body.is_end_stream()
            && let Some(n) = body.size_hint().exact()
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        return Framing::None;
    }
    if body.is_end_stream() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return Framing::Length(0);
    }
    if let Some(n) = body.size_hint().exact() {
        // Usually the upstream's own Content-Length says the same: kept as it is, nothing
        // is formatted.
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let same = matches!(
            (lengths.next(), lengths.next()),
            (Some(v), None)
                if content_length(v.as_bytes()).and_then(|m| u64::try_from(m).ok()) == Some(n)
        );
        if !same {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        return Framing::Length(n);
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(v), None) = (lengths.next(), lengths.next())
        && let Some(n) = content_length(v.as_bytes())
    {
        // The body does not know its length but the headers do (an upstream response streamed
        // through): kept, as hyper does.
        return Framing::Length(n as u64);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Framing::Chunked
}

/// Status line, headers, a `date` if there is none, the blank line.
fn encode_head(dst: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    if status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        // hyper: "a reason MUST be written, as many parsers will expect it".
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    // Seen on the way rather than looked up after (one hash lookup less per response).
    let mut date = false;
    for (name, value) in headers {
        date |= name == header::DATE;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if !date {
        dst.extend_from_slice(b"date: ");
        put_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

thread_local! {
    /// (second, IMF-fixdate of that second): formatted once a second per thread, as hyper's
    /// cached date header (`common/date.rs`).
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [b' '; 29])) };
}

/// Append the current `Date` value (RFC 9110 §6.6.1: an origin server with a clock sends it).
fn put_date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let Ok(mut d) = d.try_borrow_mut() else {
            dst.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            return;
        };
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == d.1.len() {
                d.1.copy_from_slice(s.as_bytes());
                d.0 = secs;
            } else {
                dst.extend_from_slice(s.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&d.1);
    })
}

/// `HEX\r\n` for a chunk of `len` bytes.
fn chunk_size_line(out: &mut [u8; 20], len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    out[..d.len()].copy_from_slice(d);
    out[d.len()..d.len() + 2].copy_from_slice(b"\r\n");
    &out[..d.len() + 2]
}

/// Write every part, in as few `writev` calls as the socket allows.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    io: &mut S,
    parts: &mut [&[u8]],
) -> io::Result<()> {
    let mut left: usize = parts.iter().map(|p| p.len()).sum();
    while left > 0 {
        let written = poll_fn(|cx| {
            // Built on the stack at each poll, so the slices are no part of the future.
            let mut slices = [IoSlice::new(&[]); 5];
            let mut n = 0;
            for (s, p) in slices
                .iter_mut()
                .zip(parts.iter().filter(|p| !p.is_empty()))
            {
                *s = IoSlice::new(p);
                n += 1;
            }
            let slices = slices.get(..n).unwrap_or_default();
            Pin::new(&mut *io).poll_write_vectored(cx, slices)
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        left = left.saturating_sub(written);
        // Drop what was written from the front.
        let mut w = written;
        for p in parts.iter_mut() {
            let k = w.min(p.len());
            *p = p.get(k..).unwrap_or_default();
            w -= k;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::task::Context;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Frame, SizeHint};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use crate::body::BoxError;

    type Handler = fn(Request<InBody>) -> Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

    /// Answers `METHOD URI host=.. hint=.. end=.. body=..` (a Full body: exact length), and
    /// special paths that exercise the framing decisions.
    fn echo(req: Request<InBody>) -> Pin<Box<dyn Future<Output = Response<RespBody>> + Send>> {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let hint = body.size_hint().exact();
            let end = body.is_end_stream();
            let body = body.collect().await.unwrap().to_bytes();
            let full = |s: String| Full::new(Bytes::from(s)).map_err(BoxError::from).boxed();
            let text = format!(
                "{} {} host={} hint={hint:?} end={end} body={}",
                parts.method,
                parts.uri,
                parts
                    .headers
                    .get("host")
                    .map_or("-", |h| h.to_str().unwrap()),
                String::from_utf8_lossy(&body)
            );
            let mut resp = match parts.uri.path() {
                "/chunked" => Response::new(
                    Frames::new(&["hello", " world"], false)
                        .map_err(BoxError::from)
                        .boxed(),
                ),
                "/slow-chunked" => Response::new(
                    Frames::new(&["a", "bc"], true)
                        .map_err(BoxError::from)
                        .boxed(),
                ),
                "/no-content" => {
                    let mut r = Response::new(full("ignored".into()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                "/empty" => {
                    Response::new(http_body_util::Empty::new().map_err(BoxError::from).boxed())
                }
                "/close" => {
                    let mut r = Response::new(full("bye".into()));
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    r
                }
                "/fail" => Response::new(Failing(1).boxed()),
                "/big" => Response::new(full("x".repeat(200_000))),
                "/endless" => Response::new(Endless.boxed()),
                _ => Response::new(full(text)),
            };
            resp.headers_mut()
                .insert("x-test", HeaderValue::from_static("1"));
            resp
        })
    }

    /// A body of the given frames whose length is unknown; `slow` makes every frame wait
    /// for one more poll (as a streamed upstream body does).
    struct Frames {
        frames: VecDeque<Bytes>,
        slow: bool,
        ready: bool,
    }

    impl Frames {
        fn new(frames: &[&'static str], slow: bool) -> Frames {
            Frames {
                frames: frames
                    .iter()
                    .map(|f| Bytes::from_static(f.as_bytes()))
                    .collect(),
                slow,
                ready: false,
            }
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.slow && !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    /// 64 KiB data frames, always ready, never ending.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            static CHUNK: [u8; 65536] = [b'e'; 65536];
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    /// Yields `n` data frames, then fails.
    struct Failing(usize);

    impl Body for Failing {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 == 0 {
                return Poll::Ready(Some(Err("upstream reset".into())));
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
        }
    }

    /// A loopback server running `serve` on one accepted connection.
    async fn start(handler: Handler) -> (SocketAddr, JoinHandle<Served<TcpStream>>) {
        start_timed(handler, Timeouts::default()).await
    }

    async fn start_timed(
        handler: Handler,
        limits: Timeouts,
    ) -> (SocketAddr, JoinHandle<Served<TcpStream>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve(s, Bytes::new(), limits, handler).await
        });
        (addr, task)
    }

    /// Everything the server writes until it closes, without the `date` lines (checked
    /// separately).
    async fn read_all(c: &mut TcpStream) -> String {
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        text.split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect()
    }

    fn response(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const TWO: &str = "GET /a?q=1 HTTP/1.1\r\nHost: x.test\r\n\r\n\
                       POST /b HTTP/1.1\r\nhost: x.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

    fn two_responses() -> String {
        response("GET /a?q=1 host=x.test hint=Some(0) end=true body=")
            + &response("POST /b host=x.test hint=Some(5) end=false body=hello")
    }

    #[tokio::test]
    async fn pipelined_requests_in_one_write() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(TWO.as_bytes()).await.unwrap();
        assert_eq!(read_all(&mut c).await, two_responses());
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn requests_split_byte_by_byte() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        for b in TWO.as_bytes() {
            c.write_all(&[*b]).await.unwrap();
            // Let the server read each byte on its own (pacing, not a timing assertion).
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        assert_eq!(read_all(&mut c).await, two_responses());
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    /// Idle, stream-idle and request-headers limits in milliseconds.
    fn limits(idle: u64, stream_idle: u64, request_headers: u64) -> Timeouts {
        let ms = |n| Some(std::time::Duration::from_millis(n));
        Timeouts {
            idle: ms(idle),
            stream_idle: ms(stream_idle),
            request_headers: ms(request_headers),
        }
    }

    /// A test's upper bound on a server that must end by itself (not a timing assertion: the
    /// limits under test are a few hundred milliseconds).
    async fn ended(task: JoinHandle<Served<TcpStream>>) -> Served<TcpStream> {
        tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .expect("the server ends the connection")
            .unwrap()
    }

    #[tokio::test]
    async fn idle_timeout_counts_from_the_last_request() {
        let (addr, task) = start_timed(echo, limits(300, 5000, 5000)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let one = b"GET /a HTTP/1.1\r\nHost: x.test\r\n\r\n";
        let mut expected = String::new();
        // Three requests 150 ms apart: 450 ms in all, more than the idle timeout, and the
        // connection is still served (the timer counts from the last request).
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
            c.write_all(one).await.unwrap();
            expected += &response("GET /a host=x.test hint=Some(0) end=true body=");
        }
        // Then nothing: the server closes without a word.
        assert_eq!(read_all(&mut c).await, expected);
        assert!(matches!(ended(task).await, Served::TimedOut(Expired::Idle)));
    }

    #[tokio::test]
    async fn slowloris_head_gets_408_at_the_request_headers_timeout() {
        let (addr, task) = start_timed(echo, limits(5000, 5000, 300)).await;
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = c.into_split();
        // One header line every 70 ms, never the blank line: always active, never done.
        let drip = tokio::spawn(async move {
            wr.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n").await?;
            for i in 0..300 {
                tokio::time::sleep(std::time::Duration::from_millis(70)).await;
                wr.write_all(format!("x-drip-{i}: 1\r\n").as_bytes())
                    .await?;
            }
            Ok::<_, io::Error>(())
        });
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nrequest header timeout"), "{text}");
        assert!(matches!(
            ended(task).await,
            Served::TimedOut(Expired::RequestHeaders)
        ));
        drip.abort();
    }

    #[tokio::test]
    async fn stalled_body_gets_408_at_the_stream_idle_timeout() {
        let (addr, task) = start_timed(echo, limits(5000, 300, 5000)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: x.test\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let text = read_all(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.ends_with("stream timeout"), "{text}");
        assert!(matches!(
            ended(task).await,
            Served::TimedOut(Expired::StreamIdle)
        ));
    }

    #[tokio::test]
    async fn client_that_stops_reading_is_dropped_at_the_stream_idle_timeout() {
        let (addr, task) = start_timed(echo, limits(5000, 300, 5000)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /endless HTTP/1.1\r\nHost: x.test\r\n\r\n")
            .await
            .unwrap();
        // The response never ends and the client reads none of it: once the socket buffers
        // are full, no progress for 300 ms ends the connection.
        assert!(matches!(
            ended(task).await,
            Served::TimedOut(Expired::StreamIdle)
        ));
        drop(c);
    }

    #[tokio::test]
    async fn no_limits_no_timer() {
        let limits = Timeouts {
            idle: None,
            stream_idle: None,
            request_headers: None,
        };
        let (addr, task) = start_timed(echo, limits).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n")
            .await
            .unwrap();
        // Still waiting for the rest of the head well after any of the limits above.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!task.is_finished());
        c.write_all(b"Connection: close\r\n\r\n").await.unwrap();
        assert!(read_all(&mut c).await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(matches!(ended(task).await, Served::Closed));
    }

    #[test]
    fn parser_waits_for_the_whole_head() {
        let all = b"GET http://a.test:8080/p HTTP/1.1\r\nHost: a.test:8080\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest";
        let mut buf = BytesMut::new();
        for (i, b) in all.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match parse(&mut buf) {
                Parsed::Partial => assert!(i + 5 < all.len(), "complete at {i}"),
                Parsed::HandOff => panic!("handed off at byte {i}"),
                Parsed::Request {
                    req,
                    body_len,
                    keep_alive,
                } => {
                    assert_eq!(i + 5, all.len());
                    assert_eq!(req.method(), Method::GET);
                    assert_eq!(req.uri().authority().unwrap().as_str(), "a.test:8080");
                    assert_eq!(req.uri().path(), "/p");
                    assert_eq!(req.version(), Version::HTTP_11);
                    let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
                    assert_eq!(xa, ["1", "2"]);
                    assert_eq!((body_len, keep_alive), (0, true));
                    assert!(buf.is_empty());
                    return;
                }
            }
        }
        panic!("never complete");
    }

    #[test]
    fn content_length_values() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"65536"), Some(65536));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1,1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut b = [0; 20];
        assert_eq!(chunk_size_line(&mut b, 0), b"0\r\n");
        assert_eq!(chunk_size_line(&mut b, 255), b"FF\r\n");
        assert_eq!(chunk_size_line(&mut b, 0x10000), b"10000\r\n");
    }

    #[tokio::test]
    async fn head_and_no_content_have_no_body_and_keep_the_connection() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let len = "HEAD /h host=x hint=Some(0) end=true body=".len();
        assert_eq!(
            read_all(&mut c).await,
            format!(
                "HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: {len}\r\n\r\n\
                 HTTP/1.1 204 No Content\r\nx-test: 1\r\n\r\n\
                 HTTP/1.1 200 OK\r\nx-test: 1\r\ncontent-length: 0\r\n\r\n"
            )
        );
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn unknown_length_is_chunked_and_the_connection_stays_usable() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /slow-chunked HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let chunked = "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            read_all(&mut c).await,
            format!(
                "{chunked}5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
                 {chunked}1\r\na\r\n2\r\nbc\r\n0\r\n\r\n{}",
                response("GET /after host=x hint=Some(0) end=true body=")
            )
        );
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn date_header_is_added() {
        let (addr, _task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date header");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[tokio::test]
    async fn response_connection_close_ends_the_connection() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            read_all(&mut c).await,
            "HTTP/1.1 200 OK\r\nconnection: close\r\nx-test: 1\r\ncontent-length: 3\r\n\r\nbye"
        );
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn body_error_mid_response_closes_the_connection() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_all(&mut c).await,
            "HTTP/1.1 200 OK\r\nx-test: 1\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n"
        );
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn client_gone_mid_response_closes_without_panic() {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read a little of the 200 KB body, then go away (a reset: unread data is pending).
        let mut some = [0u8; 100];
        c.read_exact(&mut some).await.unwrap();
        drop(c);
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn large_body_is_written_whole() {
        let (addr, _task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = read_all(&mut c).await;
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-length: 200000"), "{head}");
        assert_eq!(body.len(), 200_000);
    }

    /// Sends `served` (requests this server answers) then `rest` in one write, and checks
    /// that the server answered the first and handed off with every byte of the rest
    /// (read so far, plus what is still in the socket).
    async fn hands_off(served: &str, rest: &[u8]) {
        let (addr, task) = start(echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut all = served.as_bytes().to_vec();
        all.extend_from_slice(rest);
        c.write_all(&all).await.unwrap();
        c.shutdown().await.unwrap();
        let Served::HandOff { read, mut io } = task.await.unwrap() else {
            panic!("not handed off: {:?}", String::from_utf8_lossy(rest));
        };
        let mut got = read.to_vec();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, rest, "{:?}", String::from_utf8_lossy(rest));
        drop(io);
        let answered = read_all(&mut c).await;
        assert_eq!(
            answered.matches("HTTP/1.1 200 OK").count(),
            served.matches(" HTTP/1.1\r\n").count()
        );
    }

    #[tokio::test]
    async fn unusual_requests_are_handed_off_with_their_bytes() {
        let get = "GET /first HTTP/1.1\r\nHost: x\r\n\r\n";
        let cases: &[&[u8]] = &[
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, upgrade\r\n\r\n",
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n0123",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http:// HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for rest in cases {
            hands_off("", rest).await;
            hands_off(get, rest).await;
        }
        // A head longer than the fast path's limit.
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        hands_off(get, long.as_bytes()).await;
    }

    #[tokio::test]
    async fn connection_future_is_small() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let fut = serve(b, Bytes::new(), Timeouts::default(), echo);
        let size = std::mem::size_of_val(&fut);
        // The task of an idle keep-alive connection is this future (plus the socket), where
        // hyper keeps two 8 KiB buffers (issue 8). About 1.3 KiB in a debug build (locals of
        // the response writer are not overlapped there), less in release.
        eprintln!("serve() future: {size} bytes");
        assert!(size <= 2048, "serve() future is {size} bytes");
        assert!(matches!(fut.await, Served::Closed));
    }
}
