//! egret's own HTTP/1.1 wire handling for the hot path (issue 8).
//!
//! hyper serves and sends everything else (HTTP/2, upgrades, CONNECT, streamed request bodies);
//! these two halves let one task carry a keep-alive request from the downstream socket to the
//! upstream socket and back without hyper's per-connection tasks, channels and buffers:
//!
//! - `server`: reads a request head straight off the downstream connection, hands anything it
//!   does not handle itself to hyper with the bytes it has read, and writes the response;
//! - `client`: writes the request to a pooled upstream connection and reads the response in the
//!   request's own task; the connection goes back to the pool when its body has been read.

pub mod client;
pub mod server;
pub mod timeouts;

/// Does a comma-separated header value list `token` (case-insensitive)? (`connection: close`
/// in either direction.)
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}
