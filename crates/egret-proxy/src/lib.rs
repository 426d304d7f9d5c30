//! egret-proxy: the data plane, one engine for the sidecar and gateway roles.
//!
//! Reading order for a request: `sidecar` (listeners, drain) -> `proxy` (one connection:
//! loop check, protocol, TLS/TCP chains, outbound policy, explicit proxy) or `gateway` (a
//! Gateway server port: the mesh tunnel, then servers by SNI) -> `http` (one request: virtual
//! host, first-match route, action) -> `upstream` (endpoint choice, DNS, connect, TLS
//! origination, pool, the sidecar's end of the mesh tunnel). `mesh` describes the tunnel. `config` turns configuration files into the `Runtime` the
//! data plane reads through an `ArcSwap`; `admin` serves `/ready`, `/config_dump`, `/metrics`.

pub mod admin;
pub mod balancer;
pub mod body;
pub mod capture;
pub mod circuit;
pub mod config;
pub mod detect;
pub mod gateway;
pub mod h1;
pub mod http;
pub mod idle;
pub mod inspect;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod outlier;
pub mod policy;
pub mod proxy;
pub mod resilience;
pub mod shard;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod tls_hello;
pub mod tls_server;
pub mod upstream;
