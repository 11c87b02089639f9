//! Which connections the root tick must look at: a min-heap of deadlines, so a tick costs
//! O(due · log n), not O(connections).
//!
//! Activity only pushes a connection's deadline later, so the heap is not touched on the data
//! path: a popped entry whose connection is not due yet is simply re-armed at its real deadline.
//! Only a deadline that moves *earlier* than the armed one pushes a new entry.

use crate::context_map::ContextMap;
use crate::duration::Millis;
use crate::host::ConnectionId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Default)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<(Millis, ConnectionId)>>,
    armed: ContextMap<Millis>,
}

impl Schedule {
    /// Wake `id` no later than `deadline` (None: nothing to wake it for).
    pub fn arm(&mut self, id: ConnectionId, deadline: Option<Millis>) {
        let Some(deadline) = deadline else { return };
        if self.armed.get(&id).is_some_and(|&at| at <= deadline) {
            return;
        }
        self.armed.insert(id, deadline);
        self.heap.push(Reverse((deadline, id)));
    }

    /// Connections whose armed deadline has passed, each once; they are disarmed and must be
    /// re-armed with their next deadline.
    pub fn take_due(&mut self, now: Millis, due: &mut Vec<ConnectionId>) {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&id) == Some(&at) {
                self.armed.remove(&id);
                due.push(id);
            }
        }
    }

    pub fn forget(&mut self, id: ConnectionId) {
        self.armed.remove(&id);
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(s: &mut Schedule, now: Millis) -> Vec<ConnectionId> {
        let mut v = Vec::new();
        s.take_due(now, &mut v);
        v
    }

    #[test]
    fn wakes_in_deadline_order_once() {
        let mut s = Schedule::default();
        s.arm(1, Some(300));
        s.arm(2, Some(100));
        s.arm(3, None);
        assert_eq!(due(&mut s, 99), Vec::<u32>::new());
        assert_eq!(due(&mut s, 300), vec![2, 1]);
        assert_eq!(due(&mut s, 1000), Vec::<u32>::new());
    }

    #[test]
    fn later_deadlines_do_not_touch_the_heap() {
        let mut s = Schedule::default();
        s.arm(1, Some(100));
        for t in 101..1000 {
            s.arm(1, Some(t));
        }
        assert_eq!(s.heap_len(), 1);
        assert_eq!(due(&mut s, 100), vec![1]);
    }

    #[test]
    fn earlier_deadline_rearms_and_stale_entry_is_ignored() {
        let mut s = Schedule::default();
        s.arm(1, Some(500));
        s.arm(1, Some(200));
        assert_eq!(due(&mut s, 200), vec![1]);
        assert_eq!(due(&mut s, 600), Vec::<u32>::new());
    }

    #[test]
    fn forgotten_connections_are_not_woken() {
        let mut s = Schedule::default();
        s.arm(7, Some(10));
        s.forget(7);
        assert_eq!(due(&mut s, 20), Vec::<u32>::new());
    }
}
