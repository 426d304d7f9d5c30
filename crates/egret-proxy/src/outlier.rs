//! Outlier detection (DestinationRule `outlierDetection`, Envoy's consecutive-error
//! detectors): per-endpoint counters in atomics, ejection for `baseEjectionTime` × the number
//! of times the endpoint has been ejected, bounded by `maxEjectionPercent` (at least one
//! endpoint may always be ejected, as in Envoy), and `minHealthPercent` (Envoy's panic
//! threshold: below it health is ignored).
//!
//! Counting follows Envoy with `splitExternalLocalOriginErrors: false` (Istio's default):
//! connect failures, resets and timeouts count as gateway errors (and 5xx); with the split,
//! they count only towards `consecutiveLocalOriginFailures`. Any other answer resets the
//! counters. For TCP, connect failures count (Istio: `consecutive5xxErrors` for TCP).
//!
//! Ejections take effect at once; an ejected endpoint is re-admitted lazily when its time has
//! passed (Envoy re-admits at the next `interval` sweep, so at most one interval later). The
//! ejection multiplier decays by one per `interval` spent un-ejected, as Envoy's does.
//! State lives per snapshot: a configuration reload starts every endpoint healthy.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use egret_model::snapshot::OutlierDetection;

/// What one attempt towards an endpoint ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    /// An HTTP answer with this status.
    Status(u16),
    /// Connect failure, reset or timeout: a locally originated failure.
    LocalFailure,
    /// A TCP connection was established.
    Connected,
}

#[derive(Default)]
struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected (0: never ejected).
    ejected_until: AtomicU64,
    /// The ejection multiplier (times ejected, decayed).
    ejections: AtomicU32,
}

/// Per-cluster health of its endpoints.
pub struct Health {
    od: OutlierDetection,
    endpoints: Box<[EndpointHealth]>,
    /// Serializes ejection decisions (rare): never held across an `.await`.
    decide: Mutex<()>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's health epoch (never 0, so 0 can mean "never").
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl Health {
    pub fn new(od: &OutlierDetection, endpoints: usize) -> Health {
        Health {
            od: od.clone(),
            endpoints: (0..endpoints).map(|_| EndpointHealth::default()).collect(),
            decide: Mutex::new(()),
        }
    }

    /// Is endpoint `i` ejected now?
    pub fn is_ejected(&self, i: usize, now: u64) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| e.ejected_until.load(Ordering::Relaxed) > now)
    }

    /// `minHealthPercent`: with fewer healthy endpoints than this share, health is ignored
    /// and all endpoints are used (Envoy's panic mode).
    pub fn panic(&self, now: u64) -> bool {
        let n = self.endpoints.len();
        if n == 0 || self.od.min_health_percent == 0 {
            return false;
        }
        let healthy = (0..n).filter(|i| !self.is_ejected(*i, now)).count();
        healthy * 100 < self.od.min_health_percent as usize * n
    }

    /// Endpoints ejected now.
    pub fn ejected_count(&self, now: u64) -> usize {
        (0..self.endpoints.len())
            .filter(|i| self.is_ejected(*i, now))
            .count()
    }

    /// Record an attempt's result on endpoint `i`. Returns true when this ejected it.
    pub fn record(&self, i: usize, r: Result) -> bool {
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        let od = &self.od;
        let bump =
            |c: &AtomicU32, limit: u32| limit > 0 && c.fetch_add(1, Ordering::Relaxed) + 1 >= limit;
        let reset = |c: &AtomicU32| {
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        };
        let is_error = |s: u16| {
            if od.http_error_codes.is_empty() {
                s >= 500
            } else {
                od.http_error_codes.contains(&s)
            }
        };
        let trip = match r {
            Result::Status(s) if is_error(s) || matches!(s, 502..=504) => {
                reset(&e.consecutive_local);
                let gw = matches!(s, 502..=504);
                let a = if is_error(s) {
                    bump(&e.consecutive_5xx, od.consecutive_5xx_errors)
                } else {
                    reset(&e.consecutive_5xx);
                    false
                };
                let b = if gw {
                    bump(&e.consecutive_gateway, od.consecutive_gateway_errors)
                } else {
                    reset(&e.consecutive_gateway);
                    false
                };
                a || b
            }
            Result::Status(_) | Result::Connected => {
                reset(&e.consecutive_5xx);
                reset(&e.consecutive_gateway);
                reset(&e.consecutive_local);
                false
            }
            Result::LocalFailure => {
                if od.split_external_local_origin_errors {
                    bump(&e.consecutive_local, od.consecutive_local_origin_failures)
                } else {
                    // Counted as a 503 from the upstream (Envoy, non-split mode).
                    let a = bump(&e.consecutive_5xx, od.consecutive_5xx_errors);
                    let b = bump(&e.consecutive_gateway, od.consecutive_gateway_errors);
                    a || b
                }
            }
        };
        if trip { self.eject(i) } else { false }
    }

    fn eject(&self, i: usize) -> bool {
        let Ok(_g) = self.decide.lock() else {
            return false;
        };
        let now = now_ms();
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        if self.is_ejected(i, now) {
            return false;
        }
        let n = self.endpoints.len();
        let ejected = self.ejected_count(now);
        // `maxEjectionPercent`, but at least one endpoint can always be ejected (Envoy).
        if ejected > 0 && (ejected + 1) * 100 > self.od.max_ejection_percent as usize * n {
            return false;
        }
        let interval = self.od.interval.to_std().as_millis().max(1) as u64;
        let base = self.od.base_ejection_time.to_std().as_millis() as u64;
        // The multiplier decays by one per interval the endpoint spent healthy.
        let last_end = e.ejected_until.load(Ordering::Relaxed);
        let mut mult = e.ejections.load(Ordering::Relaxed);
        if last_end > 0 {
            let decay = (now.saturating_sub(last_end) / interval) as u32;
            mult = mult.saturating_sub(decay);
        }
        mult = mult.saturating_add(1);
        e.ejections.store(mult, Ordering::Relaxed);
        // Envoy caps the ejection time at `max_ejection_time` (300 s by default) or the base
        // time, whichever is larger.
        let cap = base.max(300_000);
        let time = base.saturating_mul(u64::from(mult)).min(cap);
        e.ejected_until.store(now + time.max(1), Ordering::Relaxed);
        for c in [
            &e.consecutive_5xx,
            &e.consecutive_gateway,
            &e.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use egret_config::types::Duration;

    fn od(c5xx: u32, max_pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: c5xx,
            consecutive_gateway_errors: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failures: 5,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: max_pct,
            min_health_percent: 0,
            http_error_codes: Vec::new(),
        }
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let h = Health::new(&od(3, 100), 3);
        assert!(!h.record(0, Result::Status(503)));
        assert!(!h.record(0, Result::Status(500)));
        assert!(!h.record(0, Result::Status(200)));
        assert!(!h.record(0, Result::Status(503)));
        assert!(!h.record(0, Result::LocalFailure));
        assert!(h.record(0, Result::Status(502)));
        assert!(h.is_ejected(0, now_ms()));
        assert!(!h.is_ejected(1, now_ms()));
    }

    #[test]
    fn max_ejection_percent_bounds_ejections_but_one_is_always_allowed() {
        let h = Health::new(&od(1, 10), 3);
        assert!(h.record(0, Result::Status(503)));
        assert!(!h.record(1, Result::Status(503)));
        assert_eq!(h.ejected_count(now_ms()), 1);
        let h = Health::new(&od(1, 100), 3);
        for i in 0..3 {
            assert!(h.record(i, Result::LocalFailure));
        }
        assert_eq!(h.ejected_count(now_ms()), 3);
    }

    #[test]
    fn min_health_percent_is_panic_mode() {
        let mut o = od(1, 100);
        o.min_health_percent = 50;
        let h = Health::new(&o, 2);
        assert!(!h.panic(now_ms()));
        h.record(0, Result::Status(503));
        assert!(!h.panic(now_ms()));
        h.record(1, Result::Status(503));
        assert!(h.panic(now_ms()));
    }

    #[test]
    fn http_error_codes_replace_5xx() {
        let mut o = od(2, 100);
        o.http_error_codes = vec![429, 503];
        let h = Health::new(&o, 1);
        assert!(!h.record(0, Result::Status(500)));
        assert!(!h.record(0, Result::Status(429)));
        assert!(
            !h.record(0, Result::Status(500)),
            "500 is not an error here: resets"
        );
        assert!(!h.record(0, Result::Status(429)));
        assert!(h.record(0, Result::Status(503)));
    }

    #[test]
    fn split_local_origin_counts_separately() {
        let mut o = od(1, 100);
        o.split_external_local_origin_errors = true;
        o.consecutive_local_origin_failures = 2;
        let h = Health::new(&o, 1);
        assert!(!h.record(0, Result::LocalFailure));
        assert!(h.record(0, Result::LocalFailure));
    }
}
