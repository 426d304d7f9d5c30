//! Per-object validation (placeholder; being written).
use egret_config::{ConfigSet, Diagnostics};
pub fn validate(_set: &ConfigSet) -> Diagnostics {
    Diagnostics::default()
}
