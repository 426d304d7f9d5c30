//! The downstream half: see `h1/mod.rs`.
