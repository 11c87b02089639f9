//! One callback's buffer as a host holds it, over a Vec (shared with the fuzz targets, which
//! include this file by path).

use redis_idle_guard::session::Buffer;

/// One callback's buffer, as the host holds it.
pub struct VecBuffer {
    pub data: Vec<u8>,
    /// Bytes the session read from it (a test of how much the framer looks at).
    pub bytes_read: usize,
}

impl VecBuffer {
    pub fn new(data: Vec<u8>) -> VecBuffer {
        VecBuffer {
            data,
            bytes_read: 0,
        }
    }
}

impl Buffer for VecBuffer {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        let bytes = self.data.get(start..end.min(self.data.len()))?;
        self.bytes_read += bytes.len();
        Some(bytes)
    }
    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool {
        if upto > self.data.len() {
            return false;
        }
        self.data.splice(0..upto, with.iter().copied());
        true
    }
}
