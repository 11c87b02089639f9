//! Maps keyed by Envoy context ids. Ids are small sequential integers handed out by Envoy, so
//! SipHash (std's default, built against hash flooding) buys nothing here and costs a few dozen
//! instructions on every lookup of the data path: a multiplicative (Fibonacci) hash spreads
//! sequential ids over the table just as well.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by u32 keys; a plain fold keeps it correct for any key.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type ContextMap<V> = HashMap<u32, V, BuildHasherDefault<ContextIdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_land_in_distinct_buckets() {
        let mut m: ContextMap<u32> = ContextMap::default();
        for id in 0..10_000 {
            m.insert(id, id * 2);
        }
        assert!((0..10_000).all(|id| m.get(&id) == Some(&(id * 2))));
        // hashbrown uses the top 7 bits as tags and the low bits as the bucket index.
        let buckets: std::collections::HashSet<u64> = (0..1024u32)
            .map(|id| {
                let mut h = ContextIdHasher::default();
                h.write_u32(id);
                h.finish() & 1023
            })
            .collect();
        assert!(buckets.len() > 600, "{}", buckets.len());
    }
}
