//! A direction's framer, parked between frames. An idle connection then holds only its stream
//! offset instead of a whole framer (a few hundred bytes with its capture); the framing is done
//! by a per-thread spare, and a connection keeps a framer of its own only while a frame spans
//! reads. One VM runs on one thread and its callbacks never nest, so one spare per side is
//! enough; an extra one is simply allocated.

use super::{Framer, Limits, Side};
use std::cell::RefCell;

enum State {
    Between { offset: u64 },
    Within(Box<Framer>),
}

pub struct ParkedFramer {
    side: Side,
    state: State,
}

thread_local! {
    static SPARE: RefCell<[Option<Box<Framer>>; 2]> = const { RefCell::new([None, None]) };
}

fn slot(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Reply => 1,
    }
}

fn take_spare(side: Side) -> Option<Box<Framer>> {
    SPARE
        .try_with(|s| s.try_borrow_mut().ok()?.get_mut(slot(side))?.take())
        .ok()
        .flatten()
}

fn give_spare(framer: Box<Framer>) {
    let side = framer.side();
    let _ = SPARE.try_with(|s| {
        if let Ok(mut spares) = s.try_borrow_mut() {
            if let Some(free @ None) = spares.get_mut(slot(side)) {
                *free = Some(framer);
            }
        }
    });
}

impl ParkedFramer {
    pub fn new(side: Side) -> ParkedFramer {
        ParkedFramer {
            side,
            state: State::Between { offset: 0 },
        }
    }

    pub fn at_boundary(&self) -> bool {
        match &self.state {
            State::Between { .. } => true,
            State::Within(f) => f.at_boundary(),
        }
    }

    pub fn offset(&self) -> u64 {
        match &self.state {
            State::Between { offset } => *offset,
            State::Within(f) => f.offset(),
        }
    }

    /// Payload bytes that can be consumed unseen right now (0 between frames).
    pub fn skippable(&self) -> u64 {
        match &self.state {
            State::Between { .. } => 0,
            State::Within(f) => f.skippable(),
        }
    }

    /// Consume `n <= skippable()` payload bytes unseen.
    pub fn skip(&mut self, n: u64) {
        if let State::Within(f) = &mut self.state {
            f.skip(n);
        }
    }

    /// True while this connection holds a framer of its own (a frame spans reads, or the
    /// stream failed to parse). tests/resp_framer.rs checks that none is kept at a boundary.
    pub fn is_unparked(&self) -> bool {
        matches!(self.state, State::Within(_))
    }

    /// Run `work` with a live framer for this direction, then park it again if it is between
    /// frames.
    pub fn with<R>(&mut self, work: impl FnOnce(&mut Framer) -> R) -> R {
        let state = std::mem::replace(&mut self.state, State::Between { offset: 0 });
        let mut framer = match state {
            State::Within(f) => f,
            State::Between { offset } => {
                let mut f = take_spare(self.side)
                    .unwrap_or_else(|| Box::new(Framer::new(self.side, Limits::default())));
                f.restart_at(offset);
                f
            }
        };
        let result = work(&mut framer);
        self.state = if framer.is_pristine() {
            let offset = framer.offset();
            give_spare(framer);
            State::Between { offset }
        } else {
            State::Within(framer)
        };
        result
    }
}
