//! GLOBAL rate limits against a real redis-server: two gateway replicas (two `RateLimiter`s
//! with their own `RateLimitState`) share one quota; Redis going away makes decisions follow
//! the policy's fail mode, counted; Redis coming back restores normal limiting without
//! rebuilding anything.
//!
//! redis-server must be installed (scripts/test installs it): these tests fail, never skip,
//! without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use egret_config::ConfigSet;
use egret_model::ProxyIdentity;
use egret_proxy::policy::ratelimit::{
    Decision, LimitedBy, RateLimitPolicySpec, RateLimitState, RateLimiter,
};
use egret_proxy::policy::{Attrs, Protocol};
use egret_testkit::redis::Redis;

fn start_redis() -> Redis {
    Redis::start()
        .expect("redis-server must be installed and start (apt-get install -y redis-server)")
}

/// Compile RateLimitPolicy YAML for an egress gateway, as a proxy would receive it.
fn policies(yaml: &str) -> Vec<RateLimitPolicySpec> {
    let (set, load) = ConfigSet::from_str("rl.yaml", yaml);
    assert!(!load.has_errors(), "{load:?}");
    let gw = ProxyIdentity::gateway("istio-system", &[("istio", "egressgateway")]);
    let (snap, diags) = egret_model::compile(&set, &gw);
    assert!(!diags.has_errors(), "{diags:?}");
    assert!(!snap.rate_limits.is_empty());
    snap.rate_limits
}

fn global_policy(addr: &str, name: &str, quota: u64, fill: &str, deny: bool, by: &str) -> String {
    format!(
        r#"apiVersion: egret.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: {name}, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  redis: {{address: "{addr}", timeout: 200ms, failureModeDeny: {deny}}}
  limits:
  - name: shared
    scope: GLOBAL
    quota: {quota}
    fillInterval: {fill}
    match: {{hosts: ["*.pay.test"]}}
    by: [{by}]
"#
    )
}

fn request(principal: &str) -> Attrs<'_> {
    Attrs {
        host: Some("api.pay.test"),
        method: Some("POST"),
        path: Some("/v1/charge"),
        principal: Some(principal),
        ..Attrs::connection(Protocol::Http, 443)
    }
}

/// Sleep until just after the next whole second of the wall clock (which Redis's TIME shares
/// on this machine), so the test's seconds are Redis's windows. Returns that second.
async fn next_second_boundary() -> SystemTime {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap();
    let boundary = UNIX_EPOCH + Duration::from_secs(since.as_secs() + 1);
    let wait = boundary.duration_since(now).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(2)).await;
    boundary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_global_quota() {
    let redis = start_redis();
    const QUOTA: u64 = 300;
    const SECONDS: u64 = 3;
    let specs = policies(&global_policy(
        &redis.address(),
        "card",
        QUOTA,
        "1s",
        false,
        "",
    ));
    let replicas: Vec<(Arc<RateLimitState>, Arc<RateLimiter>)> = (0..2)
        .map(|_| {
            let state = Arc::new(RateLimitState::new());
            let rl = Arc::new(RateLimiter::new(&specs, &state));
            (state, rl)
        })
        .collect();

    // Warm up the pools (connect, SCRIPT LOAD) outside the measured seconds, on another key.
    let warm = policies(&global_policy(
        &redis.address(),
        "warm",
        1_000_000,
        "1s",
        false,
        "",
    ));
    for (state, _) in &replicas {
        let w = RateLimiter::new(&warm, state);
        assert!(
            w.check(&request("cluster.local/ns/pay/sa/a"))
                .await
                .is_allowed()
        );
    }
    let warm_allowed: u64 = replicas.iter().map(|(s, _)| s.allowed()).sum();

    // Hammer through SECONDS whole windows, stopping a little before the last one ends: the
    // quota of each window is used up within milliseconds, so stopping early loses nothing,
    // while a request still in flight at the boundary would count against the next window
    // (the tokio timer wakes a few ms late, so an Instant-based end would overshoot into it).
    let start = next_second_boundary().await;
    let end = start + Duration::from_secs(SECONDS) - Duration::from_millis(20);
    let allowed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (_, rl) in &replicas {
        for _ in 0..8 {
            let rl = rl.clone();
            let allowed = allowed.clone();
            let limited = limited.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = 0u64;
                while SystemTime::now() < end {
                    match rl.check(&request("cluster.local/ns/pay/sa/payments")).await {
                        Decision::Allow { headers } => {
                            let h = headers.expect("a limit applied");
                            assert_eq!(h.limit, QUOTA);
                            assert!(h.reset <= Duration::from_secs(1));
                            allowed.fetch_add(1, Ordering::Relaxed);
                            mine += 1;
                        }
                        Decision::Limited {
                            cause,
                            retry_after,
                            limit,
                            ..
                        } => {
                            assert_eq!(cause, LimitedBy::Quota);
                            assert_eq!(limit, QUOTA);
                            assert!(retry_after <= Duration::from_secs(1));
                            limited.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                mine
            }));
        }
    }
    let mut per_task = Vec::new();
    for t in tasks {
        per_task.push(t.await.unwrap());
    }
    let allowed = allowed.load(Ordering::Relaxed);
    let limited = limited.load(Ordering::Relaxed);
    let expected = QUOTA * SECONDS;
    let tolerance = expected / 20;
    eprintln!("allowed {allowed} of {expected} (±{tolerance}), limited {limited}");
    assert!(
        allowed.abs_diff(expected) <= tolerance,
        "allowed {allowed}, expected {expected} ± {tolerance} (limited {limited})"
    );
    assert!(
        limited > allowed,
        "the replicas must have been hammered well past the quota (limited {limited})"
    );
    let replica0: u64 = per_task[..8].iter().sum();
    let replica1: u64 = per_task[8..].iter().sum();
    assert!(
        replica0 > 0 && replica1 > 0,
        "both replicas share the quota ({replica0} + {replica1})"
    );
    // The counters say the same, and Redis never failed.
    let counted: u64 = replicas.iter().map(|(s, _)| s.allowed()).sum::<u64>() - warm_allowed;
    assert_eq!(counted, allowed);
    assert_eq!(
        replicas.iter().map(|(s, _)| s.limited()).sum::<u64>(),
        limited
    );
    for (s, _) in &replicas {
        assert_eq!(s.redis_errors(), 0);
        assert_eq!(s.failed_open() + s.failed_closed(), 0);
    }
    drop(redis);
}

/// `by: [principal]`: each caller has its own global bucket; the Redis keys are named as
/// documented and expire with their window.
#[tokio::test]
async fn descriptors_are_separate_global_buckets() {
    let redis = start_redis();
    let specs = policies(&global_policy(
        &redis.address(),
        "per-caller",
        3,
        "60s",
        false,
        "principal",
    ));
    let state = Arc::new(RateLimitState::new());
    let rl = RateLimiter::new(&specs, &state);
    let a = request("cluster.local/ns/pay/sa/a");
    let b = request("cluster.local/ns/pay/sa/b");
    for i in 0..3 {
        match rl.check(&a).await {
            Decision::Allow { headers: Some(h) } => assert_eq!(h.remaining, 2 - i),
            d => panic!("{d:?}"),
        }
    }
    let d = rl.check(&a).await;
    assert!(
        matches!(
            d,
            Decision::Limited {
                cause: LimitedBy::Quota,
                ..
            }
        ),
        "{d:?}"
    );
    let h = d.response_headers();
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(rl.check(&b).await.is_allowed(), "b has its own bucket");

    let keys = redis.command(&["KEYS", "egret:rl:*"]).unwrap();
    assert!(
        keys.contains("egret:rl:istio-system/per-caller:shared:=cluster.local/ns/pay/sa/a:"),
        "{keys}"
    );
    let key = keys
        .lines()
        .find(|l| l.contains("sa/a:"))
        .unwrap()
        .to_string();
    let ttl = redis.command(&["PTTL", &key]).unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");

    // The server forgets the script: EVAL takes over for one call, and no decision fails.
    assert!(
        redis
            .command(&["SCRIPT", "FLUSH"])
            .unwrap()
            .starts_with("+OK")
    );
    assert!(rl.check(&b).await.is_allowed());
    assert!(rl.check(&b).await.is_allowed());
    assert_eq!(state.redis_errors(), 0);
}

#[tokio::test]
async fn redis_outage_follows_fail_mode_and_recovers() {
    let mut redis = start_redis();
    let addr = redis.address();
    let open_state = Arc::new(RateLimitState::new());
    let open = RateLimiter::new(
        &policies(&global_policy(&addr, "open", 5, "60s", false, "")),
        &open_state,
    );
    let closed_state = Arc::new(RateLimitState::new());
    let closed = RateLimiter::new(
        &policies(&global_policy(&addr, "closed", 5, "60s", true, "")),
        &closed_state,
    );
    let a = request("cluster.local/ns/pay/sa/payments");
    assert!(open.check(&a).await.is_allowed());
    assert!(closed.check(&a).await.is_allowed());
    assert_eq!((open_state.allowed(), closed_state.allowed()), (1, 1));

    redis.stop();

    // Fail open: allowed, counted as failed_open (not allowed) and as a Redis error.
    let t = Instant::now();
    for _ in 0..3 {
        assert_eq!(open.check(&a).await, Decision::Allow { headers: None });
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(open_state.failed_open(), 3);
    assert_eq!(open_state.redis_errors(), 3);
    assert_eq!(open_state.allowed(), 1);

    // Fail closed: refused with retry-after 1s, counted as failed_closed.
    for _ in 0..3 {
        match closed.check(&a).await {
            d @ Decision::Limited { .. } => {
                let Decision::Limited {
                    cause,
                    retry_after,
                    ref limit_name,
                    ref policy,
                    ..
                } = d
                else {
                    unreachable!()
                };
                assert_eq!(cause, LimitedBy::RedisFailure);
                assert_eq!(retry_after, Duration::from_secs(1));
                assert_eq!(
                    (&**limit_name, &**policy),
                    ("shared", "istio-system/closed")
                );
                assert_eq!(d.response_headers()["retry-after"], "1");
            }
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(closed_state.failed_closed(), 3);
    assert_eq!(closed_state.redis_errors(), 3);
    assert_eq!(closed_state.limited(), 0);

    // Back: the same limiters reconnect by themselves (after the short connect back-off).
    redis.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if closed.check(&a).await.is_allowed() {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", redis.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Redis restarted empty: the closed policy's window counts from 1 again; 5 allowed in all.
    let mut allowed = 1;
    loop {
        match closed.check(&a).await {
            Decision::Allow { .. } => allowed += 1,
            Decision::Limited { cause, .. } => {
                assert_eq!(cause, LimitedBy::Quota);
                break;
            }
        }
        assert!(allowed <= 5);
    }
    assert_eq!(allowed, 5);
    let errors = open_state.redis_errors();
    match open.check(&a).await {
        Decision::Allow { headers: Some(h) } => assert_eq!(h.remaining, 4),
        d => panic!("{d:?}"),
    }
    assert_eq!(
        open_state.redis_errors(),
        errors,
        "no error once Redis is back"
    );
}

/// Redis accepts connections but never answers in time: each decision waits at most the
/// policy's timeout.
#[tokio::test]
async fn slow_redis_is_bounded_by_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let yaml = global_policy(&addr, "slow", 5, "1s", true, "").replace("200ms", "30ms");
    let state = Arc::new(RateLimitState::new());
    let rl = RateLimiter::new(&policies(&yaml), &state);
    let t = Instant::now();
    let d = rl.check(&request("cluster.local/ns/pay/sa/payments")).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        matches!(
            d,
            Decision::Limited {
                cause: LimitedBy::RedisFailure,
                ..
            }
        ),
        "{d:?}"
    );
    assert_eq!(state.failed_closed(), 1);
    hold.abort();
}
