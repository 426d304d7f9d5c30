#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Protocol detection against real ClientHellos (rustls) delivered in awkward pieces, and the
//! timeout / EOF / size edges (`reliability-and-users.md` §4 item 10).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use egret_proxy::detect::{DetectError, Detected, H2_PREFACE, MAX_PEEK, detect};
use egret_proxy::io::PrefixedIo;
use egret_proxy::tls_hello::{self, ClientHello, Parse};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

const T: Duration = Duration::from_millis(50);

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn hello_bytes(config: rustls::ClientConfig, server: &str) -> Vec<u8> {
    let name: ServerName<'static> = server.to_owned().try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A real TLS 1.2/1.3 ClientHello for `api.example.test` offering h2 and http/1.1.
fn real_hello() -> Vec<u8> {
    hello_bytes(client_config(rustls::DEFAULT_VERSIONS), "api.example.test")
}

/// The handshake-layer bytes of a record stream (all records' fragments concatenated).
fn handshake_payload(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        assert_eq!(rest[0], 0x16);
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        out.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty());
    out
}

/// Re-frames a handshake stream into TLS records of at most `chunk` bytes each.
fn reframe(handshake: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in handshake.chunks(chunk) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

fn assert_real_hello(h: &ClientHello) {
    assert_eq!(h.sni.as_deref(), Some("api.example.test"));
    assert_eq!(h.alpn, ["h2", "http/1.1"]);
    assert_eq!(h.legacy_version, 0x0303);
    assert!(h.supported_versions.contains(&0x0304));
    assert!(!h.ech);
}

/// An AsyncRead that returns its chunks one per read, then optionally pends forever (like an
/// idle client) instead of returning EOF.
struct Chunked {
    chunks: VecDeque<Vec<u8>>,
    then_idle: bool,
}

impl Chunked {
    fn new(data: &[u8], size: usize, then_idle: bool) -> Self {
        Self {
            chunks: data.chunks(size).map(<[u8]>::to_vec).collect(),
            then_idle,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.chunks.pop_front() {
            Some(mut chunk) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
                Poll::Ready(Ok(()))
            }
            None if self.then_idle => Poll::Pending,
            None => Poll::Ready(Ok(())),
        }
    }
}

async fn detect_all(data: &[u8], chunk: usize) -> Result<(Detected, Bytes), DetectError> {
    detect(&mut Chunked::new(data, chunk, false), T).await
}

#[test]
fn real_hello_parses() {
    let hello = real_hello();
    match tls_hello::parse(&hello) {
        Parse::Complete(h) => {
            assert_real_hello(&h);
            assert_eq!(h.record_len, hello.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tls12_only_hello_offers_no_tls13() {
    let hello = hello_bytes(
        client_config(&[&rustls::version::TLS12]),
        "api.example.test",
    );
    match tls_hello::parse(&hello) {
        Parse::Complete(h) => {
            assert_eq!(h.sni.as_deref(), Some("api.example.test"));
            assert!(
                !h.supported_versions.contains(&0x0304),
                "{:?}",
                h.supported_versions
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hello_without_sni() {
    let mut config = client_config(rustls::DEFAULT_VERSIONS);
    config.enable_sni = false;
    match tls_hello::parse(&hello_bytes(config, "api.example.test")) {
        Parse::Complete(h) => {
            assert_eq!(h.sni, None);
            assert_eq!(h.alpn, ["h2", "http/1.1"]);
        }
        other => panic!("{other:?}"),
    }
}

/// rustls never sends an IP address as SNI (RFC 6066 forbids it), but clients do: rewrite the
/// host name in a real hello to an IP literal of the same length.
#[test]
fn ip_literal_sni_passes_as_string() {
    let hello = hello_bytes(client_config(rustls::DEFAULT_VERSIONS), "abcdefghijklmno");
    let name = b"abcdefghijklmno";
    let at = hello.windows(name.len()).position(|w| w == name).unwrap();
    let mut ip = hello.clone();
    ip[at..at + name.len()].copy_from_slice(b"192.168.100.200");
    match tls_hello::parse(&ip) {
        Parse::Complete(h) => assert_eq!(h.sni.as_deref(), Some("192.168.100.200")),
        other => panic!("{other:?}"),
    }
    let mut bad = hello.clone();
    bad[at + 3] = 0;
    assert_eq!(tls_hello::parse(&bad), Parse::Invalid("bad sni"));
    let mut upper = hello;
    upper[at..at + name.len()].copy_from_slice(b"ABCDEFGHIJKLMN.");
    match tls_hello::parse(&upper) {
        Parse::Complete(h) => assert_eq!(h.sni.as_deref(), Some("abcdefghijklmn")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn real_hello_in_one_byte_reads() {
    let hello = real_hello();
    let (detected, bytes) = detect_all(&hello, 1).await.unwrap();
    match detected {
        Detected::Tls(h) => assert_real_hello(&h),
        other => panic!("{other:?}"),
    }
    assert_eq!(bytes, hello);
}

#[tokio::test]
async fn real_hello_in_one_byte_writes_over_duplex() {
    let hello = real_hello();
    let (mut client, mut server) = tokio::io::duplex(1);
    let writer = {
        let hello = hello.clone();
        tokio::spawn(async move {
            for b in hello {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        })
    };
    let (detected, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
    assert!(
        matches!(detected, Detected::Tls(ref h) if h.sni.as_deref() == Some("api.example.test"))
    );
    assert_eq!(bytes, hello);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn real_hello_reframed_into_small_records() {
    let handshake = handshake_payload(&real_hello());
    for record in [1, 2, 3, 7, 100] {
        let framed = reframe(&handshake, record);
        assert!(
            framed.len() <= MAX_PEEK,
            "record size {record}: {}",
            framed.len()
        );
        for segment in [1, 5, 13, framed.len()] {
            let (detected, bytes) = detect_all(&framed, segment).await.unwrap();
            match detected {
                Detected::Tls(h) => {
                    assert_real_hello(&h);
                    assert_eq!(h.record_len, framed.len());
                }
                other => panic!("record {record} segment {segment}: {other:?}"),
            }
            assert_eq!(bytes, framed);
        }
    }
}

#[test]
fn every_prefix_of_a_real_hello_needs_more() {
    let hello = real_hello();
    for framed in [hello.clone(), reframe(&handshake_payload(&hello), 7)] {
        for n in 0..framed.len() {
            match tls_hello::parse(&framed[..n]) {
                Parse::NeedMore(need) => assert!(need > n && need <= framed.len(), "{n}: {need}"),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
    }
}

/// Byte flips anywhere in a real hello (one record and many small ones) must never panic; the
/// result is whatever it is.
#[test]
fn mutated_real_hellos_never_panic() {
    let hello = real_hello();
    for framed in [hello.clone(), reframe(&handshake_payload(&hello), 5)] {
        for i in 0..framed.len() {
            for v in [
                0x00,
                0x01,
                0x7f,
                0x80,
                0xff,
                framed[i] ^ 0x40,
                framed[i].wrapping_sub(1),
            ] {
                let mut m = framed.clone();
                m[i] = v;
                let _ = tls_hello::parse(&m);
            }
        }
    }
    // Random multi-byte corruption and truncation (xorshift, fixed seed).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut m = hello.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
        }
        let cut = (next() as usize) % (m.len() + 1);
        let _ = tls_hello::parse(&m[..cut]);
        let _ = tls_hello::parse(&m);
    }
}

#[tokio::test]
async fn malformed_hello_is_refused_not_opaque() {
    let mut hello = real_hello();
    // Handshake type ServerHello instead of ClientHello.
    hello[5] = 0x02;
    assert!(matches!(
        detect_all(&hello, 3).await,
        Err(DetectError::InvalidTls(_))
    ));
    // An alert record where the hello should continue.
    let mut alert = reframe(&handshake_payload(&real_hello())[..20], 20);
    alert.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    assert!(matches!(
        detect_all(&alert, 100).await,
        Err(DetectError::InvalidTls(_))
    ));
}

#[tokio::test]
async fn oversized_hello_is_too_large() {
    // A ClientHello header announcing 64 KiB: refused as soon as the header is seen.
    let header = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00];
    let err = detect(&mut Chunked::new(&header, 1, true), T)
        .await
        .unwrap_err();
    assert!(matches!(err, DetectError::TooLarge), "{err}");
    // 1-byte records make a real hello exceed the cap.
    let huge = reframe(&handshake_payload(&real_hello()), 1);
    if huge.len() > MAX_PEEK {
        assert!(matches!(
            detect_all(&huge, 4096).await,
            Err(DetectError::TooLarge)
        ));
    }
    // A valid-looking hello made of many full records also stops at the cap.
    let mut big = vec![0x01, 0x00, 0xff, 0xff];
    big.resize(0x1_0003, 0);
    let err = detect_all(&reframe(&big, 16_384), 1000).await.unwrap_err();
    assert!(matches!(err, DetectError::TooLarge), "{err}");
}

#[tokio::test]
async fn http1_get_and_connect() {
    let get = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for chunk in [1, 4, get.len()] {
        let (detected, bytes) = detect_all(get, chunk).await.unwrap();
        assert_eq!(detected, Detected::Http1);
        assert!(get.starts_with(&bytes) && bytes.len() >= 4, "{bytes:?}");
    }
    // Decided at "CONNECT ", without waiting for the rest of the line.
    let mut partial = Chunked::new(b"CONNECT host:443 HTTP/1.1\r\n", 8, true);
    let (detected, bytes) = detect(&mut partial, Duration::from_secs(5)).await.unwrap();
    assert_eq!(detected, Detected::Http1);
    assert_eq!(bytes, &b"CONNECT "[..]);
    let (detected, _) = detect_all(b"CONNECT host:443 HTTP/1.1\r\n\r\n", 1)
        .await
        .unwrap();
    assert_eq!(detected, Detected::Http1);
}

#[tokio::test]
async fn http2_preface_in_pieces() {
    let mut data = H2_PREFACE.to_vec();
    data.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for chunk in [1, 3, 23, 24, data.len()] {
        let (detected, bytes) = detect_all(&data, chunk).await.unwrap();
        assert_eq!(detected, Detected::Http2, "chunk {chunk}");
        assert!(bytes.starts_with(H2_PREFACE));
    }
    // A prefix of the preface followed by silence is not HTTP/2.
    let (detected, bytes) = detect(&mut Chunked::new(&H2_PREFACE[..10], 10, true), T)
        .await
        .unwrap();
    assert_eq!(
        (detected, &bytes[..]),
        (Detected::Opaque, &H2_PREFACE[..10])
    );
}

/// An extension method keeps detection waiting for the request line; a "target" that never
/// ends is opaque at the cap, and a byte-at-a-time client costs linear work to get there.
#[tokio::test]
async fn long_unfinished_request_line_is_opaque_at_the_cap() {
    let mut data = b"PROPFIND /".to_vec();
    data.resize(MAX_PEEK + 100, b'a');
    let (detected, bytes) = detect_all(&data, 1).await.unwrap();
    assert_eq!(detected, Detected::Opaque);
    assert_eq!(bytes.len(), MAX_PEEK);
    let (detected, _) = detect_all(b"PROPFIND /dav HTTP/1.1\r\n", 1).await.unwrap();
    assert_eq!(detected, Detected::Http1);
}

#[tokio::test]
async fn opaque_binary() {
    let data = [0x00, 0x00, 0x00, 0x2c, 0x0a, 0x01, 0xff];
    let (detected, bytes) = detect_all(&data, 1).await.unwrap();
    assert_eq!(detected, Detected::Opaque);
    assert_eq!(&bytes[..], &data[..1]);
    // Redis RESP.
    let (detected, _) = detect_all(b"*1\r\n$4\r\nPING\r\n", 2).await.unwrap();
    assert_eq!(detected, Detected::Opaque);
}

#[tokio::test]
async fn server_first_timeout_is_opaque_with_no_bytes() {
    let (_client, mut server) = tokio::io::duplex(64);
    let start = tokio::time::Instant::now();
    let (detected, bytes) = detect(&mut server, T).await.unwrap();
    assert_eq!(detected, Detected::Opaque);
    assert!(bytes.is_empty());
    assert!(start.elapsed() >= T);
}

#[tokio::test]
async fn idle_mid_hello_times_out() {
    let hello = real_hello();
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let err = detect(&mut server, T).await.unwrap_err();
    assert!(matches!(err, DetectError::Timeout), "{err}");
    assert!(err.to_string().contains("ClientHello"));
    // Just the first byte counts as mid-hello too.
    let err = detect(&mut Chunked::new(&[0x16], 1, true), T)
        .await
        .unwrap_err();
    assert!(matches!(err, DetectError::Timeout), "{err}");
}

#[tokio::test]
async fn eof_handling() {
    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    assert!(matches!(
        detect(&mut server, T).await,
        Err(DetectError::Eof)
    ));
    // EOF after an undecided prefix: opaque with the bytes.
    let (detected, bytes) = detect_all(b"GE", 1).await.unwrap();
    assert_eq!((detected, &bytes[..]), (Detected::Opaque, &b"GE"[..]));
    let hello = real_hello();
    let (detected, bytes) = detect_all(&hello[..40], 7).await.unwrap();
    assert_eq!((detected, &bytes[..]), (Detected::Opaque, &hello[..40]));
}

#[tokio::test]
async fn prefixed_io_replays_prefix_then_rest() {
    let hello = real_hello();
    let mut stream = hello.clone();
    stream.extend_from_slice(b"application data after the hello");
    let expected = stream.clone();
    let split = hello.len() - 1;
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&stream[..split]).await.unwrap();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(&stream[split..]).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let (detected, peeked) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(detected, Detected::Tls(_)));
    let mut replay = PrefixedIo::new(peeked, server);
    let mut all = Vec::new();
    replay.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, expected);
    // Writes reach the client.
    replay.write_all(b"pong").await.unwrap();
    let mut client = task.await.unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
}
