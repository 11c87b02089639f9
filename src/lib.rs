//! redis-idle-guard: a proxy-wasm network filter that keeps pooled Redis connections alive
//! with in-band, RESP-exact keepalives.
//!
//! Everything but `adapter` is sans-IO: plain Rust, time passed in, no host calls, tested
//! natively. `adapter` is the only code that talks to the proxy-wasm host.
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
