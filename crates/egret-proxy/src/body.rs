//! The body types of the data path.
//!
//! A downstream request's body ([`InBody`]) is whatever the server side that accepted it reads:
//! hyper's, for HTTP/2 and the connections handed to hyper; a small body egret's own HTTP/1.1
//! server (`h1::server`) read whole before the request was handled. Every body egret passes on is a
//! [`BoxBody`] whose error is a boxed error, so upstream bodies that are not hyper's (egret's own
//! HTTP/1 exchange) and local ones can travel the same path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Any error a body can end with (hyper's, an upstream reset, a client gone).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: what egret sends upstream and answers downstream.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A downstream request's body.
pub enum InBody {
    /// Read by hyper's server (HTTP/2, and HTTP/1 connections hyper serves).
    Hyper(Incoming),
    /// Read whole by `h1::server` (a `Content-Length` body of at most 64 KiB); `None` once
    /// yielded, or when the request had no body.
    Buffered(Option<Bytes>),
}

impl InBody {
    /// A body read whole; an empty one is at its end at once (no frame, like hyper's
    /// `Incoming` for `Content-Length: 0`).
    pub fn buffered(b: Bytes) -> InBody {
        InBody::Buffered(Some(b).filter(|b| !b.is_empty()))
    }
}

impl From<Incoming> for InBody {
    fn from(b: Incoming) -> Self {
        InBody::Hyper(b)
    }
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            InBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            InBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Hyper(b) => b.is_end_stream(),
            InBody::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InBody::Hyper(b) => b.size_hint(),
            InBody::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
