//! The admin endpoint (127.0.0.1:15000 by default, Istio's port): `/ready`, `/config_dump`,
//! `/metrics`, `/logging?level=`, and the views `egret proxy-config` reads (`/server_info`,
//! `/listeners`, `/routes`, `/clusters`, `/certs`: [`crate::inspect`]). Loopback only unless
//! told otherwise: it shows the whole configuration.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::http::{RespBody, local};
use crate::proxy::Proxy;

/// Changes the log filter at run time (the `tracing_subscriber` reload handle, wrapped so this
/// crate does not fix the subscriber's type).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub proxy: Arc<Proxy>,
    /// True once the first snapshot is loaded and every listener is bound; false again while
    /// draining.
    pub ready: Arc<AtomicBool>,
    pub set_log_level: Option<SetLogLevel>,
    /// Listening addresses, start time, credentials: what the inspection views add to the
    /// snapshot.
    pub info: crate::inspect::ProxyInfo,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let m = me.clone();
                    async move { Ok::<_, Infallible>(m.route(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    /// Istio's series, egret's, then the proxy's counters — one Prometheus text exposition.
    fn metrics_text(&self) -> String {
        let p = &self.proxy;
        let gauges = crate::telemetry::egret::Gauges {
            config_version: p.state.load().snapshot.version.clone(),
            workload_cert: p.mesh.as_ref().map(|m| {
                let store = m.store();
                let ts = store
                    .expiry()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                (store.spiffe_id().to_string(), ts)
            }),
            upstream: p.upstreams.counts(),
        };
        let mut out = String::with_capacity(64 * 1024);
        p.telemetry.encode(&mut out, &gauges);
        out.push_str(&p.metrics.encode());
        out
    }

    async fn route(&self, req: Request<Incoming>) -> Response<RespBody> {
        match (req.method(), req.uri().path()) {
            (
                &Method::GET,
                path @ ("/server_info" | "/listeners" | "/routes" | "/clusters" | "/certs"),
            ) => self.inspect(path).await,
            (&Method::GET, "/ready") | (&Method::GET, "/healthz/ready") => {
                if self.ready.load(Ordering::Acquire) {
                    local(StatusCode::OK, "ready\n")
                } else {
                    local(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/config_dump") => {
                let rt = self.proxy.state.load_full();
                match serde_json::to_string_pretty(&*rt.snapshot) {
                    Ok(s) => {
                        let mut r = local(StatusCode::OK, s);
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    Err(e) => local(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            (&Method::GET, "/metrics") | (&Method::GET, "/stats/prometheus") => {
                let mut r = local(StatusCode::OK, self.metrics_text());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (_, "/logging") => {
                let level = req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("level="))
                        .map(str::to_string)
                });
                match (level, &self.set_log_level) {
                    (Some(l), Some(set)) => match set(&l) {
                        Ok(()) => local(StatusCode::OK, format!("log level: {l}\n")),
                        Err(e) => local(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    (None, _) => local(
                        StatusCode::BAD_REQUEST,
                        "usage: /logging?level=error|warn|info|debug|trace (or a filter such as access=info)\n",
                    ),
                    (_, None) => local(StatusCode::NOT_IMPLEMENTED, "log level is fixed\n"),
                }
            }
            _ => local(
                StatusCode::NOT_FOUND,
                "endpoints: /ready /server_info /listeners /routes /clusters /certs /config_dump /metrics /logging?level=\n",
            ),
        }
    }
}

impl Admin {
    /// The inspection views, computed now from the current runtime (docs/proxy-config.md).
    async fn inspect(&self, path: &str) -> Response<RespBody> {
        use crate::inspect;
        let rt = self.proxy.state.load_full();
        let json = match path {
            "/server_info" => {
                serde_json::to_string_pretty(&inspect::server_info(&rt, &self.proxy, &self.info))
            }
            "/listeners" => serde_json::to_string_pretty(&inspect::listeners(&rt, &self.info)),
            "/routes" => serde_json::to_string_pretty(&inspect::routes(&rt)),
            "/clusters" => serde_json::to_string_pretty(
                &inspect::clusters(&rt, &self.proxy.upstreams, &self.info).await,
            ),
            _ => serde_json::to_string_pretty(&inspect::certs(&rt, &self.proxy, &self.info)),
        };
        match json {
            Ok(s) => {
                let mut r = local(StatusCode::OK, s);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => local(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}
