//! The connections' timers. Envoy gives a network filter no timer, so one thread of the module's
//! own keeps every connection's deadline in a min-heap and, when one passes, wakes that
//! connection through its Envoy scheduler (`scheduler_commit` posts
//! `on_network_filter_scheduled` to the connection's worker). A wake costs O(log n) for each
//! connection that is due, never a pass over all of them.
//!
//! Each connection owns a slot: its scheduler, and the deadline it armed. A slot is freed under
//! the same lock the thread holds while it commits, before the scheduler is deleted, so no
//! commit can reach a scheduler whose connection is gone. The slot's index is the
//! connection's id (unique in the process).

use super::abi;
use crate::duration::Millis;
use crate::host::ConnectionId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The event id of a wake (the only event this module schedules).
pub const WAKE: u64 = 1;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock shared by every thread of the module.
pub fn now_ms() -> Millis {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

struct Slot {
    /// The connection's Envoy scheduler (a pointer, kept as an integer to cross threads).
    scheduler: usize,
    /// Bumped when the slot is freed, so heap entries of an earlier owner are ignored.
    generation: u32,
    armed: Option<Millis>,
    live: bool,
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(Millis, ConnectionId, u32)>>,
    slots: Vec<Slot>,
    free: Vec<ConnectionId>,
    thread: Option<JoinHandle<()>>,
    stop: bool,
}

struct Timers {
    state: Mutex<State>,
    changed: Condvar,
}

static TIMERS: LazyLock<Timers> = LazyLock::new(|| Timers {
    state: Mutex::new(State::default()),
    changed: Condvar::new(),
});

fn lock() -> MutexGuard<'static, State> {
    // A panic never happens while the lock is held (nothing in it can panic); if one did, the
    // timers it guards are still consistent enough to go on.
    TIMERS.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A slot for a new connection with its scheduler; the thread starts with the first one.
/// None if the thread cannot be started (the connection then passes through).
pub fn register(scheduler: abi::Scheduler) -> Option<ConnectionId> {
    let mut st = lock();
    if st.thread.is_none() {
        let spawned = std::thread::Builder::new()
            .name("redis-idle-guard-timer".into())
            .spawn(run);
        match spawned {
            Ok(handle) => st.thread = Some(handle),
            Err(e) => {
                log::error!("cannot start the timer thread ({e}); keepalives are off");
                return None;
            }
        }
    }
    let slot = Slot {
        scheduler: scheduler as usize,
        generation: 0,
        armed: None,
        live: true,
    };
    if let Some(id) = st.free.pop() {
        if let Some(s) = st.slots.get_mut(id as usize) {
            s.scheduler = slot.scheduler;
            s.armed = None;
            s.live = true;
            return Some(id);
        }
    }
    let id = ConnectionId::try_from(st.slots.len()).ok()?;
    st.slots.push(slot);
    Some(id)
}

/// Free the slot of a connection being destroyed; returns its scheduler, which the caller
/// deletes (after this, the thread never commits to it).
pub fn unregister(id: ConnectionId) -> Option<abi::Scheduler> {
    let mut st = lock();
    let slot = st.slots.get_mut(id as usize).filter(|s| s.live)?;
    slot.live = false;
    slot.armed = None;
    slot.generation = slot.generation.wrapping_add(1);
    let scheduler = slot.scheduler as abi::Scheduler;
    st.free.push(id);
    Some(scheduler)
}

/// Wake `id` at `at`, unless an earlier wake is already armed.
pub fn arm(id: ConnectionId, at: Millis) {
    let mut st = lock();
    let Some(slot) = st.slots.get_mut(id as usize).filter(|s| s.live) else {
        return;
    };
    if slot.armed.is_some_and(|armed| armed <= at) {
        return;
    }
    slot.armed = Some(at);
    let generation = slot.generation;
    let earliest = st.heap.peek().is_none_or(|Reverse((top, _, _))| at < *top);
    st.heap.push(Reverse((at, id, generation)));
    if earliest {
        TIMERS.changed.notify_one();
    }
}

/// Stop the thread and wait for it (Envoy's shutdown: no commit may race the workers'
/// teardown).
pub fn stop() {
    let handle = {
        let mut st = lock();
        st.stop = true;
        st.thread.take()
    };
    TIMERS.changed.notify_one();
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}

fn run() {
    let result = std::panic::catch_unwind(|| {
        let mut st = lock();
        while !st.stop {
            let now = now_ms();
            commit_due(&mut st, now);
            let next = st.heap.peek().map(|Reverse((at, _, _))| *at);
            st = match next {
                None => TIMERS
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now).max(1));
                    TIMERS
                        .changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    });
    if result.is_err() {
        log::error!("the timer thread stopped on a panic; keepalives are off");
    }
}

fn commit_due(st: &mut State, now: Millis) {
    while let Some(&Reverse((at, id, generation))) = st.heap.peek() {
        if at > now {
            return;
        }
        st.heap.pop();
        let Some(slot) = st.slots.get_mut(id as usize) else {
            continue;
        };
        if !slot.live || slot.generation != generation || slot.armed != Some(at) {
            continue;
        }
        slot.armed = None;
        // SAFETY: the slot is live, so its connection has not been destroyed and its scheduler
        // not deleted: both happen only after `unregister`, which needs this lock.
        unsafe {
            abi::envoy_dynamic_module_callback_network_filter_scheduler_commit(
                slot.scheduler as abi::Scheduler,
                WAKE,
            )
        };
    }
}
