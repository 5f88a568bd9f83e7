//! Typed Rust client for Sentia.
