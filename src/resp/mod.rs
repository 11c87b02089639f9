//! Streaming RESP2/RESP3 framing.
//!
//! Our own framer rather than `redis-protocol`'s decoder: that one keeps no state between calls
//! (an incomplete frame is re-parsed from byte 0, quadratic over many segments), has no nesting
//! limit (deep input overflows the wasm stack) and rejects inline commands. This one is a byte
//! state machine that never buffers a payload: bulk bodies are counted, not copied, and the
//! adapter does not even fetch them from the host (see [`Framer::skippable`]).

mod error;
mod frame;
mod framer;
mod parked;

pub use error::RespError;
pub use frame::{Capture, Frame, FrameKind, Limits, Side, CAPTURE_ITEMS, CAPTURE_LEN};
pub use framer::Framer;
pub use parked::ParkedFramer;
