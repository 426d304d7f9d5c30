//! A small Redis client for GLOBAL rate limits: RESP2 over a plain TCP connection, a few
//! pooled connections per address, and Lua scripts by SHA (`EVALSHA`, `EVAL` when the server
//! has forgotten the script).
//!
//! Written here rather than taken from a crate because the limiter needs very little (one
//! script call per decision) and needs it bounded in every direction: each call has one
//! deadline covering pool wait, connect, send and answer; replies are size-limited; a
//! connection that failed or timed out is never reused (a late answer on it would be read as
//! the answer to the next call); and a failed connect makes the next calls fail fast for a
//! moment instead of every request paying for a dead server.
//!
//! No lock is held across an `.await`: a call takes a connection out of the pool, uses it, and
//! puts it back only when the exchange completed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Connections open at once to one address. Calls beyond this wait (within their deadline):
/// a slow Redis must not make the proxy open thousands of sockets.
pub const MAX_CONNECTIONS: usize = 32;

/// After a failed connect, calls fail immediately for this long rather than each trying again.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// The largest bulk string or array a reply may carry; more is a protocol error (the limiter's
/// replies are a few integers).
const MAX_BULK: usize = 1 << 20;
const MAX_ARRAY: usize = 1 << 16;
const MAX_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not connecting to {addr} for a moment after a failed connect")]
    Backoff { addr: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An error reply (`-ERR ...`).
    #[error("server error: {0}")]
    Server(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl RedisError {
    /// The error of a connection the server had already closed: EOF or a reset on first use.
    /// Nothing was executed, so the exchange may be repeated on a new connection.
    fn is_stale_connection(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            RedisError::Closed => true,
            RedisError::Io(e) => matches!(
                e.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// What one call does on its connection.
enum Op<'a> {
    Command(&'a [&'a [u8]]),
    Eval {
        script: Script,
        keys: &'a [&'a [u8]],
        args: &'a [&'a [u8]],
    },
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// An error reply as `Err`, everything else as `Ok`.
    pub fn into_result(self) -> Result<Value, RedisError> {
        match self {
            Value::Error(e) => Err(RedisError::Server(e)),
            v => Ok(v),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// Encode a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parse one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Value, usize)>, RedisError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, RedisError> {
    if depth > MAX_DEPTH {
        return Err(RedisError::Protocol("reply nested too deeply".into()));
    }
    let Some(line_end) = find_crlf(buf, pos + 1) else {
        if buf.len().saturating_sub(pos) > 4096 {
            return Err(RedisError::Protocol("reply line too long".into()));
        }
        return Ok(None);
    };
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let line = &buf[pos + 1..line_end];
    let next = line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    match tag {
        b'+' => Ok(Some((Value::Simple(text()), next))),
        b'-' => Ok(Some((Value::Error(text()), next))),
        b':' => Ok(Some((Value::Int(parse_int(line)?), next))),
        b'$' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > MAX_BULK {
                return Err(RedisError::Protocol(format!("bulk string of {n} bytes")));
            }
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RedisError::Protocol("bulk string not ended by CRLF".into()));
            }
            Ok(Some((Value::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > MAX_ARRAY {
                return Err(RedisError::Protocol(format!("array of {n} elements")));
            }
            let mut items = Vec::with_capacity(n.min(64));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((v, after)) => {
                        items.push(v);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        t => Err(RedisError::Protocol(format!(
            "unknown reply type byte 0x{t:02x}"
        ))),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| i + from)
}

fn parse_int(line: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            RedisError::Protocol(format!("bad integer {:?}", String::from_utf8_lossy(line)))
        })
}

/// One connection. Not shared: a call owns it for the whole exchange.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn connect(addr: &str) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| RedisError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        // Decisions are small request/response exchanges: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(256),
        })
    }

    /// Send one command and read its reply. An error reply is `Ok(Value::Error)`: the
    /// connection is still in step and may be reused.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let mut out = Vec::with_capacity(64);
        encode_command(args, &mut out);
        self.stream.write_all(&out).await?;
        loop {
            if let Some((v, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(v);
            }
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RedisError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A Lua script run by SHA. The SHA is learnt from the server (`SCRIPT LOAD`) once per pool,
/// so the client needs no SHA-1 of its own.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    pub source: &'static str,
}

/// The connections to one Redis address.
#[derive(Debug)]
pub struct RedisPool {
    addr: String,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    /// Script source -> SHA as the server reported it.
    shas: Mutex<HashMap<&'static str, String>>,
    /// Set after a failed connect: no new connect before this instant.
    backoff_until: Mutex<Option<Instant>>,
}

impl RedisPool {
    pub fn new(addr: &str) -> RedisPool {
        RedisPool {
            addr: addr.to_string(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_CONNECTIONS),
            shas: Mutex::new(HashMap::new()),
            backoff_until: Mutex::new(None),
        }
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Idle connections now (tests, debugging).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// One command, within `timeout` (pool wait, connect, send and answer together).
    pub async fn command(&self, args: &[&[u8]], timeout: Duration) -> Result<Value, RedisError> {
        self.run(Op::Command(args), timeout).await
    }

    /// Run `script` with `keys` and `args`: `EVALSHA`, and `EVAL` when the server answers
    /// NOSCRIPT (restarted, or `SCRIPT FLUSH`); `EVAL` also caches it again, so the next
    /// call is back to one `EVALSHA`. Within `timeout` as [`RedisPool::command`].
    pub async fn eval(
        &self,
        script: Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, RedisError> {
        self.run(Op::Eval { script, keys, args }, timeout).await
    }

    /// `op` on a pooled connection. An idle connection the server has closed meanwhile (it
    /// restarted, or dropped idle clients) fails at once with EOF or a reset before anything
    /// was executed: then the other idle connections are as stale, so they are dropped, and
    /// `op` is tried once more on a new connection — a Redis restart costs no decision.
    async fn run(&self, op: Op<'_>, timeout: Duration) -> Result<Value, RedisError> {
        deadline(timeout, async {
            let (permit, mut conn, reused) = self.checkout().await?;
            let v = match self.exchange(&mut conn, &op).await {
                Err(e) if reused && e.is_stale_connection() => {
                    drop(conn);
                    if let Ok(mut i) = self.idle.lock() {
                        i.clear();
                    }
                    conn = self.connect().await?;
                    self.exchange(&mut conn, &op).await?
                }
                r => r?,
            };
            self.checkin(conn, permit);
            v.into_result()
        })
        .await
    }

    /// One exchange on `conn`. An error reply is `Ok(Value::Error)`: the connection is still
    /// in step.
    async fn exchange(&self, conn: &mut Connection, op: &Op<'_>) -> Result<Value, RedisError> {
        let (script, keys, args) = match op {
            Op::Command(args) => return conn.call(args).await,
            Op::Eval { script, keys, args } => (*script, *keys, *args),
        };
        let known = self
            .shas
            .lock()
            .ok()
            .and_then(|m| m.get(script.source).cloned());
        let sha = match known {
            Some(s) => s,
            None => {
                let load: [&[u8]; 3] = [b"SCRIPT", b"LOAD", script.source.as_bytes()];
                match conn.call(&load).await? {
                    Value::Bulk(Some(b)) => {
                        let sha = String::from_utf8_lossy(&b).into_owned();
                        if let Ok(mut m) = self.shas.lock() {
                            m.insert(script.source, sha.clone());
                        }
                        sha
                    }
                    Value::Error(e) => return Ok(Value::Error(e)),
                    v => return Err(RedisError::Unexpected(format!("{v:?}"))),
                }
            }
        };
        let numkeys = keys.len().to_string();
        let mut argv: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        argv.extend([&b"EVALSHA"[..], sha.as_bytes(), numkeys.as_bytes()]);
        argv.extend_from_slice(keys);
        argv.extend_from_slice(args);
        match conn.call(&argv).await? {
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                argv[0] = b"EVAL";
                argv[1] = script.source.as_bytes();
                conn.call(&argv).await
            }
            v => Ok(v),
        }
    }

    /// A connection for one exchange: idle (`true`), or newly connected. The permit bounds
    /// the connections open at once.
    async fn checkout(&self) -> Result<(SemaphorePermit<'_>, Connection, bool), RedisError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RedisError::Closed)?;
        let idle = self.idle.lock().ok().and_then(|mut i| i.pop());
        match idle {
            Some(c) => Ok((permit, c, true)),
            None => Ok((permit, self.connect().await?, false)),
        }
    }

    /// Back to the pool after an exchange that completed. A connection whose exchange failed
    /// or was cut off at the deadline is never checked in: it is dropped (closed) instead,
    /// since an answer still in flight on it would be read as the next call's.
    fn checkin(&self, conn: Connection, permit: SemaphorePermit<'_>) {
        if let Ok(mut i) = self.idle.lock()
            && i.len() < MAX_CONNECTIONS
        {
            i.push(conn);
        }
        drop(permit);
    }

    async fn connect(&self) -> Result<Connection, RedisError> {
        let now = Instant::now();
        if let Ok(b) = self.backoff_until.lock()
            && b.is_some_and(|until| now < until)
        {
            return Err(RedisError::Backoff {
                addr: self.addr.clone(),
            });
        }
        match Connection::connect(&self.addr).await {
            Ok(c) => {
                if let Ok(mut b) = self.backoff_until.lock() {
                    *b = None;
                }
                Ok(c)
            }
            Err(e) => {
                if let Ok(mut b) = self.backoff_until.lock() {
                    *b = Some(Instant::now() + CONNECT_BACKOFF);
                }
                Err(e)
            }
        }
    }
}

/// `work` within `timeout`; dropping it at the deadline drops the connection it holds.
async fn deadline<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::Timeout(timeout)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&[b"INCR", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n");
    }

    #[test]
    fn parses_replies() {
        assert_eq!(
            parse_reply(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse_reply(b"-NOSCRIPT No matching script\r\n").unwrap(),
            Some((Value::Error("NOSCRIPT No matching script".into()), 30))
        );
        assert_eq!(parse_reply(b":42\r\n").unwrap(), Some((Value::Int(42), 5)));
        assert_eq!(
            parse_reply(b"$3\r\nabc\r\n").unwrap(),
            Some((Value::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap(),
            Some((Value::Bulk(None), 5))
        );
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n:950\r\n+extra").unwrap(),
            Some((Value::Array(Some(vec![Value::Int(1), Value::Int(950)])), 14))
        );
        // Incomplete input asks for more.
        for partial in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b"$3\r\nab",
            b"$3\r\nabc\r",
            b"*2\r\n:1\r\n",
            b"*2\r\n:1\r\n:9",
        ] {
            assert_eq!(parse_reply(partial).unwrap(), None, "{partial:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_reply(b"?x\r\n").is_err());
        assert!(parse_reply(b":x\r\n").is_err());
        assert!(parse_reply(b"$3\r\nabcd\r\n").is_err());
        assert!(parse_reply(b"$99999999\r\n").is_err());
        assert!(parse_reply(b"*99999999\r\n").is_err());
        assert!(parse_reply(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(parse_reply(&[b'+'; 5000]).is_err());
    }

    /// A server that never answers: the call ends at its deadline with `Timeout`, and a
    /// refused connect turns into a short back-off.
    #[tokio::test]
    async fn deadlines_and_backoff() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let pool = RedisPool::new(&addr);
        let t0 = Instant::now();
        let e = pool
            .command(&[b"PING"], Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, RedisError::Timeout(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            pool.idle_connections(),
            0,
            "a timed-out connection is not reused"
        );
        hold.abort();

        // Nothing listens on this port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let pool = RedisPool::new(&closed);
        let e = pool
            .command(&[b"PING"], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, RedisError::Connect { .. }), "{e}");
        let e = pool
            .command(&[b"PING"], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, RedisError::Backoff { .. }), "{e}");
    }
}
