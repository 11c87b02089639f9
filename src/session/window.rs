//! Framing a host buffer without copying it: header windows fetched from the host, payloads
//! skipped.

use super::Buffer;
use crate::resp::{Frame, Framer, RespError};

pub(super) const MIN_WINDOW: usize = 256;
const MAX_WINDOW: usize = 16 * 1024;

pub(super) enum LoopStop {
    Parse(RespError),
    HostRead,
}

/// Frame `buf[from..]`, fetching only header windows from the host and skipping payloads.
pub(super) fn frame_buffer(
    framer: &mut Framer,
    buf: &mut impl Buffer,
    from: usize,
    window: &mut usize,
    sink: &mut dyn FnMut(&Frame),
) -> Result<(), LoopStop> {
    let size = buf.len();
    let mut pos = from;
    while pos < size {
        let skippable = framer.skippable();
        if skippable > 0 {
            let k = skippable.min((size - pos) as u64);
            framer.skip(k);
            pos += k as usize;
            // A large payload: keep the next header windows small.
            *window = MIN_WINDOW;
            continue;
        }
        let n = (*window).min(size - pos);
        let Some(bytes) = buf.read_some(pos, n) else {
            return Err(LoopStop::HostRead);
        };
        if bytes.is_empty() || bytes.len() > n {
            return Err(LoopStop::HostRead);
        }
        framer.feed(bytes, sink).map_err(LoopStop::Parse)?;
        pos += bytes.len();
        // Many small frames: fewer, larger reads.
        *window = (*window * 2).min(MAX_WINDOW);
    }
    Ok(())
}
