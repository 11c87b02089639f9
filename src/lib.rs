//! redis-idle-guard: an Envoy network filter that keeps pooled Redis connections alive with
//! in-band, RESP-exact keepalives. Two builds on one core.
//!
//! Everything but `wasm` (the proxy-wasm adapter) and `native` (the Envoy dynamic module,
//! feature `native`) is sans-IO: plain Rust, time passed in, no host calls, tested natively.
//! The adapters are the only code that talks to a host: they turn its callbacks into
//! [`worker::Worker`] calls and carry out what those return.
//!
//! Words, the same in code, stats, logs and docs: the two sides are the client and the server
//! (Redis, or redis_proxy); requests go to the server, replies come back. An upstream is the
//! cluster a connection goes to ([`upstream::UpstreamId`], the per-upstream stats). Passthrough:
//! the filter stops following a connection and passes its bytes through untouched
//! ([`session::PassthroughReason`], the `passthrough` stat). `downstream`/`upstream` as sides
//! appear only where they mirror a host ABI's own callback names (src/wasm, src/native).
#![cfg_attr(
    test,
    allow(
        clippy::panic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

pub mod command;
pub mod config;
pub mod context_map;
pub mod duration;
pub mod host;
pub mod idle_cutoff;
pub mod metrics;
pub mod reply_queue;
pub mod report;
pub mod resp;
pub mod schedule;
pub mod session;
pub mod shared_cutoff;
pub mod upstream;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;
