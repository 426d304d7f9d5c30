//! The upstream half: see `h1/mod.rs`.
