//! Types shared by several kinds: Istio enums, durations, string matches, selectors.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Declares an Istio enum. Istio parses these case-insensitively from YAML (protobuf enums go
/// through `strings.ToUpper` in its validation, and the samples mix `tcp` and `TCP`), so we do
/// too; the canonical (upper-case) spelling is what we print.
#[macro_export]
macro_rules! istio_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                let u = s.to_ascii_uppercase();
                $(if u == $text $(|| u == $alias)* { return Some($name::$variant); })+
                None
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    ::serde::de::Error::custom(format!(
                        "unknown value {:?}, expected one of {}",
                        s,
                        $name::ALL.join(", ")
                    ))
                })
            }
        }
    };
}

/// A protobuf Duration as Istio's YAML writes it: `3s`, `100ms`, `1m`, `1h30m`, `0.5s`.
/// Held in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64);

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(s * 1_000_000_000)
    }
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(ms * 1_000_000)
    }
    pub fn as_nanos(&self) -> u64 {
        self.0
    }
    pub fn as_millis(&self) -> u64 {
        self.0 / 1_000_000
    }
    pub fn to_std(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }

    /// Parse Go/protobuf duration syntax: one or more `<decimal><unit>` with units
    /// ns, us, µs, ms, s, m, h. Negative durations are rejected.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        if t == "0" {
            return Ok(Duration(0));
        }
        let mut rest = t;
        let mut total: f64 = 0.0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration {s:?} is missing a unit (e.g. \"5s\")"))?;
            if num_len == 0 {
                return Err(format!("invalid duration {s:?}"));
            }
            let n: f64 = rest[..num_len]
                .parse()
                .map_err(|_| format!("invalid duration {s:?}"))?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let mult = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                u => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
            };
            rest = &rest[unit_len..];
            total += n * mult;
        }
        if total > u64::MAX as f64 {
            return Err(format!("duration {s:?} is too large"));
        }
        Ok(Duration(total.round() as u64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns == 0 {
            f.write_str("0s")
        } else if ns.is_multiple_of(3_600_000_000_000) {
            write!(f, "{}h", ns / 3_600_000_000_000)
        } else if ns.is_multiple_of(60_000_000_000) {
            write!(f, "{}m", ns / 60_000_000_000)
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration(0))
                } else {
                    Err(E::custom(format!(
                        "duration {v} has no unit; write e.g. \"{v}s\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `StringMatch`: exactly one of exact / prefix / regex (RE2 syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// Networking selector shape (`Sidecar.workloadSelector`, `ServiceEntry.workloadSelector`):
/// `labels:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.WorkloadSelector` (DestinationRule, AuthorizationPolicy,
/// RequestAuthentication): `matchLabels:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchLabelsSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `targetRef` / `targetRefs` (Gateway API policy attachment). Parsed; egret does not act on
/// it (warned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `{number: N}` as used by `destination.port` and `portLevelSettings[].port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Option<u32>,
}

/// `{value: 12.5}`: a percentage as a double.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    pub value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(Duration::parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(Duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(Duration::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(Duration::parse("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(Duration::parse("0"), Ok(Duration(0)));
        assert!(Duration::parse("5").is_err());
        assert!(Duration::parse("5x").is_err());
        assert!(Duration::parse("-1s").is_err());
        assert_eq!(Duration::from_secs(5400).to_string(), "90m");
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
    }
}
