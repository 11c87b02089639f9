//! The sans-IO core natively, with fake hosts, buffers and clocks (tests/support): the
//! session's rules and byte-exactness (property tests against a model of Redis), the worker's
//! rules, learning. One test binary, so the support code compiles once:
//! `cargo test --test core [FILTER]`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../support/mod.rs"]
mod support;

// Each file's own doc says what it proves.
mod learning_on_real_path_shapes;
mod profile_pipelined_gets;
mod session_is_byte_exact;
mod session_is_byte_exact_across_modes;
mod session_rules;
mod worker_rules;
