//! Serde types for the kinds egret reads.

pub mod asm;
pub mod common;
pub mod mesh;
pub mod networking;
pub mod ratelimit;
pub mod security;

pub use asm::*;
pub use common::*;
pub use mesh::*;
pub use networking::*;
pub use ratelimit::*;
pub use security::*;
