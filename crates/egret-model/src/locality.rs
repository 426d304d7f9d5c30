//! Locality load balancing (`localityLbSetting`, `istio-egress-spec.md` §2): endpoint
//! priorities for failover and locality weights for `distribute`, computed at compile time
//! from the endpoints' `locality`/`labels` and the proxy's own locality.
//!
//! Istio's `ApplyLocalityLoadBalancer`: `distribute` (weights, no failover) or
//! `failoverPriority` (label keys, optionally with `failover`) or region `failover`.
//! Failover needs `outlierDetection`, otherwise nothing would ever move traffic to a lower
//! priority; without it every endpoint stays at priority 0.
//!
//! The proxy's locality is its `istio-locality` label (`region/zone/subzone`, or Istio's
//! dotted label form `region.zone.subzone`), which `--locality` sets; the Kubernetes topology
//! labels `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
//! `topology.istio.io/subzone` are used when it is absent.

use std::collections::BTreeMap;

use egret_config::types::LocalityLbSetting;

use crate::snapshot::Endpoint;

/// The label carrying a proxy's locality.
pub const LOCALITY_LABEL: &str = "istio-locality";
const REGION: &str = "topology.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";
const SUBZONE: &str = "topology.istio.io/subzone";

/// `region/zone/subzone`, missing parts empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(s: &str) -> Locality {
        let sep = if s.contains('/') { '/' } else { '.' };
        let mut it = s.split(sep).map(str::trim);
        Locality {
            region: it.next().unwrap_or("").to_string(),
            zone: it.next().unwrap_or("").to_string(),
            subzone: it.next().unwrap_or("").to_string(),
        }
    }

    /// The proxy's locality from its labels.
    pub fn of_proxy(labels: &BTreeMap<String, String>) -> Option<Locality> {
        if let Some(l) = labels.get(LOCALITY_LABEL) {
            return Some(Locality::parse(l));
        }
        let region = labels.get(REGION)?;
        Some(Locality {
            region: region.clone(),
            zone: labels.get(ZONE).cloned().unwrap_or_default(),
            subzone: labels.get(SUBZONE).cloned().unwrap_or_default(),
        })
    }

    fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Istio's `LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere.
    fn priority_to(&self, ep: &Locality) -> u32 {
        if self.region != ep.region {
            3
        } else if self.zone != ep.zone {
            2
        } else if self.subzone != ep.subzone {
            1
        } else {
            0
        }
    }

    /// Does `pattern` (`region/zone/subzone`, `*` as a trailing wildcard part) match?
    fn matches(&self, pattern: &str) -> bool {
        let parts = [&self.region, &self.zone, &self.subzone];
        for (i, p) in pattern.split('/').enumerate() {
            if p == "*" {
                return true;
            }
            match parts.get(i) {
                Some(v) if *v == p => {}
                _ => return false,
            }
        }
        true
    }

    /// A topology label's value, derived from the locality.
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            REGION => Some(&self.region),
            ZONE => Some(&self.zone),
            SUBZONE => Some(&self.subzone),
            _ => None,
        }
    }
}

/// Set `priority` and `lb_weight` on a cluster's endpoints.
pub fn apply(
    endpoints: &mut [Endpoint],
    setting: Option<&LocalityLbSetting>,
    outlier_detection: bool,
    proxy_labels: &BTreeMap<String, String>,
) {
    let Some(s) = setting else { return };
    if s.enabled == Some(false) || endpoints.is_empty() {
        return;
    }
    let proxy = Locality::of_proxy(proxy_labels);
    let ep_loc = |e: &Endpoint| Locality::parse(e.locality.as_deref().unwrap_or(""));
    if !s.distribute.is_empty() {
        if let Some(p) = &proxy {
            distribute(endpoints, s, p);
        }
        return;
    }
    // Failover only moves traffic when outlier detection marks endpoints unhealthy.
    if !outlier_detection {
        return;
    }
    let region_priority = |e: &Endpoint| -> u32 {
        let Some(p) = proxy.as_ref().filter(|p| !p.is_empty()) else {
            return 0;
        };
        let el = ep_loc(e);
        let mut prio = p.priority_to(&el);
        if prio == 3 {
            // Explicit `failover`: the named region is priority 3, other regions 4.
            if let Some(f) = s
                .failover
                .iter()
                .find(|f| f.from.as_deref() == Some(p.region.as_str()))
                && f.to.as_deref() != Some(el.region.as_str())
            {
                prio = 4;
            }
        }
        prio
    };
    let label_priority = |e: &Endpoint| -> u32 {
        let n = s.failover_priority.len() as u32;
        let el = ep_loc(e);
        let mut matched = 0;
        for key in &s.failover_priority {
            let (k, want) = match key.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (
                    key.as_str(),
                    proxy_labels.get(key).cloned().or_else(|| {
                        proxy
                            .as_ref()
                            .and_then(|p| p.label(key))
                            .map(str::to_string)
                    }),
                ),
            };
            let have = e.labels.get(k).map(String::as_str).or_else(|| el.label(k));
            match (want, have) {
                (Some(w), Some(h)) if w == h => matched += 1,
                _ => break,
            }
        }
        n - matched
    };
    let keys: Vec<(u32, u32)> = endpoints
        .iter()
        .map(|e| {
            if s.failover_priority.is_empty() {
                (region_priority(e), 0)
            } else if s.failover.is_empty() {
                (0, label_priority(e))
            } else {
                (region_priority(e), label_priority(e))
            }
        })
        .collect();
    // Priorities must be consecutive: compact the distinct keys in order.
    let mut distinct = keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    for (e, k) in endpoints.iter_mut().zip(&keys) {
        e.priority = distinct.iter().position(|d| d == k).unwrap_or(0) as u32;
    }
}

/// `distribute`: for a proxy in `from`, each `to` locality gets its share of the traffic,
/// split evenly over the localities the key matches and by `weight` within a locality;
/// localities no key matches get nothing (Istio's `applyLocalityWeights`).
fn distribute(endpoints: &mut [Endpoint], s: &LocalityLbSetting, proxy: &Locality) {
    let Some(rule) = s
        .distribute
        .iter()
        .find(|d| d.from.as_deref().is_some_and(|f| proxy.matches(f)))
    else {
        return;
    };
    let locs: Vec<Locality> = endpoints
        .iter()
        .map(|e| Locality::parse(e.locality.as_deref().unwrap_or("")))
        .collect();
    // Distinct localities, and which `to` key each matches first.
    let mut distinct: Vec<&Locality> = Vec::new();
    for l in &locs {
        if !distinct.contains(&l) {
            distinct.push(l);
        }
    }
    let key_of = |l: &Locality| rule.to.iter().find(|(k, _)| l.matches(k)).map(|(k, _)| k);
    // Weight units: the percentage times 1000, so integer division stays precise.
    const SCALE: u64 = 1000;
    // Localities no `to` key matches get no traffic.
    for e in endpoints.iter_mut() {
        e.lb_weight = Some(0);
    }
    for (i, l) in locs.iter().enumerate() {
        let Some(key) = key_of(l) else { continue };
        let share = u64::from(rule.to.get(key).copied().unwrap_or(0));
        let sharing = distinct
            .iter()
            .filter(|d| key_of(d) == Some(key))
            .count()
            .max(1) as u64;
        let in_locality: u64 = locs
            .iter()
            .zip(endpoints.iter())
            .filter(|(ll, _)| *ll == l)
            .map(|(_, e)| u64::from(e.weight.max(1)))
            .sum();
        let w =
            share * SCALE * u64::from(endpoints[i].weight.max(1)) / (sharing * in_locality.max(1));
        endpoints[i].lb_weight = Some(u32::try_from(w).unwrap_or(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ep(loc: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: "203.0.113.1".into(),
            port: 80,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            locality: Some(loc.into()),
            weight: 1,
            service_account: None,
            priority: 0,
            lb_weight: None,
        }
    }

    fn proxy(loc: &str) -> BTreeMap<String, String> {
        [(LOCALITY_LABEL.to_string(), loc.to_string())].into()
    }

    #[test]
    fn region_failover_priorities() {
        let mut eps = vec![
            ep("us-east/a/x", &[]),
            ep("us-east/b", &[]),
            ep("us-west/a", &[]),
            ep("eu/a", &[]),
        ];
        let s = LocalityLbSetting {
            failover: vec![egret_config::types::LocalityFailover {
                from: Some("us-east".into()),
                to: Some("us-west".into()),
            }],
            ..Default::default()
        };
        apply(&mut eps, Some(&s), true, &proxy("us-east.a.x"));
        let p: Vec<u32> = eps.iter().map(|e| e.priority).collect();
        // 0 same subzone, 2 same region (compacted to 1), 3 failover region (2), 4 other (3).
        assert_eq!(p, vec![0, 1, 2, 3]);
        // Without outlier detection there is no failover.
        let mut eps2 = vec![ep("us-east/a/x", &[]), ep("us-west/a", &[])];
        apply(&mut eps2, Some(&s), false, &proxy("us-east/a/x"));
        assert!(eps2.iter().all(|e| e.priority == 0));
    }

    #[test]
    fn failover_priority_labels() {
        let mut eps = vec![
            ep("", &[("tier", "primary"), ("dc", "1")]),
            ep("", &[("tier", "primary"), ("dc", "2")]),
            ep("", &[("tier", "backup")]),
        ];
        let s = LocalityLbSetting {
            failover_priority: vec!["tier=primary".into(), "dc".into()],
            ..Default::default()
        };
        let labels: BTreeMap<String, String> = [("dc".to_string(), "1".to_string())].into();
        apply(&mut eps, Some(&s), true, &labels);
        let p: Vec<u32> = eps.iter().map(|e| e.priority).collect();
        assert_eq!(p, vec![0, 1, 2]);
    }

    #[test]
    fn distribute_weights() {
        let mut eps = vec![
            ep("us-east/a", &[]),
            ep("us-east/a", &[]),
            ep("us-west/a", &[]),
            ep("eu/a", &[]),
        ];
        let s = LocalityLbSetting {
            distribute: vec![egret_config::types::LocalityDistribute {
                from: Some("us-east/*".into()),
                to: [("us-east/*".to_string(), 80), ("us-west/*".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        apply(&mut eps, Some(&s), false, &proxy("us-east/a"));
        let w: Vec<Option<u32>> = eps.iter().map(|e| e.lb_weight).collect();
        assert_eq!(w, vec![Some(40_000), Some(40_000), Some(20_000), Some(0)]);
    }
}
