//! Audit records: one JSON line per policy decision worth keeping.
//!
//! Istio's AUDIT action only marks a request for an audit sink (Stackdriver in Istio's
//! docs); egret writes the record itself. Recorded: every denial (authorization, JWT, CUSTOM,
//! rate limit), every request matched by an AUDIT policy, what dry-run policies would have
//! decided, and — with `--audit-allowed` — every allowed decision of a proxy with policies.
//!
//! A record names who (principal, request principal, source address), what (protocol, SNI,
//! host, method, path without its query, port) and why (decision, reason, policy). It never
//! holds header values, cookies, tokens or the query string (where `access_token` travels).
//!
//! Writing never blocks the data path: records go through a bounded queue to a writer
//! thread; when it falls behind, records are dropped and counted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use super::attrs::{Attrs, Protocol};

/// Queue length between the data path and the writer thread.
const QUEUE: usize = 16 * 1024;

/// One decision.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// `allow`, `deny`, `audit`, `dry_run_deny`, `dry_run_allow`.
    pub decision: &'a str,
    /// Why, e.g. `denied_by_policy`, `no_matching_allow`, `jwt_expired`, `ext_authz_denied`,
    /// `rate_limited`.
    pub reason: &'a str,
    /// The deciding policy (`ns/name`, `ns/name/limit` for rate limits), or `-`.
    pub policy: &'a str,
    pub source: SocketAddr,
    pub attrs: &'a Attrs<'a>,
    /// HTTP status sent (0 for a connection).
    pub status: u16,
}

/// Where audit records go.
pub struct AuditLog {
    tx: Option<SyncSender<String>>,
    /// Also record allowed decisions.
    pub include_allowed: bool,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Records go to the process log (target `audit`), not a file.
    pub fn to_log(include_allowed: bool) -> AuditLog {
        AuditLog {
            tx: None,
            include_allowed,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records are appended to `path` (created if missing) by a writer thread.
    pub fn to_file(path: &Path, include_allowed: bool) -> std::io::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("egret-audit".into())
            .spawn(move || {
                let mut w = std::io::LineWriter::new(file);
                while let Ok(line) = rx.recv() {
                    if let Err(e) = w.write_all(line.as_bytes()) {
                        tracing::error!("audit log {shown}: {e}");
                    }
                }
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            include_allowed,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn record(&self, r: &Record<'_>) {
        let a = r.attrs;
        let protocol = match a.protocol {
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Tcp => "tcp",
        };
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let v = serde_json::json!({
            "ts_ms": ts,
            "decision": r.decision,
            "reason": r.reason,
            "policy": r.policy,
            "principal": a.principal,
            "request_principal": a.auth.map(|x| x.principal.as_str()),
            "source": r.source.to_string(),
            "protocol": protocol,
            "sni": a.sni,
            "host": a.host,
            "method": a.method,
            "path": a.path,
            "port": a.destination_port,
            "status": r.status,
        });
        let mut line = v.to_string();
        match &self.tx {
            None => {
                tracing::info!(target: "audit", "{line}");
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Some(tx) => {
                line.push('\n');
                match tx.try_send(line) {
                    Ok(()) => {
                        self.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_without_secrets() {
        let dir = std::env::temp_dir().join(format!("egret-audit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.log");
        let log = AuditLog::to_file(&path, false).expect("open audit log");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            "Bearer SECRET-TOKEN".parse().expect("header"),
        );
        headers.insert("cookie", "session=SECRET-COOKIE".parse().expect("header"));
        let a = Attrs {
            host: Some("api.test"),
            method: Some("GET"),
            path: Some("/admin"),
            principal: Some("cluster.local/ns/a/sa/b"),
            headers: Some(&headers),
            ..Attrs::connection(Protocol::Http, 80)
        };
        log.record(&Record {
            decision: "deny",
            reason: "denied_by_policy",
            policy: "istio-system/deny-admin",
            source: "198.51.100.2:4000".parse().expect("addr"),
            attrs: &a,
            status: 403,
        });
        drop(log); // closes the queue; the writer drains it
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["policy"], "istio-system/deny-admin");
        assert_eq!(v["principal"], "cluster.local/ns/a/sa/b");
        assert_eq!(v["path"], "/admin");
        assert_eq!(v["status"], 403);
        assert!(!text.contains("SECRET"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
