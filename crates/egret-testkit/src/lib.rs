//! egret-testkit: test-only helpers (never shipped in the binary).
//!
//! - [`ca`]: a throw-away certificate authority ([`ca::TestCa`]).
//! - [`netns`]: network namespaces and the four-namespace [`netns::Topology`] (root only) of
//!   DESIGN.md "Testing layers", item 5.
//! - [`jwt`]: a throw-away JWT issuer ([`jwt::TestIssuer`]): JWKS, signed and bad tokens.
//! - [`dns`]: dnsmasq answering `.test` names inside a namespace.
//! - [`nginx`]: Debian's nginx as the external HTTPS (and mTLS) service.
//! - [`server`]: egret-test-server (`/delay/N`, `/status/N`, `/headers`, `/echo`), as a
//!   process in a namespace or in-process.
//! - [`otlp`]: an OTLP/gRPC + OTLP/HTTP trace receiver ([`otlp::OtlpReceiver`]), stoppable,
//!   restartable, slow or failing on demand.
//! - [`redis`]: redis-server on a free local port, stoppable and restartable ([`redis::Redis`]).
//! - [`process`]: commands with deadlines, kill-on-drop children, temp dirs, preflight.
//!
//! The namespace helpers fail loudly: not root, or a program missing, is an error that the
//! test must turn into a failure (return it, or `expect` it) — never a skip.

pub mod ca;
pub mod dns;
pub mod fn_server;
pub mod jwt;
pub mod netns;
pub mod nginx;
pub mod otlp;
pub mod process;
pub mod redis;
pub mod server;

pub use ca::{CertPair, TestCa};
pub use dns::{Dns, DnsRecord};
pub use fn_server::FnServer;
pub use netns::{Mode, Netns, SecondGateway, Topology, addrs};
pub use nginx::{Nginx, NginxConfig};
pub use otlp::OtlpReceiver;
pub use process::{CmdOutput, Process, TempDir, preflight};
pub use server::{InProcessServer, TestServer, TestServerConfig};
