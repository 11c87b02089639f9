//! The Envoy dynamic-module adapter (the native `.so`, built with the `native` feature): the
//! only code that talks to that ABI. It turns Envoy's network-filter callbacks into calls on the
//! core's [`Worker`](crate::worker::Worker) and carries out what it decides; a timer thread of
//! its own wakes connections, and an optional bootstrap extension adds per-upstream stats.

mod abi;
mod bootstrap;
mod buffer;
mod exports;
mod filter;
mod host;
mod log;
mod memory;
mod store;
mod timer;
