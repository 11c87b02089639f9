//! The proxy-wasm glue: the only code that talks to the host. It turns host callbacks into
//! calls on the sans-IO [`Session`](crate::session::Session) and carries out what it decides.

mod exports;
mod host;
mod root;
mod shared_cutoff;
mod stats;
mod stream;
