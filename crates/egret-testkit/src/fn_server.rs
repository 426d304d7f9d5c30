//! A small plain-HTTP server whose answers a test decides: the external authorizer of Istio's
//! ext-authz sample, a JWKS endpoint that can be switched off, anything a policy test needs
//! on the other end. In-process (a thread with its own runtime), optionally inside a network
//! namespace; stopped on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::netns::Netns;

/// What the handler sees of a request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

pub struct FnServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A text response with extra headers.
pub fn respond(status: u16, body: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

impl FnServer {
    pub fn start(netns: Option<&Netns>, addr: SocketAddr, handler: Handler) -> Result<FnServer> {
        let l = match netns {
            Some(ns) => ns.bind_tcp(addr)?,
            None => std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?,
        };
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (requests2, seen2) = (requests.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name(format!("fn-server-{addr}"))
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(l) else {
                        return;
                    };
                    let serve = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let (handler, requests, seen) =
                                (handler.clone(), requests2.clone(), seen2.clone());
                            tokio::spawn(async move {
                                let svc = service_fn(move |req: http::Request<Incoming>| {
                                    let s = Seen {
                                        method: req.method().clone(),
                                        uri: req
                                            .uri()
                                            .path_and_query()
                                            .map(|p| p.as_str().to_string())
                                            .unwrap_or_default(),
                                        headers: req.headers().clone(),
                                    };
                                    requests.fetch_add(1, Ordering::SeqCst);
                                    let resp = handler(&s);
                                    if let Ok(mut v) = seen.lock() {
                                        v.push(s);
                                    }
                                    async move { Ok::<_, std::convert::Infallible>(resp) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = rx => {}
                    }
                });
            })?;
        Ok(FnServer {
            addr,
            requests,
            seen,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Istio's ext-authz sample (`samples/extauthz`): allows a request with the header
    /// `x-ext-authz: allow` (answering `x-ext-authz-check-result: allowed`, which
    /// `headersToUpstreamOnAllow` can pass on), denies anything else with 403, the header
    /// `x-ext-authz-check-result: denied` and a body saying why.
    pub fn ext_authz(netns: Option<&Netns>, addr: SocketAddr) -> Result<FnServer> {
        FnServer::start(
            netns,
            addr,
            Arc::new(|s: &Seen| {
                let allow = s
                    .headers
                    .get("x-ext-authz")
                    .is_some_and(|v| v.as_bytes() == b"allow");
                if allow {
                    respond(200, "", &[("x-ext-authz-check-result", "allowed")])
                } else {
                    respond(
                        403,
                        "denied by ext_authz for not found header `x-ext-authz: allow` in the request",
                        &[("x-ext-authz-check-result", "denied")],
                    )
                }
            }),
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for FnServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
