//! In-process end-to-end: the downstream HTTP timeouts (Envoy's connection manager
//! `idle_timeout`, `stream_idle_timeout`, `request_headers_timeout`) on a real sidecar, on
//! both of its HTTP servers: egret's own HTTP/1.1 server and hyper's (HTTP/2, long heads).
//! Slow and idle clients are cut, counted by reason, and honest clients are still served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use egret_proxy::h1::timeouts::Timeouts;
use egret_testkit::server::InProcessServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

async fn sidecar(timeouts: Timeouts) -> (Sidecar, InProcessServer) {
    let srv = server("api");
    let sc = Sidecar::start_timeouts(&se("api", "api.example.test", &srv), timeouts).await;
    (sc, srv)
}

/// Everything the proxy sends until it closes the connection, within a bound that only
/// stops a broken build from hanging (the limits under test are a few hundred ms).
async fn until_closed(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// The counter moves shortly after the connection closes (the task ends after the socket).
async fn counted(sc: &Sidecar, outcome: &'static str, want: u64) -> u64 {
    let m = &sc.running.proxy.metrics;
    for _ in 0..100 {
        if m.connection_count(outcome, "http") >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.connection_count(outcome, "http")
}

fn dialed() -> SocketAddr {
    "203.0.113.80:80".parse().unwrap()
}

#[tokio::test]
async fn slowloris_is_cut_at_the_request_headers_timeout_and_honest_clients_are_served() {
    let (sc, _srv) = sidecar(Timeouts {
        idle: ms(10_000),
        stream_idle: ms(10_000),
        request_headers: ms(400),
    })
    .await;
    let captured = sc.capture(dialed()).await;
    let mut slow = TcpStream::connect(captured).await.unwrap();
    // The request line and a header, then one byte every 50 ms: active, never complete.
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    // Meanwhile an honest client on the same proxy is served.
    let mut honest = TcpStream::connect(sc.explicit()).await.unwrap();
    honest
        .write_all(b"GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let ok = until_closed(&mut honest).await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");

    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out))
        .await
        .expect("the slow client is cut")
        .ok();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.ends_with("request header timeout"), "{text}");
    drip.abort();
    assert_eq!(counted(&sc, "request_timeout", 1).await, 1);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (sc, _srv) = sidecar(Timeouts {
        idle: ms(300),
        stream_idle: ms(10_000),
        request_headers: ms(10_000),
    })
    .await;
    let mut c = TcpStream::connect(sc.explicit()).await.unwrap();
    c.write_all(b"GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        .await
        .unwrap();
    let text = until_closed(&mut c).await;
    // One response (keep-alive), then the close: no second response, no 408.
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(counted(&sc, "idle_timeout", 1).await, 1);
}

#[tokio::test]
async fn stalled_request_body_gets_408_stream_timeout() {
    let (sc, _srv) = sidecar(Timeouts {
        idle: ms(10_000),
        stream_idle: ms(300),
        request_headers: ms(10_000),
    })
    .await;
    let captured = sc.capture(dialed()).await;
    let mut c = TcpStream::connect(captured).await.unwrap();
    c.write_all(
        b"POST / HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 100\r\n\r\nonly a part",
    )
    .await
    .unwrap();
    let text = until_closed(&mut c).await;
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.ends_with("stream timeout"), "{text}");
    assert_eq!(counted(&sc, "request_timeout", 1).await, 1);
}

#[tokio::test]
async fn hyper_served_connections_have_the_same_limits() {
    // The request-headers limit is the shorter here: on hyper's connections the idle timer
    // also runs while a head is read, and the first limit to pass closes the connection.
    let (sc, _srv) = sidecar(Timeouts {
        idle: ms(600),
        stream_idle: ms(10_000),
        request_headers: ms(200),
    })
    .await;
    let captured = sc.capture(dialed()).await;
    // HTTP/2 with prior knowledge is hyper's: the preface and an empty SETTINGS frame, then
    // nothing. hyper answers with its SETTINGS; the idle timeout closes the connection.
    let mut h2 = TcpStream::connect(captured).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), h2.read_to_end(&mut out))
        .await
        .expect("the idle HTTP/2 connection is closed")
        .ok();
    // hyper's SETTINGS frame (type 4) came first: the connection was served, then closed.
    assert!(out.len() >= 9 && out[3] == 4, "{out:?}");
    assert_eq!(counted(&sc, "idle_timeout", 1).await, 1);

    // A head longer than egret's own server takes (16 KiB) goes to hyper; never finished, it
    // is cut by hyper's header read timeout (hyper closes without a response).
    let mut long = TcpStream::connect(sc.explicit()).await.unwrap();
    let head = format!(
        "GET http://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\nX-Long: {}\r\n",
        "a".repeat(17 * 1024)
    );
    long.write_all(head.as_bytes()).await.unwrap();
    let text = until_closed(&mut long).await;
    assert!(!text.contains(" 200 "), "{text}");
    assert_eq!(counted(&sc, "request_timeout", 1).await, 1);
}
