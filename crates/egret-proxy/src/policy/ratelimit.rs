//! Rate limits (RateLimitPolicy, docs/rate-limits.md): LOCAL token buckets in this process and
//! GLOBAL fixed-window counters shared by every replica through Redis.
//!
//! Two pieces, split along their lifetimes:
//! - [`RateLimitState`], one per process: the LOCAL buckets, the Redis connection pools and
//!   the counters. It outlives configuration reloads, so reloading a snapshot whose limit did
//!   not change neither refills its buckets nor reconnects to Redis.
//! - [`RateLimiter`], one per snapshot ([`RateLimiter::new`]): the limits that apply to this
//!   proxy, compiled against the state. [`RateLimiter::check`] decides one request or one new
//!   connection.
//!
//! A decision consults every limit whose `match` applies; all must allow. LOCAL limits come
//! first (no I/O), then GLOBAL limits, one Redis round trip per policy. The first limit that
//! refuses decides, and the limits after it are not charged (a request refused locally costs
//! the shared quota nothing). No lock is held across an `.await`: a LOCAL decision is one short
//! critical section on one shard of one limit's buckets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use egret_config::types::RateLimitScope;
pub use egret_model::ratelimit::{
    DescriptorKey, LimitMatch, RateLimitPolicySpec, RateLimitSpec, RedisSettings,
};

use super::redis::{RedisError, RedisPool, Script, Value};
use super::{Attrs, Protocol, istio_match};

/// Distinct descriptors (buckets) one LOCAL limit keeps. Beyond this, buckets that have
/// refilled completely are dropped (a full bucket is the same as a new one, so nothing is
/// lost); if every bucket is still in use, new descriptors share one overflow bucket of the
/// limit's size until room frees up. Bounds memory against a caller who varies a `by` value
/// (a header, the path) on every request.
pub const MAX_DESCRIPTORS_PER_LIMIT: usize = 10_000;

/// Shards of one LOCAL limit's buckets: requests for different descriptors rarely wait on
/// each other.
const SHARDS: usize = 16;

/// A full shard looks for refilled buckets to drop at most this often.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A descriptor longer than this (long header values or paths) is replaced by a digest, so a
/// bucket key or a Redis key stays small.
const MAX_DESCRIPTOR_LEN: usize = 256;

/// When Redis fails and the policy fails closed, clients are told to retry after this.
const FAIL_CLOSED_RETRY: Duration = Duration::from_secs(1);

/// A fixed window per limit, aligned to the Redis server's clock, for every key of the call.
/// KEYS[i] is the key prefix of limit i (`egret:rl:<policy>:<limit>:<descriptor>`), ARGV[i]
/// its window in milliseconds. The key of the current window is `<prefix>:<window index>`;
/// the first hit sets its expiry at the window's end. Returns `{count, ms to window end}` per
/// key, flattened. TIME before writes needs effect replication, which Redis 3.2 and 4 only
/// use when asked (`redis.replicate_commands()`; a no-op from Redis 5, always on from 7).
pub const FIXED_WINDOW_SCRIPT: Script = Script {
    source: r#"if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, prefix in ipairs(KEYS) do
  local win = tonumber(ARGV[i])
  local key = prefix .. ':' .. string.format('%.0f', math.floor(now / win))
  local left = win - (now % win)
  local n = redis.call('INCR', key)
  if n == 1 then
    redis.call('PEXPIRE', key, left)
  end
  out[#out + 1] = n
  out[#out + 1] = left
end
return out
"#,
};

// ===== Decisions =====

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead. `headers`: the tightest limit that applied (fewest tokens left), for
    /// `x-ratelimit-*` response headers; `None` when no limit applied.
    Allow { headers: Option<RateHeaders> },
    /// Refuse: HTTP 429 with [`Decision::response_headers`]; TLS/TCP: close the new
    /// connection.
    Limited {
        /// The limit that refused.
        limit_name: Arc<str>,
        /// Its policy, `ns/name`.
        policy: Arc<str>,
        /// When a retry may succeed: one token refilled (LOCAL), the window's end (GLOBAL),
        /// 1s when Redis failed and the policy fails closed.
        retry_after: Duration,
        /// The limit's quota.
        limit: u64,
        /// When the bucket is full again (LOCAL) / the window ends (GLOBAL).
        reset: Duration,
        cause: LimitedBy,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    /// The quota is used up.
    Quota,
    /// Redis did not answer and the policy sets `failureModeDeny: true`.
    RedisFailure,
}

/// The state of one limit after a decision, as response headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// The limit's quota.
    pub limit: u64,
    /// Tokens (LOCAL) or requests in the window (GLOBAL) left after this one.
    pub remaining: u64,
    /// Until the bucket is full again (LOCAL) / the window ends (GLOBAL).
    pub reset: Duration,
}

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateHeaders {
    /// `x-ratelimit-limit: <quota>`, `x-ratelimit-remaining: <n>`,
    /// `x-ratelimit-reset: <seconds, rounded up>` — decimal integers, as Envoy's
    /// `x-ratelimit-*` headers (without the draft's `;w=` quota policy, which cannot say
    /// sub-second windows).
    pub fn insert_into(&self, h: &mut HeaderMap) {
        h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        h.insert(X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(self.reset)));
    }
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The headers of the response: for `Limited` (the 429) `retry-after` (whole seconds,
    /// rounded up, at least 1) and `x-ratelimit-limit`, `x-ratelimit-remaining: 0`,
    /// `x-ratelimit-reset`; for `Allow` the `x-ratelimit-*` of the tightest limit, if any
    /// applied.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        match self {
            Decision::Allow { headers: Some(r) } => r.insert_into(&mut h),
            Decision::Allow { headers: None } => {}
            Decision::Limited {
                retry_after,
                limit,
                reset,
                ..
            } => {
                h.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(*retry_after).max(1)),
                );
                RateHeaders {
                    limit: *limit,
                    remaining: 0,
                    reset: *reset,
                }
                .insert_into(&mut h);
            }
        }
        h
    }
}

// ===== Token buckets =====

/// A bucket's rate in integer units: the level is kept in token·nanoseconds, so a token is
/// `fill_ns` units and `elapsed_ns × quota` units refill — exact, with no float drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Rate {
    quota: u64,
    fill_ns: u64,
}

impl Rate {
    fn capacity(&self) -> u128 {
        u128::from(self.quota) * u128::from(self.fill_ns)
    }

    /// How long `units` take to refill, rounded up.
    fn time_for(&self, units: u128) -> Duration {
        let q = u128::from(self.quota.max(1));
        let ns = units.div_ceil(q);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: u128,
    last: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    Allowed {
        remaining: u64,
        reset: Duration,
    },
    Limited {
        retry_after: Duration,
        reset: Duration,
    },
}

impl Bucket {
    /// A new bucket starts full: the first `quota` requests of a descriptor pass at once.
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            level: rate.capacity(),
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // A clock that went backwards (or `now` from a caller lagging another) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed > 0 {
            let add = elapsed.saturating_mul(u128::from(rate.quota));
            self.level = self.level.saturating_add(add).min(rate.capacity());
            self.last = now;
        }
    }

    fn take(&mut self, rate: Rate, now: Instant) -> Take {
        self.refill(rate, now);
        let token = u128::from(rate.fill_ns);
        let cap = rate.capacity();
        if self.level >= token {
            self.level -= token;
            Take::Allowed {
                remaining: u64::try_from(self.level / token).unwrap_or(u64::MAX),
                reset: rate.time_for(cap - self.level),
            }
        } else {
            Take::Limited {
                retry_after: rate.time_for(token - self.level),
                reset: rate.time_for(cap - self.level),
            }
        }
    }

    /// Has the bucket refilled completely by `now`? Then it is the same as a new one.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.level >= rate.capacity()
    }
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<Box<str>, Bucket>,
    last_sweep: Option<Instant>,
}

/// One LOCAL limit's buckets, by descriptor. Shared by every [`RateLimiter`] built for the
/// same (policy, limit name, quota, fillInterval, `by`).
#[derive(Debug)]
struct LocalLimit {
    rate: Rate,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    overflow: Mutex<Option<Bucket>>,
}

/// A poisoned lock only means another thread panicked mid-update of a bucket: the numbers are
/// still numbers, so keep going rather than take the data path down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalLimit {
    fn new(rate: Rate, max_descriptors: usize) -> LocalLimit {
        LocalLimit {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_descriptors.div_ceil(SHARDS).max(1),
            overflow: Mutex::new(None),
        }
    }

    fn take(&self, descriptor: &str, now: Instant) -> Take {
        let i = (fnv1a(descriptor.as_bytes(), FNV_OFFSET) % SHARDS as u64) as usize;
        let mut shard = lock(&self.shards[i]);
        if let Some(b) = shard.buckets.get_mut(descriptor) {
            return b.take(self.rate, now);
        }
        if shard.buckets.len() >= self.per_shard {
            let due = shard
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if due {
                let rate = self.rate;
                shard.buckets.retain(|_, b| !b.is_full(rate, now));
                shard.last_sweep = Some(now);
            }
            if shard.buckets.len() >= self.per_shard {
                drop(shard);
                let mut o = lock(&self.overflow);
                return o
                    .get_or_insert_with(|| Bucket::full(self.rate, now))
                    .take(self.rate, now);
            }
        }
        let mut b = Bucket::full(self.rate, now);
        let t = b.take(self.rate, now);
        shard.buckets.insert(descriptor.into(), b);
        t
    }

    fn descriptors(&self) -> usize {
        self.shards.iter().map(|s| lock(s).buckets.len()).sum()
    }
}

// ===== Descriptors =====

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_OFFSET_2: u64 = 0x6c62_272e_07bb_0142;

/// FNV-1a: stable across processes and builds (unlike std's hasher), so every replica
/// derives the same digest, and so the same Redis key, for a long descriptor.
fn fnv1a(bytes: &[u8], offset: u64) -> u64 {
    let mut h = offset;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Append `v`, escaping what would make descriptors ambiguous or Redis keys awkward: `%`,
/// the separators `|` and `:`, the cluster hash-tag braces `{}`, and every byte that is not
/// printable ASCII, as `%XX`.
fn escape_into(out: &mut String, v: &[u8]) {
    for &b in v {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'|' | b':' | b'{' | b'}') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The HTTP host, else the SNI (lower case).
fn host_of<'a>(a: &Attrs<'a>) -> Option<Cow<'a, str>> {
    a.host.or(a.sni).map(lower)
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The descriptor of a request for a limit's `by` keys: each value as `=<escaped value>`, or
/// `~` when the request has none (a TCP connection has no path; a header is missing), joined
/// by `|`. Requests without a value share the `~` bucket rather than escape the limit (Envoy
/// skips the limit instead; here leaving out a header must not lift a limit). Empty when `by`
/// is empty: one bucket for the limit.
pub fn descriptor(by: &[DescriptorKey], a: &Attrs<'_>) -> String {
    let mut out = String::new();
    for (i, k) in by.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        let v: Option<Cow<'_, [u8]>> = match k {
            DescriptorKey::Principal => a.principal.map(|p| Cow::Borrowed(p.as_bytes())),
            DescriptorKey::Host => host_of(a).map(|h| match h {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            }),
            DescriptorKey::Sni => a
                .sni
                .map(|s| Cow::Owned(s.to_ascii_lowercase().into_bytes())),
            DescriptorKey::Path => a.path.map(|p| Cow::Borrowed(p.as_bytes())),
            DescriptorKey::Method => a.method.map(|m| Cow::Borrowed(m.as_bytes())),
            DescriptorKey::SourceIp => a
                .source_ip
                .map(|ip| Cow::Owned(ip.to_string().into_bytes())),
            // The first value of the header (HTTP only).
            DescriptorKey::Header(name) => a
                .headers
                .and_then(|h| h.get(name.as_str()))
                .map(|v| Cow::Borrowed(v.as_bytes())),
        };
        match v {
            Some(v) => {
                out.push('=');
                escape_into(&mut out, &v);
            }
            None => out.push('~'),
        }
    }
    if out.len() > MAX_DESCRIPTOR_LEN {
        let b = out.as_bytes();
        out = format!(
            "#{:016x}{:016x}",
            fnv1a(b, FNV_OFFSET),
            fnv1a(b, FNV_OFFSET_2)
        );
    }
    out
}

// ===== Matching =====

/// Does `m` apply to this request or connection? Every non-empty field must match; a match on
/// HTTP-only fields (paths, methods, headers) never applies to TLS or TCP. `hosts` is the
/// HTTP host, or the SNI when there is none.
pub fn limit_applies(m: &LimitMatch, a: &Attrs<'_>) -> bool {
    if a.protocol != Protocol::Http && m.is_http_only() {
        return false;
    }
    if !m.ports.is_empty() && !m.ports.contains(&a.destination_port) {
        return false;
    }
    let any = |patterns: &[String], v: Option<&str>| {
        v.is_some_and(|v| patterns.iter().any(|p| istio_match(p, v)))
    };
    if !m.hosts.is_empty() && !any(&m.hosts, host_of(a).as_deref()) {
        return false;
    }
    if !m.principals.is_empty() && !any(&m.principals, a.principal) {
        return false;
    }
    if !m.paths.is_empty() && !any(&m.paths, a.path) {
        return false;
    }
    if !m.methods.is_empty() && !any(&m.methods, a.method) {
        return false;
    }
    m.headers.iter().all(|h| {
        let Some(headers) = a.headers else {
            return false;
        };
        let mut values = headers.get_all(h.name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return false;
        }
        h.values.is_empty()
            || values.any(|v| {
                v.to_str()
                    .is_ok_and(|v| h.values.iter().any(|p| istio_match(p, v)))
            })
    })
}

// ===== Process-wide state =====

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

/// Identifies a LOCAL limit across reloads: an unchanged limit keeps its buckets; a changed
/// quota, interval or `by` starts afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LocalKey {
    policy: String,
    name: String,
    rate: Rate,
    by: Vec<DescriptorKey>,
}

/// At most one warning a second, with how many were held back: a Redis outage at thousands of
/// requests a second must not flood the log.
#[derive(Debug)]
struct LogGate {
    epoch: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    fn new() -> LogGate {
        LogGate {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last one)` when this event may be logged.
    fn pass(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What outlives a configuration reload: LOCAL buckets, Redis pools, counters. One per
/// process, in an `Arc`; every [`RateLimiter`] is built against it.
#[derive(Debug)]
pub struct RateLimitState {
    local: Mutex<HashMap<LocalKey, Arc<LocalLimit>>>,
    pools: Mutex<HashMap<String, Arc<RedisPool>>>,
    max_descriptors: usize,
    decisions: Family<DecisionLabel, Counter>,
    allowed: Counter,
    limited: Counter,
    failed_open: Counter,
    failed_closed: Counter,
    redis_errors: Counter,
    log_gate: LogGate,
}

impl Default for RateLimitState {
    fn default() -> Self {
        RateLimitState::new()
    }
}

impl RateLimitState {
    pub fn new() -> RateLimitState {
        RateLimitState::with_max_descriptors(MAX_DESCRIPTORS_PER_LIMIT)
    }

    /// A state whose LOCAL limits keep at most `n` descriptors each (tests; the default is
    /// [`MAX_DESCRIPTORS_PER_LIMIT`]).
    pub fn with_max_descriptors(n: usize) -> RateLimitState {
        let decisions = Family::<DecisionLabel, Counter>::default();
        // Created up front, so all four series show (as 0) before the first decision.
        let counter = |decision| decisions.get_or_create(&DecisionLabel { decision }).clone();
        RateLimitState {
            local: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            max_descriptors: n.max(1),
            allowed: counter("allowed"),
            limited: counter("limited"),
            failed_open: counter("failed_open"),
            failed_closed: counter("failed_closed"),
            decisions,
            redis_errors: Counter::default(),
            log_gate: LogGate::new(),
        }
    }

    /// Register `ratelimit_decisions{decision="allowed|limited|failed_open|failed_closed"}`
    /// and `ratelimit_redis_errors` (counters: exposed with `_total`, under the registry's
    /// prefix, e.g. `egret_ratelimit_decisions_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions where at least one limit applied, by outcome (failed_open / failed_closed: Redis did not answer)",
            self.decisions.clone(),
        );
        registry.register(
            "ratelimit_redis_errors",
            "Redis calls for GLOBAL rate limits that failed or timed out",
            self.redis_errors.clone(),
        );
    }

    /// Decisions where limits applied and all allowed (Redis answered).
    pub fn allowed(&self) -> u64 {
        self.allowed.get()
    }

    /// Decisions refused because a quota was used up.
    pub fn limited(&self) -> u64 {
        self.limited.get()
    }

    /// Decisions allowed although Redis failed (`failureModeDeny: false`).
    pub fn failed_open(&self) -> u64 {
        self.failed_open.get()
    }

    /// Decisions refused because Redis failed (`failureModeDeny: true`).
    pub fn failed_closed(&self) -> u64 {
        self.failed_closed.get()
    }

    /// Redis calls that failed or timed out.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.get()
    }

    /// The Redis pool for `address` (shared by every policy naming it).
    pub fn redis_pool(&self, address: &str) -> Arc<RedisPool> {
        lock(&self.pools)
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(RedisPool::new(address)))
            .clone()
    }

    fn local_limit(&self, key: LocalKey) -> Arc<LocalLimit> {
        let max = self.max_descriptors;
        lock(&self.local)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(LocalLimit::new(key.rate, max)))
            .clone()
    }

    /// Drop buckets and pools no limiter uses any more. Those of the limiter just built and of
    /// the one still serving (held by them) stay, so a reload never resets a limit that
    /// carried over.
    fn prune(&self) {
        lock(&self.local).retain(|_, l| Arc::strong_count(l) > 1);
        lock(&self.pools).retain(|_, p| Arc::strong_count(p) > 1);
    }

    fn redis_failed(&self, policy: &str, addr: &str, deny: bool, e: &RedisError) {
        self.redis_errors.inc();
        if let Some(suppressed) = self.log_gate.pass() {
            tracing::warn!(
                target: "policy",
                policy,
                redis = addr,
                error = %e,
                fail_mode = if deny { "closed" } else { "open" },
                suppressed,
                "rate limit: Redis did not answer; {}",
                if deny { "refusing (failureModeDeny)" } else { "allowing" }
            );
        }
    }
}

// ===== The per-snapshot limiter =====

#[derive(Debug)]
struct Common {
    policy: Arc<str>,
    name: Arc<str>,
    quota: u64,
    matches: LimitMatch,
    by: Vec<DescriptorKey>,
}

#[derive(Debug)]
struct LocalEntry {
    c: Common,
    buckets: Arc<LocalLimit>,
}

#[derive(Debug)]
struct GlobalEntry {
    c: Common,
    window_ms: u64,
    /// `egret:rl:<policy>:<limit>:`; the descriptor follows.
    key_prefix: String,
    window: Duration,
}

/// The GLOBAL limits of one policy: one Redis call covers all that apply.
#[derive(Debug)]
struct GlobalGroup {
    policy: Arc<str>,
    pool: Arc<RedisPool>,
    timeout: Duration,
    deny: bool,
    limits: Vec<GlobalEntry>,
}

/// The rate limits of one snapshot, compiled against the process's [`RateLimitState`].
#[derive(Debug)]
pub struct RateLimiter {
    state: Arc<RateLimitState>,
    local: Vec<LocalEntry>,
    global: Vec<GlobalGroup>,
}

impl RateLimiter {
    /// Compile `policies` (a snapshot's `rate_limits`). Call once per snapshot, while the
    /// previous limiter is still alive (build, then swap): LOCAL limits that did not change
    /// keep their buckets, and state nothing uses any more is dropped.
    pub fn new(policies: &[RateLimitPolicySpec], shared: &Arc<RateLimitState>) -> RateLimiter {
        let mut local = Vec::new();
        let mut global = Vec::new();
        for p in policies {
            let policy: Arc<str> = Arc::from(p.name.as_str());
            let mut group: Option<GlobalGroup> = None;
            for l in &p.limits {
                let c = Common {
                    policy: policy.clone(),
                    name: Arc::from(l.name.as_str()),
                    quota: l.quota.max(1),
                    matches: l.matches.clone(),
                    by: l.by.clone(),
                };
                match (l.scope, &p.redis) {
                    (RateLimitScope::Global, Some(redis)) => {
                        let window_ms = l.fill_interval.as_millis().max(1);
                        let g = group.get_or_insert_with(|| GlobalGroup {
                            policy: policy.clone(),
                            pool: shared.redis_pool(&redis.address),
                            timeout: redis.timeout.to_std(),
                            deny: redis.failure_mode_deny,
                            limits: Vec::new(),
                        });
                        g.limits.push(GlobalEntry {
                            key_prefix: format!("egret:rl:{}:{}:", p.name, l.name),
                            window_ms,
                            window: Duration::from_millis(window_ms),
                            c,
                        });
                    }
                    // A GLOBAL limit without Redis is a validation error (and compiled out);
                    // should one arrive anyway, it is enforced per replica rather than not at
                    // all.
                    _ => {
                        let rate = Rate {
                            quota: c.quota,
                            fill_ns: l.fill_interval.as_nanos().max(1),
                        };
                        let buckets = shared.local_limit(LocalKey {
                            policy: p.name.clone(),
                            name: l.name.clone(),
                            rate,
                            by: l.by.clone(),
                        });
                        local.push(LocalEntry { c, buckets });
                    }
                }
            }
            global.extend(group);
        }
        shared.prune();
        RateLimiter {
            state: shared.clone(),
            local,
            global,
        }
    }

    /// No limits: [`RateLimiter::check`] always allows (callers may skip it).
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }

    pub fn state(&self) -> &Arc<RateLimitState> {
        &self.state
    }

    /// Descriptors (buckets) a LOCAL limit holds now, by `(policy, limit)`; `None` for an
    /// unknown or GLOBAL limit. For tests and debugging.
    pub fn local_descriptors(&self, policy: &str, limit: &str) -> Option<usize> {
        self.local
            .iter()
            .find(|l| &*l.c.policy == policy && &*l.c.name == limit)
            .map(|l| l.buckets.descriptors())
    }

    /// Decide one HTTP request or one new TLS/TCP connection.
    pub async fn check(&self, a: &Attrs<'_>) -> Decision {
        if self.is_empty() {
            return Decision::Allow { headers: None };
        }
        let now = Instant::now();
        let mut applied = false;
        let mut tightest: Option<RateHeaders> = None;
        let mut note = |h: RateHeaders| {
            if tightest.is_none_or(|t| h.remaining < t.remaining) {
                tightest = Some(h);
            }
        };

        for l in &self.local {
            if !limit_applies(&l.c.matches, a) {
                continue;
            }
            applied = true;
            let d = descriptor(&l.c.by, a);
            match l.buckets.take(&d, now) {
                Take::Allowed { remaining, reset } => note(RateHeaders {
                    limit: l.c.quota,
                    remaining,
                    reset,
                }),
                Take::Limited { retry_after, reset } => {
                    self.state.limited.inc();
                    return limited(&l.c, retry_after, reset, LimitedBy::Quota);
                }
            }
        }

        let mut failed_open = false;
        for g in &self.global {
            let hits: Vec<(&GlobalEntry, String)> = g
                .limits
                .iter()
                .filter(|l| limit_applies(&l.c.matches, a))
                .map(|l| (l, format!("{}{}", l.key_prefix, descriptor(&l.c.by, a))))
                .collect();
            let Some((first, _)) = hits.first() else {
                continue;
            };
            applied = true;
            let windows: Vec<String> = hits.iter().map(|(l, _)| l.window_ms.to_string()).collect();
            let keys: Vec<&[u8]> = hits.iter().map(|(_, k)| k.as_bytes()).collect();
            let args: Vec<&[u8]> = windows.iter().map(|w| w.as_bytes()).collect();
            let answer = g
                .pool
                .eval(FIXED_WINDOW_SCRIPT, &keys, &args, g.timeout)
                .await
                .and_then(|v| window_counts(v, hits.len()));
            match answer {
                Ok(counts) => {
                    for ((l, _), (count, left)) in hits.iter().zip(counts) {
                        if count > l.c.quota {
                            self.state.limited.inc();
                            return limited(&l.c, left, left, LimitedBy::Quota);
                        }
                        note(RateHeaders {
                            limit: l.c.quota,
                            remaining: l.c.quota - count,
                            reset: left,
                        });
                    }
                }
                Err(e) => {
                    self.state
                        .redis_failed(&g.policy, g.pool.address(), g.deny, &e);
                    if g.deny {
                        self.state.failed_closed.inc();
                        let retry = FAIL_CLOSED_RETRY.min(first.window);
                        return limited(&first.c, retry, retry, LimitedBy::RedisFailure);
                    }
                    failed_open = true;
                }
            }
        }

        if !applied {
            return Decision::Allow { headers: None };
        }
        if failed_open {
            self.state.failed_open.inc();
        } else {
            self.state.allowed.inc();
        }
        Decision::Allow { headers: tightest }
    }
}

fn limited(c: &Common, retry_after: Duration, reset: Duration, cause: LimitedBy) -> Decision {
    Decision::Limited {
        limit_name: c.name.clone(),
        policy: c.policy.clone(),
        retry_after,
        limit: c.quota,
        reset,
        cause,
    }
}

/// The script's answer: `n` pairs of (count in the window, ms to the window's end).
fn window_counts(v: Value, n: usize) -> Result<Vec<(u64, Duration)>, RedisError> {
    let bad = |v: &dyn std::fmt::Debug| RedisError::Unexpected(format!("script answered {v:?}"));
    let Value::Array(Some(items)) = v else {
        return Err(bad(&v));
    };
    if items.len() != 2 * n {
        return Err(bad(&items));
    }
    items
        .chunks(2)
        .map(|pair| match (pair[0].as_int(), pair[1].as_int()) {
            (Some(count), Some(left)) if count >= 0 && left >= 0 => Ok((
                count.unsigned_abs(),
                Duration::from_millis(left.unsigned_abs()),
            )),
            _ => Err(bad(&pair)),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use egret_config::types::Duration as CfgDuration;
    use egret_model::ratelimit::HeaderMatch;

    use super::*;

    fn rate(quota: u64, fill: Duration) -> Rate {
        Rate {
            quota,
            fill_ns: u64::try_from(fill.as_nanos()).unwrap(),
        }
    }

    #[test]
    fn bucket_starts_full_and_refills_by_elapsed_time() {
        let r = rate(10, Duration::from_secs(1));
        let t0 = Instant::now();
        let mut b = Bucket::full(r, t0);
        for i in (0..10).rev() {
            assert_eq!(
                b.take(r, t0),
                Take::Allowed {
                    remaining: i,
                    reset: Duration::from_millis(100 * (10 - i)),
                }
            );
        }
        // Empty: one token in 100ms; the bucket is full after a second.
        assert_eq!(
            b.take(r, t0),
            Take::Limited {
                retry_after: Duration::from_millis(100),
                reset: Duration::from_secs(1),
            }
        );
        // 30ms later: 70ms to go.
        assert_eq!(
            b.take(r, t0 + Duration::from_millis(30)),
            Take::Limited {
                retry_after: Duration::from_millis(70),
                reset: Duration::from_millis(970),
            }
        );
        // 250ms after t0: two tokens (2.5 refilled, integer tokens taken).
        let t = t0 + Duration::from_millis(250);
        assert!(matches!(b.take(r, t), Take::Allowed { remaining: 1, .. }));
        assert!(matches!(b.take(r, t), Take::Allowed { remaining: 0, .. }));
        assert!(matches!(b.take(r, t), Take::Limited { .. }));
        // Capacity is the quota: a long pause refills to 10, not more.
        let t = t0 + Duration::from_secs(3600);
        assert!(b.is_full(r, t));
        assert!(matches!(b.take(r, t), Take::Allowed { remaining: 9, .. }));
        // A clock going backwards takes nothing and adds nothing.
        assert!(matches!(b.take(r, t0), Take::Allowed { remaining: 8, .. }));
    }

    #[test]
    fn bucket_extremes_do_not_overflow() {
        let r = Rate {
            quota: u64::MAX,
            fill_ns: u64::MAX,
        };
        let t0 = Instant::now();
        let mut b = Bucket::full(r, t0);
        assert!(matches!(
            b.take(r, t0 + Duration::from_secs(1)),
            Take::Allowed { .. }
        ));
        let r = rate(1, Duration::from_millis(1));
        let mut b = Bucket::full(r, t0);
        assert!(matches!(b.take(r, t0), Take::Allowed { remaining: 0, .. }));
        assert!(matches!(b.take(r, t0), Take::Limited { .. }));
        assert!(matches!(
            b.take(r, t0 + Duration::from_millis(1)),
            Take::Allowed { .. }
        ));
    }

    #[test]
    fn descriptor_bound_evicts_full_buckets_then_overflows() {
        let r = rate(1, Duration::from_secs(1));
        // 16 shards of one bucket each.
        let l = LocalLimit::new(r, 16);
        let t0 = Instant::now();
        for i in 0..200 {
            let _ = l.take(&format!("d{i}"), t0);
        }
        assert!(l.descriptors() <= 16, "{}", l.descriptors());
        // The overflow bucket (quota 1) is shared by descriptors that found no room: all
        // but one of them are limited.
        let overflowed = (200..300)
            .filter(|i| matches!(l.take(&format!("d{i}"), t0), Take::Limited { .. }))
            .count();
        assert!(overflowed >= 99, "{overflowed}");
        // A second later every bucket is full again, so room is made for new descriptors.
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(l.take("fresh", t1), Take::Allowed { .. }));
        assert!(l.descriptors() <= 16);
    }

    fn spec(name: &str, scope: RateLimitScope, quota: u64, fill: CfgDuration) -> RateLimitSpec {
        RateLimitSpec {
            name: name.into(),
            scope,
            quota,
            fill_interval: fill,
            matches: LimitMatch::default(),
            by: Vec::new(),
        }
    }

    fn policy(name: &str, limits: Vec<RateLimitSpec>) -> RateLimitPolicySpec {
        RateLimitPolicySpec {
            name: name.into(),
            redis: None,
            limits,
        }
    }

    fn http<'a>(host: &'a str, path: &'a str, headers: &'a HeaderMap) -> Attrs<'a> {
        Attrs {
            host: Some(host),
            path: Some(path),
            method: Some("POST"),
            headers: Some(headers),
            principal: Some("cluster.local/ns/pay/sa/payments"),
            source_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            ..Attrs::connection(Protocol::Http, 443)
        }
    }

    #[test]
    fn http_only_fields_never_match_connections() {
        let headers: HeaderMap = [(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("acme"),
        )]
        .into_iter()
        .collect();
        let req = http("api.test", "/v1/charge/9", &headers);
        let tls = Attrs {
            sni: Some("API.test"),
            principal: Some("cluster.local/ns/pay/sa/payments"),
            ..Attrs::connection(Protocol::Tls, 443)
        };
        let tcp = Attrs::connection(Protocol::Tcp, 5432);

        let m = LimitMatch {
            hosts: vec!["api.test".into(), "*.pay.test".into()],
            ports: vec![443],
            principals: vec!["cluster.local/ns/pay/*".into()],
            ..Default::default()
        };
        assert!(limit_applies(&m, &req));
        assert!(limit_applies(&m, &tls), "hosts match the SNI (any case)");
        assert!(!limit_applies(&m, &tcp));

        let paths = LimitMatch {
            paths: vec!["/v1/charge*".into()],
            ..Default::default()
        };
        assert!(limit_applies(&paths, &req));
        assert!(!limit_applies(&paths, &tls), "paths are HTTP only");
        let methods = LimitMatch {
            methods: vec!["GET".into()],
            ..Default::default()
        };
        assert!(!limit_applies(&methods, &req));
        let hdr = |values: &[&str]| LimitMatch {
            headers: vec![HeaderMatch {
                name: "x-tenant".into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        };
        assert!(limit_applies(&hdr(&[]), &req));
        assert!(limit_applies(&hdr(&["*"]), &req));
        assert!(limit_applies(&hdr(&["other", "ac*"]), &req));
        assert!(!limit_applies(&hdr(&["other"]), &req));
        assert!(!limit_applies(&hdr(&[]), &tls));
        let none = HeaderMap::new();
        assert!(!limit_applies(&hdr(&[]), &http("api.test", "/", &none)));
        // Empty match: everything.
        assert!(limit_applies(&LimitMatch::default(), &tcp));
    }

    #[test]
    fn descriptors() {
        let headers: HeaderMap = [(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("a|b:{c}%"),
        )]
        .into_iter()
        .collect();
        let req = http("API.test", "/p", &headers);
        let by = [
            DescriptorKey::Principal,
            DescriptorKey::Host,
            DescriptorKey::Header("x-tenant".into()),
            DescriptorKey::Sni,
            DescriptorKey::SourceIp,
            DescriptorKey::Method,
            DescriptorKey::Path,
        ];
        assert_eq!(
            descriptor(&by, &req),
            "=cluster.local/ns/pay/sa/payments|=api.test|=a%7Cb%3A%7Bc%7D%25|~|=10.0.0.7|=POST|=/p"
        );
        assert_eq!(descriptor(&[], &req), "");
        // A connection: HTTP-only keys have no value; host falls back to the SNI.
        let tls = Attrs {
            sni: Some("x.test"),
            ..Attrs::connection(Protocol::Tls, 443)
        };
        assert_eq!(descriptor(&by, &tls), "~|=x.test|~|=x.test|~|~|~");
        // Long values are digested, the same way every time.
        let long = "/".repeat(1000);
        let a = http("h", &long, &headers);
        let d = descriptor(&[DescriptorKey::Path], &a);
        assert_eq!(d.len(), 33);
        assert!(d.starts_with('#'));
        assert_eq!(d, descriptor(&[DescriptorKey::Path], &a));
    }

    #[test]
    fn headers_format() {
        let d = Decision::Limited {
            limit_name: Arc::from("l"),
            policy: Arc::from("ns/p"),
            retry_after: Duration::from_millis(1),
            limit: 100,
            reset: Duration::from_millis(1500),
            cause: LimitedBy::Quota,
        };
        let h = d.response_headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "2");
        let a = Decision::Allow {
            headers: Some(RateHeaders {
                limit: 10,
                remaining: 7,
                reset: Duration::from_millis(300),
            }),
        };
        let h = a.response_headers();
        assert_eq!(h.len(), 3);
        assert_eq!(h["x-ratelimit-remaining"], "7");
        assert_eq!(h["x-ratelimit-reset"], "1");
        assert!(
            Decision::Allow { headers: None }
                .response_headers()
                .is_empty()
        );
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }

    #[tokio::test]
    async fn every_applying_limit_must_allow() {
        let state = Arc::new(RateLimitState::new());
        let mut by_principal = spec(
            "per-caller",
            RateLimitScope::Local,
            2,
            CfgDuration::from_secs(60),
        );
        by_principal.by = vec![DescriptorKey::Principal];
        let mut posts = spec(
            "posts",
            RateLimitScope::Local,
            3,
            CfgDuration::from_secs(60),
        );
        posts.matches.methods = vec!["POST".into()];
        let rl = RateLimiter::new(&[policy("ns/p", vec![by_principal, posts])], &state);
        let none = HeaderMap::new();
        let a = http("api.test", "/", &none);
        let b = Attrs {
            principal: Some("cluster.local/ns/x/sa/y"),
            ..a
        };
        // Per caller: a gets 2, then is limited; b has its own bucket, but the shared
        // "posts" limit (3) runs out on b's second request.
        assert!(rl.check(&a).await.is_allowed());
        match rl.check(&a).await {
            Decision::Allow { headers: Some(h) } => {
                assert_eq!(
                    (h.limit, h.remaining),
                    (2, 0),
                    "the tightest limit is reported"
                )
            }
            d => panic!("{d:?}"),
        }
        match rl.check(&a).await {
            Decision::Limited {
                limit_name,
                policy,
                limit,
                cause,
                ..
            } => {
                assert_eq!((&*limit_name, &*policy, limit), ("per-caller", "ns/p", 2));
                assert_eq!(cause, LimitedBy::Quota);
            }
            d => panic!("{d:?}"),
        }
        assert!(rl.check(&b).await.is_allowed());
        match rl.check(&b).await {
            Decision::Limited { limit_name, .. } => assert_eq!(&*limit_name, "posts"),
            d => panic!("{d:?}"),
        }
        // A TCP connection: "posts" (methods) does not apply; per-caller has a bucket for
        // "no principal".
        let tcp = Attrs::connection(Protocol::Tcp, 5432);
        assert!(rl.check(&tcp).await.is_allowed());
        assert_eq!(rl.local_descriptors("ns/p", "per-caller"), Some(3));
        assert_eq!(state.allowed(), 4);
        assert_eq!(state.limited(), 2);
    }

    #[tokio::test]
    async fn reload_keeps_unchanged_buckets() {
        let state = Arc::new(RateLimitState::new());
        let l = spec("l", RateLimitScope::Local, 1, CfgDuration::from_secs(60));
        let a = Attrs::connection(Protocol::Tcp, 1);
        let old = RateLimiter::new(&[policy("ns/p", vec![l.clone()])], &state);
        assert!(old.check(&a).await.is_allowed());
        assert!(!old.check(&a).await.is_allowed());
        // The same limit in a new snapshot: still empty.
        let new = RateLimiter::new(&[policy("ns/p", vec![l.clone()])], &state);
        drop(old);
        assert!(!new.check(&a).await.is_allowed());
        // A changed quota is a new limit.
        let mut l2 = l.clone();
        l2.quota = 2;
        let changed = RateLimiter::new(&[policy("ns/p", vec![l2])], &state);
        drop(new);
        assert!(changed.check(&a).await.is_allowed());
        // Limits no limiter holds are dropped from the state.
        let _empty = RateLimiter::new(&[], &state);
        drop(changed);
        let _again = RateLimiter::new(&[], &state);
        assert!(lock(&state.local).is_empty());
    }

    #[tokio::test]
    async fn no_limits_no_counting() {
        let state = Arc::new(RateLimitState::new());
        let rl = RateLimiter::new(&[], &state);
        assert!(rl.is_empty());
        let d = rl.check(&Attrs::connection(Protocol::Tcp, 1)).await;
        assert_eq!(d, Decision::Allow { headers: None });
        let mut l = spec("l", RateLimitScope::Local, 1, CfgDuration::from_secs(1));
        l.matches.ports = vec![443];
        let rl = RateLimiter::new(&[policy("ns/p", vec![l])], &state);
        let d = rl.check(&Attrs::connection(Protocol::Tcp, 80)).await;
        assert_eq!(d, Decision::Allow { headers: None });
        assert_eq!(state.allowed() + state.limited(), 0);
    }

    #[test]
    fn script_answers() {
        let ok = Value::Array(Some(vec![Value::Int(3), Value::Int(250)]));
        assert_eq!(
            window_counts(ok, 1).unwrap(),
            [(3, Duration::from_millis(250))]
        );
        assert!(window_counts(Value::Array(Some(vec![Value::Int(3)])), 1).is_err());
        assert!(window_counts(Value::Int(1), 1).is_err());
        let neg = Value::Array(Some(vec![Value::Int(-1), Value::Int(1)]));
        assert!(window_counts(neg, 1).is_err());
    }

    #[test]
    fn metrics_are_registered() {
        let state = RateLimitState::new();
        state.failed_open.inc();
        let mut reg = Registry::with_prefix("egret");
        state.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "egret_ratelimit_decisions_total{decision=\"allowed\"} 0",
            "egret_ratelimit_decisions_total{decision=\"limited\"} 0",
            "egret_ratelimit_decisions_total{decision=\"failed_open\"} 1",
            "egret_ratelimit_decisions_total{decision=\"failed_closed\"} 0",
            "egret_ratelimit_redis_errors_total 0",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }

    #[test]
    fn log_gate_passes_once_a_second() {
        let g = LogGate::new();
        assert_eq!(g.pass(), Some(0));
        assert_eq!(g.pass(), None);
        assert_eq!(g.pass(), None);
        g.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(g.pass(), Some(2));
    }
}
