//! The filter's real `.wasm` (built by build.rs from the current source) under the
//! Envoy-faithful proxy-wasm host on wasmtime (tests/host): exact bytes on both sides, a
//! virtual clock. One test binary, so the host and the module compile once:
//! `cargo test --test wasm [FILTER]`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../host/mod.rs"]
mod host;

// Each file's own doc says what it proves.
mod faults_and_refusals;
mod keepalive_in_each_mode;
mod keepalive_timing_and_removal;
mod learning_ends_idle_deaths;
mod probe_before_stale_reuse;
mod random_traffic_is_byte_exact;
