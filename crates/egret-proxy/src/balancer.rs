//! Endpoint choice for a cluster with static endpoints: priorities (locality failover),
//! outlier ejections, endpoint weights, and the DestinationRule load balancer (ROUND_ROBIN,
//! RANDOM, LEAST_REQUEST, or `consistentHash` over a ring-hash or Maglev table built once per
//! snapshot).
//!
//! Priorities follow Envoy: each priority level takes `min(100, 1.4 × healthy share)` percent
//! of the traffic, the rest spills to the next level (overprovisioning factor 1.4); when the
//! levels' health adds up to less than 100 the loads are scaled up to 100. So a host with
//! primary and backup endpoints sends everything to the primaries while enough of them are
//! healthy, and moves to the backups as outlier detection ejects primaries.

use std::sync::atomic::Ordering;

use egret_config::types::SimpleLb;
use egret_model::snapshot::{Cluster, ConsistentHash, LoadBalancer};

use crate::config::ClusterRuntime;

/// Per-request inputs to the choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickCtx {
    /// The consistent-hash key's hash, when the cluster hashes and the request has the key.
    pub hash: Option<u64>,
    /// Endpoints already tried by this request (bit i = endpoint i; Istio's retry host
    /// predicate `previous_hosts`). Only the first 64 endpoints are tracked.
    pub tried: u64,
}

impl PickCtx {
    pub fn mark_tried(&mut self, i: usize) {
        if i < 64 {
            self.tried |= 1 << i;
        }
    }

    fn was_tried(&self, i: usize) -> bool {
        i < 64 && self.tried & (1 << i) != 0
    }
}

/// A consistent-hash lookup table, built once per snapshot.
pub enum HashTable {
    /// Ring hash: sorted (point, endpoint).
    Ring(Vec<(u64, u32)>),
    /// Maglev: endpoint per slot.
    Maglev(Vec<u32>),
}

/// Envoy's overprovisioning factor (1.4), in percent.
const OVERPROVISION: u64 = 140;
/// Priority levels tracked (more are folded into the last).
const LEVELS: usize = 8;

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finalizer to spread the bits).
pub fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HashTable {
    /// Build the table for a cluster, or `None` when it does not hash.
    pub fn build(cluster: &Cluster) -> Option<HashTable> {
        let LoadBalancer::ConsistentHash(ch) = &cluster.policy.load_balancer else {
            return None;
        };
        if cluster.endpoints.is_empty() {
            return None;
        }
        Some(build_table(cluster, ch))
    }

    /// The endpoint a hash lands on, walking on from there past endpoints `ok` refuses.
    fn lookup(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(ring) => {
                let start = ring.partition_point(|(p, _)| *p < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|i| ok(*i))
            }
            HashTable::Maglev(table) => {
                let start = (hash % table.len() as u64) as usize;
                (0..table.len())
                    .map(|k| table[(start + k) % table.len()] as usize)
                    .find(|i| ok(*i))
            }
        }
    }
}

fn endpoint_key(cluster: &Cluster, i: usize) -> String {
    let e = &cluster.endpoints[i];
    format!("{}:{}", e.address, e.port)
}

fn build_table(cluster: &Cluster, ch: &ConsistentHash) -> HashTable {
    let n = cluster.endpoints.len();
    let weights: Vec<u64> = cluster
        .endpoints
        .iter()
        .map(|e| u64::from(e.effective_weight()))
        .collect();
    let total: u64 = weights.iter().sum::<u64>().max(1);
    if ch.algorithm == "maglev" {
        // Bounded: a configuration cannot make the proxy allocate without limit.
        let m = ch.size.clamp(n as u64, 1 << 21) as usize;
        let perms: Vec<(usize, usize)> = (0..n)
            .map(|i| {
                let k = endpoint_key(cluster, i);
                let offset = (hash_bytes(&[k.as_bytes(), b"offset"]) % m as u64) as usize;
                let skip = if m > 1 {
                    (hash_bytes(&[k.as_bytes(), b"skip"]) % (m as u64 - 1)) as usize + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        // Weighted Maglev: an endpoint takes turns in proportion to its weight (relative to
        // the smallest), at most 64 per round.
        let min_w = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .min()
            .unwrap_or(1);
        let turns: Vec<u64> = weights.iter().map(|w| (w / min_w).min(64)).collect();
        let mut table = vec![u32::MAX; m];
        let mut next = vec![0usize; n];
        let mut filled = 0;
        'fill: while filled < m {
            let before = filled;
            for i in 0..n {
                for _ in 0..turns[i] {
                    let (offset, skip) = perms[i];
                    // Find this endpoint's next free slot in its permutation (bounded: a
                    // table size that is not prime may not visit every slot).
                    let mut found = false;
                    while next[i] < m {
                        let slot = (offset + next[i] * skip) % m;
                        next[i] += 1;
                        if table[slot] == u32::MAX {
                            table[slot] = i as u32;
                            filled += 1;
                            found = true;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                    if !found {
                        break;
                    }
                }
            }
            if filled == before {
                break;
            }
        }
        // Slots no permutation reached (non-prime sizes): round robin over endpoints.
        let mut rr = 0;
        for slot in table.iter_mut().filter(|s| **s == u32::MAX) {
            while weights[rr % n] == 0 && rr < 2 * n {
                rr += 1;
            }
            *slot = (rr % n) as u32;
            rr += 1;
        }
        HashTable::Maglev(table)
    } else {
        // Ring hash: at least `minimumRingSize` points, shared by weight (Envoy scales so
        // the lightest endpoint gets at least one point), at most 8M points.
        let size = ch.size.clamp(1, 1 << 23);
        let mut ring = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let points = (size * w).div_ceil(total).max(1);
            let k = endpoint_key(cluster, i);
            for r in 0..points {
                ring.push((hash_bytes(&[k.as_bytes(), &r.to_le_bytes()]), i as u32));
            }
        }
        ring.sort_unstable();
        HashTable::Ring(ring)
    }
}

/// Choose an endpoint index, or `None` when no endpoint can take the request (503 `UH`).
pub fn choose(cluster: &Cluster, state: Option<&ClusterRuntime>, ctx: &PickCtx) -> Option<usize> {
    let eps = &cluster.endpoints;
    let n = eps.len();
    if n == 0 {
        return None;
    }
    let health = state.and_then(|s| s.health.as_ref());
    // One endpoint and no outlier detection (a typical external service): it is the answer
    // whenever it can take traffic at all; what follows chooses among several.
    if n == 1 && health.is_none() {
        return (eps[0].effective_weight() > 0).then_some(0);
    }
    // The clock is read only when ejections need it.
    let now = health.map_or(0, |_| crate::outlier::now_ms());
    let panic = health.is_some_and(|h| h.panic(now));
    let healthy = |i: usize| {
        eps[i].effective_weight() > 0 && (panic || !health.is_some_and(|h| h.is_ejected(i, now)))
    };
    // Prefer endpoints this request has not tried yet; if every usable one was tried, any.
    let any_untried = (0..n).any(|i| healthy(i) && !ctx.was_tried(i));
    let usable = |i: usize| healthy(i) && (!any_untried || !ctx.was_tried(i));
    let level = choose_level(cluster, &healthy, ctx)?;
    let prio = |i: usize| (eps[i].priority as usize).min(LEVELS - 1);
    let in_level = |i: usize| usable(i) && prio(i) == level;
    if !(0..n).any(in_level) {
        return (0..n).find(|i| usable(*i));
    }
    // Consistent hash: the key's endpoint, or the next one on the ring/table that can take
    // the request. Without the key (a missing header), a random endpoint.
    if let (Some(table), Some(h)) = (state.and_then(|s| s.hash_table.as_ref()), ctx.hash) {
        return table.lookup(h, in_level);
    }
    let total: u64 = (0..n)
        .filter(|i| in_level(*i))
        .map(|i| u64::from(eps[i].effective_weight()))
        .sum();
    let weighted = |ticket: u64| -> usize {
        let mut t = ticket % total.max(1);
        for i in (0..n).filter(|i| in_level(*i)) {
            let w = u64::from(eps[i].effective_weight());
            if t < w {
                return i;
            }
            t -= w;
        }
        0
    };
    match &cluster.policy.load_balancer {
        // A retry (endpoints already tried) does not take a round-robin turn, so first
        // attempts keep their strict rotation.
        LoadBalancer::Simple(SimpleLb::RoundRobin) if ctx.tried == 0 => {
            let ticket = state.map_or(0, |s| s.next.fetch_add(1, Ordering::Relaxed));
            Some(weighted(ticket as u64))
        }
        LoadBalancer::Simple(SimpleLb::RoundRobin | SimpleLb::Random)
        | LoadBalancer::ConsistentHash(_) => Some(weighted(crate::upstream::random())),
        _ => {
            // LEAST_REQUEST: power of two choices (Envoy's `choice_count: 2`).
            let (a, b) = (
                weighted(crate::upstream::random()),
                weighted(crate::upstream::random()),
            );
            let load = |i: usize| {
                state
                    .and_then(|s| s.active.get(i))
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            };
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// The priority level for this request, by Envoy's priority load.
fn choose_level(
    cluster: &Cluster,
    healthy: &impl Fn(usize) -> bool,
    ctx: &PickCtx,
) -> Option<usize> {
    let eps = &cluster.endpoints;
    let mut total = [0u64; LEVELS];
    let mut up = [0u64; LEVELS];
    let mut levels = 0;
    for (i, e) in eps.iter().enumerate() {
        if e.effective_weight() == 0 {
            continue;
        }
        let p = (e.priority as usize).min(LEVELS - 1);
        levels = levels.max(p + 1);
        total[p] += 1;
        if healthy(i) {
            up[p] += 1;
        }
    }
    if levels <= 1 {
        return (up[0] > 0).then_some(0);
    }
    let mut health = [0u64; LEVELS];
    for p in 0..levels {
        health[p] = (OVERPROVISION * up[p])
            .checked_div(total[p])
            .unwrap_or(0)
            .min(100);
    }
    let sum: u64 = health.iter().sum();
    if sum == 0 {
        return None;
    }
    // Loads: each level takes its health, capped by what is left; scaled when the total
    // health is below 100.
    let mut load = [0u64; LEVELS];
    let mut left = 100u64;
    for p in 0..levels {
        let h = if sum < 100 {
            health[p] * 100 / sum
        } else {
            health[p]
        };
        load[p] = h.min(left);
        left -= load[p];
    }
    if left > 0 {
        // Rounding: give the rest to the first level with health.
        if let Some(p) = (0..levels).find(|p| health[*p] > 0) {
            load[p] += left;
        }
    }
    let ticket = match ctx.hash {
        Some(h) => mix(h) % 100,
        None => crate::upstream::random() % 100,
    };
    let mut acc = 0;
    for (p, l) in load.iter().enumerate().take(levels) {
        acc += l;
        if ticket < acc {
            return Some(p);
        }
    }
    (0..levels).rev().find(|p| load[*p] > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cluster(n: usize, lb: &str) -> Cluster {
        let eps: String = (1..=n)
            .map(|i| format!("{{address: 203.0.113.{i}}}, "))
            .collect();
        let yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{eps}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy: {{loadBalancer: {lb}}}
"
        );
        let (set, _) = egret_config::ConfigSet::from_str("t.yaml", &yaml);
        let (snap, d) = egret_model::compile(&set, &egret_model::ProxyIdentity::sidecar("default"));
        assert!(!d.has_errors(), "{d:?}");
        snap.cluster("outbound|80||api.example.test")
            .unwrap()
            .clone()
    }

    fn stable_and_spread(lb: &str) {
        let c = cluster(4, lb);
        let rt = ClusterRuntime::for_cluster(&c, None, None);
        let mut seen = [0usize; 4];
        for key in 0..400u32 {
            let h = hash_bytes(&[&key.to_le_bytes()]);
            let ctx = PickCtx {
                hash: Some(h),
                tried: 0,
            };
            let first = choose(&c, Some(&rt), &ctx).unwrap();
            for _ in 0..5 {
                assert_eq!(choose(&c, Some(&rt), &ctx), Some(first));
            }
            seen[first] += 1;
        }
        // Every endpoint gets a fair share of the keys.
        assert!(seen.iter().all(|s| (50..=150).contains(s)), "{seen:?}");
    }

    #[test]
    fn ring_hash_is_stable_and_spreads() {
        stable_and_spread("{consistentHash: {httpHeaderName: x-user}}");
    }

    #[test]
    fn maglev_is_stable_and_spreads() {
        stable_and_spread("{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}");
    }

    #[test]
    fn maglev_with_a_size_that_is_not_prime_fills_its_table() {
        // Validation rejects such sizes; the table must still be safe to build.
        let mut c = cluster(
            3,
            "{consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}",
        );
        if let LoadBalancer::ConsistentHash(ch) = &mut c.policy.load_balancer {
            ch.size = 1000;
        }
        let HashTable::Maglev(t) = HashTable::build(&c).unwrap() else {
            panic!("maglev")
        };
        assert_eq!(t.len(), 1000);
        assert!(t.iter().all(|i| *i < 3));
    }

    #[test]
    fn tried_endpoints_are_avoided() {
        let c = cluster(3, "{simple: ROUND_ROBIN}");
        let rt = ClusterRuntime::for_cluster(&c, None, None);
        let mut ctx = PickCtx::default();
        ctx.mark_tried(0);
        ctx.mark_tried(1);
        for _ in 0..10 {
            assert_eq!(choose(&c, Some(&rt), &ctx), Some(2));
        }
        ctx.mark_tried(2);
        assert!(choose(&c, Some(&rt), &ctx).is_some());
    }
}
