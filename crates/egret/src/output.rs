//! Snapshot rendering for `egret compile`: JSON, or the same tree as YAML.

use serde::Serialize;
use serde_json::Value;
use yaml_rust2::YamlEmitter;
use yaml_rust2::yaml::{Hash, Yaml};

pub fn json<T: Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

pub fn yaml<T: Serialize>(v: &T) -> anyhow::Result<String> {
    let value = serde_json::to_value(v)?;
    let mut out = String::new();
    YamlEmitter::new(&mut out).dump(&to_yaml(value))?;
    Ok(out)
}

fn to_yaml(v: Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s),
        Value::Array(a) => Yaml::Array(a.into_iter().map(to_yaml).collect()),
        Value::Object(m) => {
            let mut h = Hash::new();
            for (k, v) in m {
                h.insert(Yaml::String(k), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}
