//! The replies a connection is waiting for, in wire order, and whose each one is.
//!
//! Run-length encoded: a pipeline of 10,000 GETs is one entry, and an idle connection holds
//! no heap memory at all.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A reply the client asked for.
    Client,
    /// The client's, after which the protocol becomes RESP3 (or RESP2) unless it is an error.
    ClientHello(u8),
    /// The client's reply to RESET.
    ClientReset,
    /// The client's, and it may take arbitrarily long (blocked command).
    ClientBlocking,
    /// The reply to the filter's own PING: removed before the client sees it.
    Filter,
}

#[derive(Debug, Default)]
pub struct ReplyQueue {
    runs: VecDeque<(Expect, u32)>,
    filter: u32,
}

impl ReplyQueue {
    pub fn push(&mut self, e: Expect) {
        if e == Expect::Filter {
            self.filter = self.filter.saturating_add(1);
        }
        if let Some((last, n)) = self.runs.back_mut() {
            if *last == e && *n < u32::MAX {
                *n += 1;
                return;
            }
        }
        self.runs.push_back((e, 1));
    }

    /// Put an expectation before everything pending (the probe's PING, which goes out ahead
    /// of the client bytes it holds back).
    pub fn push_front(&mut self, e: Expect) {
        if e == Expect::Filter {
            self.filter = self.filter.saturating_add(1);
        }
        if let Some((first, n)) = self.runs.front_mut() {
            if *first == e && *n < u32::MAX {
                *n += 1;
                return;
            }
        }
        self.runs.push_front((e, 1));
    }

    pub fn front(&self) -> Option<Expect> {
        self.runs.front().map(|(e, _)| *e)
    }

    pub fn pop(&mut self) -> Option<Expect> {
        let (e, n) = self.runs.front_mut()?;
        let e = *e;
        if *n > 1 {
            *n -= 1;
        } else {
            self.runs.pop_front();
        }
        if e == Expect::Filter {
            self.filter = self.filter.saturating_sub(1);
        }
        Some(e)
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Filter PINGs still unanswered.
    pub fn filter_pending(&self) -> u32 {
        self.filter
    }

    /// True when every pending reply is either a blocked command's or comes after one: a PING
    /// sent now is answered only after the blocked command, and that is fine.
    pub fn only_behind_blocking(&self) -> bool {
        matches!(self.front(), Some(Expect::ClientBlocking))
            && self
                .runs
                .iter()
                .all(|(e, _)| matches!(e, Expect::ClientBlocking | Expect::Filter))
    }

    /// The first filter PING is waiting behind no client reply: its silence means a dead link.
    pub fn filter_at_front(&self) -> bool {
        self.front() == Some(Expect::Filter)
    }

    /// Client replies still owed.
    pub fn client_pending(&self) -> bool {
        self.runs.iter().any(|(e, _)| *e != Expect::Filter)
    }

    pub fn clear(&mut self) {
        self.runs.clear();
        self.filter = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_pop_in_order() {
        let mut q = ReplyQueue::default();
        for _ in 0..3 {
            q.push(Expect::Client);
        }
        q.push(Expect::Filter);
        q.push(Expect::Client);
        assert_eq!(q.runs.len(), 3);
        assert_eq!(q.filter_pending(), 1);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                Expect::Client,
                Expect::Client,
                Expect::Client,
                Expect::Filter,
                Expect::Client
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.filter_pending(), 0);
    }

    #[test]
    fn blocking_front() {
        let mut q = ReplyQueue::default();
        assert!(!q.only_behind_blocking());
        q.push(Expect::ClientBlocking);
        assert!(q.only_behind_blocking());
        q.push(Expect::Filter);
        assert!(q.only_behind_blocking());
        assert!(!q.filter_at_front());
        q.push(Expect::Client);
        assert!(!q.only_behind_blocking());
    }
}
