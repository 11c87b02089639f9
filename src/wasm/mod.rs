//! The proxy-wasm adapter: the only code that talks to a proxy-wasm host. It turns host
//! callbacks into calls on the core's [`Worker`](crate::worker::Worker) and carries out what
//! it decides.

mod abi;
mod connection;
mod exports;
mod host;
mod plugin;
mod stats;
