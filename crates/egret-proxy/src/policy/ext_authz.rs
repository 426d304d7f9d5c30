//! CUSTOM authorization through an external HTTP authorizer:
//! `meshConfig.extensionProviders[].envoyExtAuthzHttp` (Istio's "external authorization").
//!
//! As Envoy's HTTP ext_authz filter configured by Istio: the check request carries the
//! original method, `pathPrefix` + the original path, and the original `Host`, `Authorization`,
//! `Content-Length` (as 0: the body is not sent) plus the headers named by
//! `includeRequestHeadersInCheck` (exact, `prefix*`, `*suffix`). A 2xx answer allows, and the
//! response headers named by `headersToUpstreamOnAllow` are set on the request forwarded
//! upstream. Any other answer denies with the authorizer's status and body, plus its headers
//! named by `headersToDownstreamOnDeny`. When the authorizer cannot be reached or does not
//! answer within `timeout` (default 600 s in Istio — egret uses 10 s so a dead authorizer
//! cannot hold requests for ten minutes): `failOpen: true` allows, otherwise the request is
//! answered with `statusOnError` (default 403).
//!
//! Connections to the authorizer are pooled like upstream connections. It is found through the
//! proxy's clusters (a ServiceEntry for `service:port`), else by resolving `service` — it is
//! operator configuration, so unlike client-requested names it may be on a private address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egret_model::snapshot::{ExtensionProvider, ExtensionProviderKind, Snapshot, cluster_name};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use super::attrs::istio_match;
use crate::config::Runtime;
use crate::http::RespBody;
use crate::upstream::Upstreams;

/// The answer of a CUSTOM check.
pub enum CustomDecision {
    /// Allowed; set these headers on the upstream request. `failed_open`: the authorizer
    /// was unreachable and `failOpen` let the request through.
    Allow {
        upstream_headers: Vec<(HeaderName, HeaderValue)>,
        failed_open: bool,
    },
    /// Denied: send this response. `reason`: `ext_authz_denied` or `ext_authz_error`.
    Deny {
        response: Response<RespBody>,
        status: u16,
        reason: &'static str,
    },
}

/// One `envoyExtAuthzHttp` provider, compiled.
#[derive(Debug)]
pub struct HttpAuthorizer {
    pub name: String,
    /// Host name of the service (`ns/host` has its namespace removed).
    host: String,
    port: u16,
    timeout: Duration,
    path_prefix: String,
    fail_open: bool,
    status_on_error: StatusCode,
    include: Vec<String>,
    to_upstream: Vec<String>,
    to_downstream: Vec<String>,
}

/// Largest authorizer response body relayed to the client.
const MAX_BODY: usize = 64 * 1024;

impl HttpAuthorizer {
    /// The HTTP authorizers among a mesh's extension providers, by name.
    pub fn from_providers(
        providers: &[ExtensionProvider],
    ) -> std::collections::HashMap<String, Arc<HttpAuthorizer>> {
        providers
            .iter()
            .filter_map(|p| match &p.kind {
                ExtensionProviderKind::ExtAuthzHttp {
                    service,
                    port,
                    timeout,
                    path_prefix,
                    fail_open,
                    status_on_error,
                    include_request_headers_in_check,
                    headers_to_upstream_on_allow,
                    headers_to_downstream_on_deny,
                } => {
                    let host = service.rsplit('/').next().unwrap_or(service).to_string();
                    let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
                    Some((
                        p.name.clone(),
                        Arc::new(HttpAuthorizer {
                            name: p.name.clone(),
                            host,
                            port: *port,
                            timeout: timeout
                                .map(|t| t.to_std())
                                .unwrap_or(Duration::from_secs(10)),
                            path_prefix: path_prefix.clone().unwrap_or_default(),
                            fail_open: *fail_open,
                            status_on_error: status_on_error
                                .as_deref()
                                .and_then(|s| s.parse::<u16>().ok())
                                .and_then(|s| StatusCode::from_u16(s).ok())
                                .unwrap_or(StatusCode::FORBIDDEN),
                            include: lower(include_request_headers_in_check),
                            to_upstream: lower(headers_to_upstream_on_allow),
                            to_downstream: lower(headers_to_downstream_on_deny),
                        }),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn wanted(list: &[String], name: &str) -> bool {
        list.iter().any(|p| istio_match(p, name))
    }

    /// Ask the authorizer about one request.
    pub async fn check(
        &self,
        upstreams: &Arc<Upstreams>,
        rt: &Runtime,
        method: &http::Method,
        path_and_query: &str,
        host: &str,
        headers: &HeaderMap,
    ) -> CustomDecision {
        match tokio::time::timeout(
            self.timeout,
            self.exchange(upstreams, rt, method, path_and_query, host, headers),
        )
        .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => self.on_error(&e),
            Err(_) => self.on_error(&format!("no answer within {:?}", self.timeout)),
        }
    }

    fn on_error(&self, why: &str) -> CustomDecision {
        tracing::warn!(target: "policy", provider = %self.name, fail_open = self.fail_open, "external authorizer failed: {why}");
        if self.fail_open {
            return CustomDecision::Allow {
                upstream_headers: Vec::new(),
                failed_open: true,
            };
        }
        CustomDecision::Deny {
            response: crate::http::local(self.status_on_error, ""),
            status: self.status_on_error.as_u16(),
            reason: "ext_authz_error",
        }
    }

    async fn address(&self, upstreams: &Upstreams, snap: &Snapshot) -> Result<SocketAddr, String> {
        if let Some(c) = snap.cluster(&cluster_name(self.port, None, &self.host))
            && let Some(ep) = c.endpoints.first()
        {
            let ips = upstreams
                .resolve(&ep.address)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(ip) = ips.first() {
                return Ok(SocketAddr::new(*ip, ep.port));
            }
        }
        let ips = upstreams
            .resolve(&self.host)
            .await
            .map_err(|e| e.to_string())?;
        ips.first()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .ok_or_else(|| format!("{} has no address", self.host))
    }

    async fn exchange(
        &self,
        upstreams: &Arc<Upstreams>,
        rt: &Runtime,
        method: &http::Method,
        path_and_query: &str,
        host: &str,
        headers: &HeaderMap,
    ) -> Result<CustomDecision, String> {
        let addr = self.address(upstreams, &rt.snapshot).await?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.path_prefix, path_and_query))
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| format!("check request: {e}"))?;
        let h = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        for (name, value) in headers {
            if name == header::AUTHORIZATION || Self::wanted(&self.include, name.as_str()) {
                h.append(name.clone(), value.clone());
            }
        }
        // egret's own HTTP/1.1 client: the connection returns to the pool once the answer's
        // body has been read below.
        let limits = crate::upstream::PoolLimits::default();
        let conn = upstreams
            .h1_conn(addr, self.timeout, None, &limits)
            .await
            .map_err(|e| e.to_string())?;
        let resp = conn.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        if status.is_success() {
            let upstream_headers = parts
                .headers
                .iter()
                .filter(|(n, _)| Self::wanted(&self.to_upstream, n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            return Ok(CustomDecision::Allow {
                upstream_headers,
                failed_open: false,
            });
        }
        let mut response = crate::http::local(status, body);
        for (n, v) in &parts.headers {
            if Self::wanted(&self.to_downstream, n.as_str()) {
                response.headers_mut().append(n.clone(), v.clone());
            }
        }
        Ok(CustomDecision::Deny {
            response,
            status: status.as_u16(),
            reason: "ext_authz_denied",
        })
    }
}
