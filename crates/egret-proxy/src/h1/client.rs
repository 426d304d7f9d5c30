//! The upstream half: see `h1/mod.rs`.
//!
//! One HTTP/1.1 exchange runs in the task of the request that makes it: [`Conn::send`] writes
//! the request and reads the response head on a pooled connection it owns, and the response
//! [`Body`] owns the connection while the body is read, putting it back into the [`Pool`]
//! (synchronously, under a short lock) when the body has been read to its end. There is no
//! connection task, no channel and no task spawned to wait for the connection to be ready
//! again, which is where hyper's client spent most of egret's user-space time per request.
//!
//! Framing follows RFC 9112 §6 like Envoy's codec: a response to HEAD, a 1xx/204/304 response
//! has no body; `transfer-encoding: chunked` wins over `content-length` (and the connection is
//! not reused then, RFC 9112 §6.3 p.3); otherwise `content-length`; otherwise the body runs to
//! the end of the connection. Limits are Envoy's defaults rounded to powers of two: a head of
//! at most 64 KiB (`max_request_headers_kb` 60) and at most 100 headers
//! (`max_headers_count` 100).

use egret_model::fastmap::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::has_token;
use crate::body::BoxError;
use crate::upstream::{PoolKey, PoolLimits, ReqBody, SyncStream};

/// The largest response head (status line and headers) read.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) and the largest trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;
/// How much is read at a time: 8 KiB for heads and small bodies, up to 64 KiB for large ones.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;
/// A head is read into at least this much free room (the consumed front of the buffer is
/// reclaimed when nothing else holds it): a head and a small body sent in one segment then
/// take one read. With 1 KiB of room, 1 KiB bodies took a second read, and a second write
/// downstream, in 12 % of responses (bench/NOTES.md "Seventh pass").
const HEAD_ROOM: usize = 4 * 1024;
/// A read buffer that grew past this (a large head) is not kept by an idle connection.
const KEEP_BUF: usize = 16 * 1024;

/// Why an exchange failed. Before the response head, any of these is an upstream reset to
/// the caller (Envoy's `UC`, `upstream_reset_before_response_started`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the response head")]
    Closed,
    #[error("invalid response: {0}")]
    Parse(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("connection closed before the end of the response body")]
    Incomplete,
}

/// Idle HTTP/1.1 connections by [`PoolKey`], most recently used last (reused first: it is
/// the most likely to still be open and warm).
pub struct Pool {
    idle: std::sync::Mutex<HashMap<PoolKey, Vec<Conn>>>,
    max_idle: usize,
}

impl Pool {
    /// A pool keeping at most `max_idle` idle connections per key.
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: std::sync::Mutex::new(HashMap::default()),
            max_idle,
        }
    }

    /// An idle connection for `key` that is still open and within the cluster's limits.
    ///
    /// Each candidate is probed with one non-blocking read: bytes or an end of stream on an
    /// idle connection mean the server closed it (or broke the protocol), so it is dropped
    /// instead of failing the request that would have used it. hyper's pool only learned of a
    /// close when its connection task ran, which let requests race keep-alive timeouts.
    pub(crate) fn take(&self, key: &PoolKey, limits: &PoolLimits) -> Option<Conn> {
        let now = Instant::now();
        loop {
            // One connection per lock: closing a dead one happens outside the lock.
            let mut c = self.idle.lock().ok()?.get_mut(key)?.pop()?;
            if !c.expired(limits, now) && c.is_open() {
                return Some(c);
            }
        }
    }

    /// Keep `conn` for reuse unless it has carried `maxRequestsPerConnection` requests or
    /// lived `maxConnectionDuration` (Istio's DestinationRule `connectionPool`, which Envoy
    /// enforces the same way: the connection is closed once its last response is complete).
    fn put(&self, mut conn: Conn, limits: &PoolLimits) {
        if limits.max_requests_per_connection > 0 && conn.uses >= limits.max_requests_per_connection
        {
            return;
        }
        let now = Instant::now();
        conn.since = now;
        if conn.expired(limits, now) {
            return;
        }
        if conn.buf.capacity() > KEEP_BUF {
            conn.buf = BytesMut::new();
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        match idle.get_mut(&conn.key) {
            Some(list) => {
                // Drop those idle past `idleTimeout` while here.
                list.retain(|c| !c.expired(limits, now));
                if list.len() < self.max_idle {
                    list.push(conn);
                }
            }
            None => {
                let key = conn.key.clone();
                idle.insert(key, vec![conn]);
            }
        }
    }

    /// Idle connections that are still open (closed ones are dropped while counting, so the
    /// `egret_upstream_idle_connections` gauge does not count what the servers have closed).
    pub fn idle_count(&self) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        idle.values_mut()
            .map(|list| {
                list.retain_mut(Conn::is_open);
                list.len()
            })
            .sum()
    }
}

/// Where a checked-out connection goes back to.
struct Home {
    pool: Arc<Pool>,
    limits: PoolLimits,
}

/// An HTTP/1.1 connection to an upstream (plain TCP or TLS), with its read buffer and what
/// the pool limits need.
pub struct Conn {
    io: Box<dyn SyncStream>,
    /// Bytes read and not yet consumed. Response heads are frozen out of it and shared by
    /// the header values, so reading a head copies nothing.
    buf: BytesMut,
    /// The request head being written (kept between requests: no allocation per request).
    wbuf: Vec<u8>,
    key: PoolKey,
    /// Requests carried, this one included.
    uses: u32,
    created: Instant,
    /// Idle since (while pooled).
    since: Instant,
    /// Set while checked out; never set in the pool (no reference cycle).
    home: Option<Home>,
}

impl Conn {
    /// A new connection over `io`, checked out of `pool`.
    pub(crate) fn new(
        io: Box<dyn SyncStream>,
        key: PoolKey,
        pool: Arc<Pool>,
        limits: PoolLimits,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            key,
            uses: 1,
            created: now,
            since: now,
            home: Some(Home { pool, limits }),
        }
    }

    /// This idle connection, checked out of `pool` for one more request.
    pub fn checked_out(mut self, pool: Arc<Pool>, limits: PoolLimits) -> Conn {
        self.uses = self.uses.saturating_add(1);
        self.home = Some(Home { pool, limits });
        self
    }

    fn expired(&self, limits: &PoolLimits, now: Instant) -> bool {
        limits
            .idle_timeout
            .is_some_and(|t| now.duration_since(self.since) >= t)
            || limits
                .max_connection_duration
                .is_some_and(|t| now.duration_since(self.created) >= t)
    }

    /// One read that never waits: `Pending` is the only answer an open idle connection gives.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Back to the pool when the exchange left it reusable, else closed (dropped).
    fn release(mut self, keep_alive: bool) {
        if keep_alive
            && self.buf.is_empty()
            && let Some(home) = self.home.take()
        {
            home.pool.put(self, &home.limits);
        }
    }

    /// Send `req` (origin-form URI, headers without hop-by-hop ones) and read the response
    /// head. The connection travels with the response body and returns to its pool when the
    /// body has been read; dropping the future or the body closes it.
    pub async fn send(self, req: Request<ReqBody>) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        self.send_head(&parts.method, &parts.uri, &parts.headers, body)
            .await
    }

    /// [`Conn::send`] from a borrowed request head: the head is written at once, so a caller
    /// that may replay the request (retries) keeps its head instead of copying it per attempt.
    pub async fn send_head(
        mut self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: ReqBody,
    ) -> Result<Response<Body>, Error> {
        let head_request = method == Method::HEAD;
        // A caller that asks to close (never the proxied path: http.rs strips `connection`).
        let close_requested = headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"));
        self.write_request(method, uri, headers, body).await?;
        let head = loop {
            if let Some(h) = parse_head(&mut self.buf)? {
                // 1xx answers (100 Continue, 103 Early Hints) precede the real one; 101 is
                // only for upgrades, which never come here (hyper relays them).
                if h.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Parse(
                        "101 Switching Protocols to a non-upgrade request",
                    ));
                }
                if h.status.is_informational() {
                    continue;
                }
                break h;
            }
            if self.buf.capacity() - self.buf.len() < HEAD_ROOM {
                self.buf.reserve(READ_MIN);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::Closed);
            }
        };
        let Head {
            status,
            version,
            headers,
            reason,
            framing,
        } = head;
        let kind = if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Kind::Done
        } else if framing.te {
            if framing.chunked {
                Kind::Chunked(Chunked::default())
            } else {
                // A transfer coding other than chunked: the body runs to the end of the
                // connection (RFC 9112 §6.3 p.4, response case).
                Kind::Close
            }
        } else {
            match framing.length {
                Length::Is(0) => Kind::Done,
                Length::Is(n) => Kind::Length(n),
                Length::Invalid => return Err(Error::Parse("invalid content-length")),
                Length::Absent => Kind::Close,
            }
        };
        // Reuse needs HTTP/1.1 (an HTTP/1.0 server closes unless told otherwise, and egret
        // does not ask), no `connection: close` either way, and unambiguous framing.
        let keep_alive = !(version != Version::HTTP_11
            || close_requested
            || framing.close
            || (framing.te && framing.length != Length::Absent)
            || matches!(kind, Kind::Close));
        let mut body = Body {
            conn: Some(self),
            kind,
            keep_alive,
        };
        if matches!(body.kind, Kind::Done) {
            // Nothing to read: the connection can serve the next request now.
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some(r) = reason
            && let Ok(r) = hyper::ext::ReasonPhrase::try_from(r)
        {
            resp.extensions_mut().insert(r);
        }
        Ok(resp)
    }

    /// Write the head and the body: `content-length` when the body's size is known (one
    /// vectored write for the head and a buffered body), `transfer-encoding: chunked`
    /// otherwise, nothing when the body is empty (its headers as given, like hyper).
    async fn write_request(
        &mut self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        mut body: ReqBody,
    ) -> Result<(), Error> {
        #[derive(PartialEq)]
        enum Framing {
            None,
            Length(u64),
            Chunked,
        }
        let framing = if body.is_end_stream() {
            Framing::None
        } else {
            match body.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(
            uri.path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .as_bytes(),
        );
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            // The framing headers are egret's to write (the body decides them).
            if name == header::TRANSFER_ENCODING
                || (name == header::CONTENT_LENGTH && framing != Framing::None)
            {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        match framing {
            Framing::None => {}
            Framing::Length(n) => {
                w.extend_from_slice(b"content-length: ");
                w.extend_from_slice(itoa(n, 10, &mut [0; 20]));
                w.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        w.extend_from_slice(b"\r\n");
        let io = &mut self.io;
        let w = &self.wbuf;
        if framing == Framing::None {
            io.write_all(w).await?;
            return Ok(io.flush().await?);
        }
        // The head waits for the first frame only if that is ready now (a buffered body):
        // then one write carries both.
        let mut head_sent = false;
        let mut sent = 0u64;
        let mut trailers = None;
        loop {
            let frame = if head_sent {
                body.frame().await
            } else {
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(f) => f,
                    Poll::Pending => {
                        io.write_all(w).await?;
                        head_sent = true;
                        continue;
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(Error::RequestBody(e)),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(f) => {
                        trailers = f.into_trailers().ok();
                        continue;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            let head: &[u8] = if head_sent { &[] } else { w };
            head_sent = true;
            if let Framing::Length(n) = framing {
                if sent > n {
                    return Err(Error::RequestBody("body longer than its size".into()));
                }
                io.write_all_buf(&mut Buf::chain(head, data)).await?;
            } else {
                let mut line = [0u8; 20];
                let size = itoa(data.len() as u64, 16, &mut line);
                let mut buf = Buf::chain(head, size)
                    .chain(&b"\r\n"[..])
                    .chain(data)
                    .chain(&b"\r\n"[..]);
                io.write_all_buf(&mut buf).await?;
            }
        }
        let mut end = Vec::new();
        if framing == Framing::Chunked {
            end.extend_from_slice(b"0\r\n");
            // Request trailers travel only with chunked framing.
            for (name, value) in trailers.iter().flatten() {
                end.extend_from_slice(name.as_str().as_bytes());
                end.extend_from_slice(b": ");
                end.extend_from_slice(value.as_bytes());
                end.extend_from_slice(b"\r\n");
            }
            end.extend_from_slice(b"\r\n");
        } else if framing != Framing::Length(sent) {
            return Err(Error::RequestBody("body shorter than its size".into()));
        }
        let head: &[u8] = if head_sent { &[] } else { w };
        io.write_all_buf(&mut Buf::chain(head, &end[..])).await?;
        Ok(io.flush().await?)
    }
}

/// `n` in `radix` (10 or 16), written into `out`.
fn itoa(mut n: u64, radix: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        let d = (n % radix) as u8;
        out[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        n /= radix;
        if n == 0 {
            return &out[i..];
        }
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The reason phrase when it is not the status code's usual one (passed on like hyper).
    reason: Option<Bytes>,
    /// What the framing headers say, read while the head is parsed (no lookups afterwards).
    framing: HeadFraming,
}

/// The response's framing headers, as [`parse_head`] saw them.
#[derive(Default)]
struct HeadFraming {
    /// A `transfer-encoding` header is present.
    te: bool,
    /// The last coding of the last `transfer-encoding` header is `chunked`
    /// (`transfer-encoding: gzip, chunked`).
    chunked: bool,
    /// The `content-length` headers, merged.
    length: Length,
    /// A `connection` header lists `close`.
    close: bool,
}

/// Every `content-length` value (and list element) must be the same number (RFC 9112 §6.3).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Length {
    #[default]
    Absent,
    Is(u64),
    Invalid,
}

impl Length {
    fn merge(self, value: &[u8]) -> Length {
        let mut len = self;
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Length::Invalid;
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            len = match len {
                Length::Absent => Length::Is(n),
                Length::Is(l) if l == n => len,
                _ => return Length::Invalid,
            };
        }
        len
    }
}

/// Parse a response head off the front of `buf`: `None` until it is complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Uninitialised slots: nothing per response is zeroed beyond the headers that are there
    // (the 100-slot arrays cost ~5 KiB of stores per response; callgrind, bench/NOTES.md).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let limit = buf.len().min(MAX_HEAD);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        &buf[..limit],
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if limit == MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Parse("more than 100 headers")),
        Err(_) => return Err(Error::Parse("malformed response head")),
    };
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Parse("bad status code"))?;
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Header positions in the buffer, so the values can share the frozen head; the framing
    // headers are read on the way.
    let base = buf.as_ptr() as usize;
    let mut at: SmallVec<[(u32, u32, u32, u32); 24]> = SmallVec::new();
    let mut framing = HeadFraming::default();
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            framing.length = framing.length.merge(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framing.te = true;
            framing.chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            framing.close |= has_token(h.value, b"close");
        }
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        at.push((
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        ));
    }
    let reason = r
        .reason
        .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
        .map(|r| {
            let at = r.as_ptr() as usize - base;
            (at, at + r.len())
        });
    let head = buf.split_to(len).freeze();
    // Room for one header the proxy may add to a response: growing a header map rehashes
    // it, and more room would take the map out of the allocator's small-size cache (see
    // `server::parse`).
    let mut headers = HeaderMap::with_capacity(at.len() + 1);
    for &(ns, ne, vs, ve) in &at {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Error::Parse("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Error::Parse("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        reason: reason.map(|(s, e)| head.slice(s..e)),
        framing,
    }))
}

/// How the response body is delimited, and how much of it is left.
enum Kind {
    /// `content-length`: bytes left.
    Length(u64),
    Chunked(Chunked),
    /// To the end of the connection (never reused).
    Close,
    /// Read to its end (or no body at all).
    Done,
}

/// The response body: reads the connection it owns, returns it to the pool at its end.
pub struct Body {
    conn: Option<Conn>,
    kind: Kind,
    keep_alive: bool,
}

impl Body {
    /// The body ended: the connection goes back to the pool (or is closed).
    fn finish(&mut self) {
        self.kind = Kind::Done;
        if let Some(c) = self.conn.take() {
            c.release(self.keep_alive);
        }
    }

    /// The body failed: the connection is closed.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.kind = Kind::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut this.kind {
                Kind::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Kind::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            // Back to the pool now: the downstream side may never poll again
                            // once it has written `content-length` bytes.
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .clamp(1, READ_MAX)
                }
                Kind::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    READ_MAX
                }
                Kind::Chunked(ch) => match ch.decode(&mut conn.buf) {
                    Err(e) => return this.fail(e),
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::Data(d)) => {
                        if ch.at_end(&mut conn.buf) {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    Ok(Step::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(Step::NeedMore) => READ_MIN,
                },
            };
            if conn.buf.capacity() - conn.buf.len() < want.min(READ_MIN) {
                conn.buf.reserve(want.max(READ_MIN));
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            )) {
                Err(e) => return this.fail(Error::Io(e)),
                Ok(0) if matches!(this.kind, Kind::Close) => {
                    // The end of a close-delimited body: the connection is done too.
                    this.kind = Kind::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Incomplete),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Done) || matches!(self.kind, Kind::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            Kind::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Where a chunked body's decoder is (RFC 9112 §7.1).
#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    End,
}

enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    NeedMore,
    End,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(Error::Parse("chunk-size line too long"))
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let size = chunk_size(&buf[..nl])?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(Error::Parse("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if buf[..2] == *b"\r\n" {
                        buf.advance(2);
                        self.state = ChunkState::End;
                        return Ok(Step::End);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return if buf.len() > MAX_TRAILERS {
                            Err(Error::Parse("trailers too large"))
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let parsed = httparse::parse_headers(&buf[..end + 4], &mut slots);
                    let Ok(httparse::Status::Complete((_, fields))) = parsed else {
                        return Err(Error::Parse("malformed trailers"));
                    };
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        // Trailers are rare: copying them is fine.
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) {
                            trailers.append(n, v);
                        }
                    }
                    buf.advance(end + 4);
                    self.state = ChunkState::End;
                    if !trailers.is_empty() {
                        return Ok(Step::Trailers(trailers));
                    }
                    return Ok(Step::End);
                }
                ChunkState::End => return Ok(Step::End),
            }
        }
    }

    /// After a data frame: is the rest of the body just the usual `\r\n0\r\n\r\n` already
    /// in the buffer? Then the body ends with this frame and the connection can go back to
    /// the pool without another poll.
    fn at_end(&mut self, buf: &mut BytesMut) -> bool {
        if let ChunkState::DataEnd = self.state {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                self.state = ChunkState::Size;
            } else {
                return false;
            }
        }
        if let ChunkState::Size = self.state
            && buf.starts_with(b"0\r\n\r\n")
        {
            buf.advance(5);
            self.state = ChunkState::End;
            return true;
        }
        false
    }
}

/// A chunk-size line (without its LF): hex digits, optional whitespace, optional
/// `;extensions` (ignored, like Envoy), then CR.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(Error::Parse("chunk-size line not ended by CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Parse("bad chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Error::Parse("bad chunk size"));
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::{Empty, Full};
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// One canned answer: its bytes, written `piece` bytes at a time (0: at once), and
    /// whether the server closes the connection after it.
    struct Answer {
        bytes: Vec<u8>,
        piece: usize,
        close: bool,
    }

    fn answer(s: &str) -> Answer {
        Answer {
            bytes: s.as_bytes().to_vec(),
            piece: 0,
            close: false,
        }
    }

    struct Server {
        addr: SocketAddr,
        /// Each request as received (head and body).
        requests: mpsc::UnboundedReceiver<Vec<u8>>,
        /// Connections accepted.
        accepted: Arc<AtomicUsize>,
        /// A message each time the server closed a connection.
        closed: mpsc::UnboundedReceiver<()>,
    }

    /// A loopback HTTP/1.1 server answering requests, in order and whatever the connection,
    /// with `answers`.
    async fn server(answers: Vec<Answer>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(std::sync::Mutex::new(VecDeque::from(answers)));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                s.set_nodelay(true).unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (queue, req_tx, closed_tx) = (queue.clone(), req_tx.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut s, &mut buf).await else {
                            break;
                        };
                        let _ = req_tx.send(req);
                        let Some(a) = queue.lock().unwrap().pop_front() else {
                            break;
                        };
                        // A client that gave up on an answer may have closed: write errors end
                        // the connection.
                        if a.piece == 0 {
                            if s.write_all(&a.bytes).await.is_err() {
                                break;
                            }
                        } else {
                            for p in a.bytes.chunks(a.piece) {
                                if s.write_all(p).await.is_err() {
                                    break;
                                }
                                // Separate segments, so the client sees split reads.
                                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                            }
                        }
                        if a.close {
                            break;
                        }
                    }
                    drop(s);
                    let _ = closed_tx.send(());
                });
            }
        });
        Server {
            addr,
            requests,
            accepted,
            closed,
        }
    }

    /// One request off `s`: its head, then a `content-length` or chunked body.
    async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let find = |b: &[u8], pat: &[u8]| b.windows(pat.len()).position(|w| w == pat);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let chunked = head.contains("transfer-encoding: chunked");
        let end = loop {
            if let Some(n) = len {
                if buf.len() >= head_end + n {
                    break head_end + n;
                }
            } else if chunked {
                if let Some(i) = find(&buf[head_end..], b"0\r\n\r\n") {
                    break head_end + i + 5;
                }
            } else {
                break head_end;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        Some(buf.drain(..end).collect())
    }

    struct Client {
        pool: Arc<Pool>,
        addr: SocketAddr,
        limits: PoolLimits,
    }

    impl Client {
        fn new(addr: SocketAddr) -> Client {
            Client {
                pool: Arc::new(Pool::new(8)),
                addr,
                limits: PoolLimits::default(),
            }
        }

        fn key(&self) -> PoolKey {
            PoolKey {
                addr: self.addr,
                tls: None,
                shard: 0,
            }
        }

        /// A pooled connection or a new one (like `Upstreams::h1_conn`).
        async fn conn(&self) -> Conn {
            match self.pool.take(&self.key(), &self.limits) {
                Some(c) => c.checked_out(self.pool.clone(), self.limits),
                None => {
                    let s = TcpStream::connect(self.addr).await.unwrap();
                    Conn::new(Box::new(s), self.key(), self.pool.clone(), self.limits)
                }
            }
        }

        async fn send(&self, method: Method, body: ReqBody) -> Result<Response<Body>, Error> {
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.uri_mut() = "/p?q=1".parse().unwrap();
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_static("a.test"));
            self.conn().await.send(req).await
        }

        async fn get(&self) -> Result<Response<Body>, Error> {
            self.send(Method::GET, empty()).await
        }
    }

    fn empty() -> ReqBody {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    fn full(s: &'static str) -> ReqBody {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    /// Data and trailers of a body read to its end.
    async fn read_all(b: Body) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let c = b.collect().await?;
        let trailers = c.trailers().cloned();
        Ok((c.to_bytes().to_vec(), trailers))
    }

    /// A body whose size is not known in advance (a streamed upload).
    struct Streamed(VecDeque<Bytes>);

    impl hyper::body::Body for Streamed {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn content_length_both_ways_and_the_connection_is_reused() {
        let mut srv = server(vec![
            answer("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: 1\r\nx-a: 2\r\n\r\nabc"),
            answer("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
        ])
        .await;
        let c = Client::new(srv.addr);
        let r = c.send(Method::POST, full("hello")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), Version::HTTP_11);
        let all: Vec<_> = r.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(r.body().size_hint().exact(), Some(3));
        let (data, trailers) = read_all(r.into_body()).await.unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
        let req = srv.requests.recv().await.unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert_eq!(c.pool.idle_count(), 1);
        let r = c.get().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        let req = srv.requests.recv().await.unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\n\r\n"
        );
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn chunked_response_with_extensions_and_trailers() {
        let srv = server(vec![
            answer(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-checksum: 7\r\n\r\n",
            ),
            answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            ),
        ])
        .await;
        let c = Client::new(srv.addr);
        let r = c.get().await.unwrap();
        assert_eq!(r.body().size_hint().exact(), None);
        let (data, trailers) = read_all(r.into_body()).await.unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap().get("x-checksum").unwrap(), "7");
        assert_eq!(c.pool.idle_count(), 1);
        // The usual ending arrives with the last chunk: the body ends with its data frame.
        let r = c.get().await.unwrap();
        let mut b = r.into_body();
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "0123456789");
        assert!(b.is_end_stream());
        assert_eq!(c.pool.idle_count(), 1);
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn split_reads() {
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut a = answer(&format!(
            "{head}3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n"
        ));
        a.piece = 1;
        let mut b = answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789");
        b.piece = 3;
        let srv = server(vec![a, b]).await;
        let c = Client::new(srv.addr);
        let r = c.get().await.unwrap();
        assert_eq!(r.headers()["x-long"].len(), 40);
        let (data, trailers) = read_all(r.into_body()).await.unwrap();
        assert_eq!(data, b"abc0123456789abcdef");
        assert_eq!(trailers.unwrap()["x-t"], "1");
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"0123456789");
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bodiless_responses_free_the_connection_at_once() {
        let srv = server(vec![
            answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            answer("HTTP/1.1 204 No Content\r\n\r\n"),
            // A 304 and a HEAD answer describe a body they do not carry.
            answer("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        ])
        .await;
        let c = Client::new(srv.addr);
        for (method, status) in [
            (Method::GET, 200),
            (Method::GET, 204),
            (Method::GET, 304),
            (Method::HEAD, 200),
        ] {
            let r = c.send(method, empty()).await.unwrap();
            assert_eq!(r.status().as_u16(), status);
            assert!(r.body().is_end_stream());
            // Back in the pool before the body is polled at all.
            assert_eq!(c.pool.idle_count(), 1);
            assert_eq!(read_all(r.into_body()).await.unwrap().0, b"");
        }
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_delimited_http10_and_connection_close_are_not_reused() {
        let mut a = answer("HTTP/1.1 200 OK\r\n\r\nuntil the end");
        a.close = true;
        let b = answer("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let c2 = answer("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok");
        let srv = server(vec![a, b, c2]).await;
        let c = Client::new(srv.addr);
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"until the end");
        assert_eq!(c.pool.idle_count(), 0);
        let r = c.get().await.unwrap();
        assert_eq!(r.version(), Version::HTTP_10);
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        assert_eq!(c.pool.idle_count(), 0);
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        assert_eq!(c.pool.idle_count(), 0);
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let srv = server(vec![answer(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\n\r\nok",
        )])
        .await;
        let c = Client::new(srv.addr);
        let r = c.send(Method::PUT, full("x")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.headers().contains_key("link"));
        let reason = r.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
    }

    #[tokio::test]
    async fn oversized_heads_and_too_many_headers_are_errors() {
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            (0..MAX_HEADERS)
                .map(|i| format!("x-{i}: v\r\n"))
                .collect::<String>()
        );
        let srv = server(vec![
            answer(&big),
            answer(&many),
            answer("HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nab"),
            answer("HTTP/1.1 2000 OK\r\n\r\n"),
        ])
        .await;
        let c = Client::new(srv.addr);
        assert!(matches!(c.get().await, Err(Error::HeadTooLarge)));
        let Err(Error::Parse(why)) = c.get().await else {
            panic!("more than 100 headers accepted");
        };
        assert!(why.contains("100 headers"), "{why}");
        assert!(matches!(c.get().await, Err(Error::Parse(_))));
        assert!(matches!(c.get().await, Err(Error::Parse(_))));
        assert_eq!(c.pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn bad_chunks_and_short_bodies_fail_and_close() {
        let mut short = answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        short.close = true;
        let mut cut = answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab");
        cut.close = true;
        let srv = server(vec![
            answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
            answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"),
            answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n"),
            short,
            cut,
        ])
        .await;
        let c = Client::new(srv.addr);
        for _ in 0..5 {
            let r = c.get().await.unwrap();
            assert!(read_all(r.into_body()).await.is_err());
            assert_eq!(c.pool.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_not_reused() {
        // The server answers as if it kept the connection, then closes it (a keep-alive
        // timeout on its side).
        let mut a = answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        a.close = true;
        let mut srv = server(vec![
            a,
            answer("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew"),
        ])
        .await;
        let c = Client::new(srv.addr);
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        srv.closed.recv().await.unwrap();
        // Loopback delivers the FIN within the server's close: the probe sees it.
        assert!(c.pool.take(&c.key(), &c.limits).is_none());
        let r = c.get().await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"new");
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn closed_before_the_answer_is_an_error() {
        let srv = server(vec![]).await;
        let c = Client::new(srv.addr);
        assert!(matches!(c.get().await, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn streamed_bodies_are_chunked_and_limits_close() {
        let mut srv = server(vec![
            answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nlong"),
        ])
        .await;
        let mut c = Client::new(srv.addr);
        c.limits.max_requests_per_connection = 1;
        let body = Streamed(VecDeque::from([
            Bytes::from_static(b"hello"),
            Bytes::from_static(b" streamed world!!"),
        ]));
        let r = c.send(Method::POST, body.boxed()).await.unwrap();
        assert_eq!(read_all(r.into_body()).await.unwrap().0, b"ok");
        let req = String::from_utf8(srv.requests.recv().await.unwrap()).unwrap();
        assert_eq!(
            req,
            "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n11\r\n streamed world!!\r\n0\r\n\r\n"
        );
        // `maxRequestsPerConnection: 1`: closed after its one request.
        assert_eq!(c.pool.idle_count(), 0);
        // A body dropped before its end closes the connection.
        c.limits.max_requests_per_connection = 0;
        let r = c.get().await.unwrap();
        let mut b = r.into_body();
        assert_eq!(b.size_hint().exact(), Some(10));
        drop(b.frame().await);
        drop(b);
        assert_eq!(c.pool.idle_count(), 0);
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    }
}
