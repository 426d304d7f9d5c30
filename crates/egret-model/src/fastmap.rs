//! Hash maps for lookups on the data path.
//!
//! `std`'s default hasher is SipHash-1-3, which costs a few hundred instructions per short key;
//! a request does a handful of lookups (listener by port, virtual host, cluster, upstream pool,
//! metric series), each against a map built from configuration. foldhash's `fast` variant is
//! seeded at random per process and per map, so an attacker who controls a looked-up key (a
//! Host header) cannot predict collisions; the maps whose keys come from traffic at all
//! (passthrough destinations) are bounded in size.

/// A `std` `HashMap` with foldhash's per-map random seed. Build it with `HashMap::default()` or
/// `HashMap::with_capacity_and_hasher(n, Default::default())`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
