//! Cross-object analysis (placeholder).
use egret_config::{ConfigSet, Diagnostics};
pub fn analyze(_set: &ConfigSet) -> Diagnostics { Diagnostics::default() }
