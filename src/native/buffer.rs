//! One direction's Envoy buffer inside its own callback, read in place: Envoy lends pointers to
//! its slices, so a read that lies inside one slice is not copied at all.

use super::abi::{self, EnvoyBuffer, FilterEnvoy, ModuleBuffer};
use crate::session::Buffer;
use std::cell::RefCell;

/// Which of the connection's buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The read buffer: client bytes on their way to Redis.
    Read,
    /// The write buffer: Redis bytes on their way to the client.
    Write,
}

thread_local! {
    /// Slice lists and copies, reused between callbacks of this thread (its callbacks do not
    /// nest, and each buffer gives them back when dropped).
    static SPARE: RefCell<(Vec<EnvoyBuffer>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A reused allocation is kept only up to this size (a larger read, which is rare, gets memory
/// of its own and gives it back).
const KEEP: usize = 32 * 1024;

pub struct ChunkBuffer {
    filter: FilterEnvoy,
    side: Side,
    len: usize,
    /// The buffer's slices, fetched on the first read and again after a change.
    chunks: Vec<EnvoyBuffer>,
    fetched: bool,
    /// A read that spans slices is copied here.
    copy: Vec<u8>,
}

impl ChunkBuffer {
    pub fn new(filter: FilterEnvoy, side: Side, len: usize) -> ChunkBuffer {
        let (chunks, copy) = SPARE
            .try_with(|s| s.try_borrow_mut().map(|mut s| std::mem::take(&mut *s)).ok())
            .ok()
            .flatten()
            .unwrap_or_default();
        ChunkBuffer {
            filter,
            side,
            len,
            chunks,
            fetched: false,
            copy,
        }
    }

    fn fetch(&mut self) -> bool {
        if self.fetched {
            return true;
        }
        // SAFETY: `filter` is the connection of the running callback; Envoy writes at most the
        // number of slices it reported into a vector of that length.
        let ok = unsafe {
            let n = match self.side {
                Side::Read => {
                    abi::envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
                        self.filter,
                    )
                }
                Side::Write => {
                    abi::envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(
                        self.filter,
                    )
                }
            };
            self.chunks.clear();
            self.chunks.resize(n, EnvoyBuffer::EMPTY);
            n == 0
                || match self.side {
                    Side::Read => {
                        abi::envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
                            self.filter,
                            self.chunks.as_mut_ptr(),
                        )
                    }
                    Side::Write => {
                        abi::envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(
                            self.filter,
                            self.chunks.as_mut_ptr(),
                        )
                    }
                }
        };
        self.fetched = ok;
        ok
    }

    /// The slice holding byte `start`, and where in it `start` is.
    fn locate(&self, start: usize) -> Option<(&[u8], usize)> {
        let mut base = 0;
        for chunk in &self.chunks {
            // SAFETY: Envoy's slices stay valid for the callback, and this buffer lives only
            // inside it (nothing here changes the buffer while a slice is borrowed).
            let bytes = unsafe { chunk.bytes() };
            if start < base + bytes.len() {
                return Some((bytes, start - base));
            }
            base += bytes.len();
        }
        None
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        let mut chunks = std::mem::take(&mut self.chunks);
        let mut copy = std::mem::take(&mut self.copy);
        chunks.clear();
        copy.clear();
        if copy.capacity() > KEEP {
            copy = Vec::new();
        }
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                *s = (chunks, copy);
            }
        });
    }
}

impl Buffer for ChunkBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?.min(self.len);
        if start >= end {
            return Some(&[]);
        }
        if !self.fetch() {
            return None;
        }
        let want = end - start;
        let in_one_slice = {
            let (bytes, at) = self.locate(start)?;
            bytes.len() - at >= want
        };
        if in_one_slice {
            // Lend Envoy's slice: no copy.
            let (bytes, at) = self.locate(start)?;
            return bytes.get(at..at + want);
        }
        let mut copy = std::mem::take(&mut self.copy);
        copy.clear();
        let mut pos = start;
        while copy.len() < want {
            let (bytes, at) = self.locate(pos)?;
            let take = (bytes.len() - at).min(want - copy.len());
            copy.extend_from_slice(bytes.get(at..at + take)?);
            pos += take;
        }
        self.copy = copy;
        Some(&self.copy)
    }

    fn read_some(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        if start >= self.len || len == 0 {
            return Some(&[]);
        }
        if !self.fetch() {
            return None;
        }
        let (bytes, at) = self.locate(start)?;
        let n = len.min(self.len - start).min(bytes.len() - at);
        bytes.get(at..at + n)
    }

    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool {
        let upto = upto.min(self.len);
        self.fetched = false;
        // SAFETY: `filter` is the connection of the running callback, and its buffer of this
        // side is the one Envoy handed to it; `with` is live for the call (Envoy copies it).
        let ok = unsafe {
            let drained = upto == 0
                || match self.side {
                    Side::Read => {
                        abi::envoy_dynamic_module_callback_network_filter_drain_read_buffer(
                            self.filter,
                            upto,
                        )
                    }
                    Side::Write => {
                        abi::envoy_dynamic_module_callback_network_filter_drain_write_buffer(
                            self.filter,
                            upto,
                        )
                    }
                };
            drained
                && (with.is_empty()
                    || match self.side {
                        Side::Read => {
                            abi::envoy_dynamic_module_callback_network_filter_prepend_read_buffer(
                                self.filter,
                                ModuleBuffer::from(with),
                            )
                        }
                        Side::Write => {
                            abi::envoy_dynamic_module_callback_network_filter_prepend_write_buffer(
                                self.filter,
                                ModuleBuffer::from(with),
                            )
                        }
                    })
        };
        if ok {
            self.len = self.len - upto + with.len();
        }
        ok
    }
}
