//! The connections' timers. Envoy gives a network filter no timer, so one thread of the module's
//! own keeps every connection's deadline in a min-heap and, when one passes, wakes that
//! connection through its Envoy scheduler (`scheduler_commit` posts
//! `on_network_filter_scheduled` to the connection's worker). A wake costs O(log n) for each
//! connection that is due, never a pass over all of them.
//!
//! Each connection owns a slot: its scheduler, and the deadline it armed. The slot's index is
//! the connection's id (unique in the process).
//!
//! The thread commits without holding its lock, because a commit can run Envoy's destructor of
//! the connection's filter on the committing thread (when the worker dropped the filter while
//! the commit held it), and that destructor frees the slot. So a scheduler is shared: the slot
//! holds it and so does a commit in flight, and it is deleted when the last of them lets go,
//! never while a commit may still reach it.

use super::abi;
use crate::duration::Millis;
use crate::host::ConnectionId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The event id of a wake (the only event this module schedules).
pub const WAKE: u64 = 1;

/// The thread wakes on this grid, taking every deadline passed since: connections due close
/// together are committed in one go, and their worker runs their wakes in one loop iteration.
/// At 10,000 idle connections and 15 s keepalives, waking for each deadline cost 8.4% of a
/// core (2.5% on this thread), on this grid 4.0% (0.6%); a deadline is at most this late.
pub const GRAIN_MS: Millis = 20;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock shared by every thread of the module.
pub fn now_ms() -> Millis {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An Envoy scheduler, deleted when the last holder drops it.
struct Scheduler(usize);

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new and deleted once, here; the ABI allows any thread.
        unsafe {
            abi::envoy_dynamic_module_callback_network_filter_scheduler_delete(
                self.0 as abi::Scheduler,
            )
        };
    }
}

struct Slot {
    /// The connection's Envoy scheduler (None once its connection is gone).
    scheduler: Option<Arc<Scheduler>>,
    /// Bumped when the slot is freed, so heap entries of an earlier owner are ignored.
    generation: u32,
    armed: Option<Millis>,
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

/// A slot for a new connection with its scheduler (from then on owned here); the thread starts
/// with the first one. None if the thread cannot be started (the connection then passes
/// through, and the scheduler is deleted).
pub fn register(scheduler: abi::Scheduler) -> Option<ConnectionId> {
    let scheduler = Arc::new(Scheduler(scheduler as usize));
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
    if let Some(id) = st.free.pop() {
        if let Some(s) = st.slots.get_mut(id as usize) {
            s.scheduler = Some(scheduler);
            s.armed = None;
            return Some(id);
        }
    }
    let id = ConnectionId::try_from(st.slots.len()).ok()?;
    st.slots.push(Slot {
        scheduler: Some(scheduler),
        generation: 0,
        armed: None,
    });
    Some(id)
}

/// Free the slot of a connection being destroyed (from any thread: see the module doc).
pub fn unregister(id: ConnectionId) {
    let scheduler = {
        let mut st = lock();
        let Some(slot) = st.slots.get_mut(id as usize) else {
            return;
        };
        let scheduler = slot.scheduler.take();
        if scheduler.is_none() {
            return;
        }
        slot.armed = None;
        slot.generation = slot.generation.wrapping_add(1);
        st.free.push(id);
        scheduler
    };
    // Deleted here unless a commit still holds it (outside the lock: no Envoy call under it).
    drop(scheduler);
}

/// Wake `id` at `at`, unless an earlier wake is already armed.
pub fn arm(id: ConnectionId, at: Millis) {
    let mut st = lock();
    let Some(slot) = st
        .slots
        .get_mut(id as usize)
        .filter(|s| s.scheduler.is_some())
    else {
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
    super::host::mark_module_thread();
    let result = std::panic::catch_unwind(|| {
        let mut st = lock();
        let mut due = Vec::new();
        while !st.stop {
            let now = now_ms();
            take_due(&mut st, now, &mut due);
            if !due.is_empty() {
                drop(st);
                for scheduler in due.drain(..) {
                    // SAFETY: `scheduler` is alive while this Arc holds it (see the module doc);
                    // commits are allowed from any thread.
                    unsafe {
                        abi::envoy_dynamic_module_callback_network_filter_scheduler_commit(
                            scheduler.0 as abi::Scheduler,
                            WAKE,
                        )
                    };
                }
                st = lock();
                continue;
            }
            let next = st.heap.peek().map(|Reverse((at, _, _))| *at);
            st = match next {
                None => TIMERS
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wake_at = at.div_ceil(GRAIN_MS).saturating_mul(GRAIN_MS);
                    let wait = Duration::from_millis(wake_at.saturating_sub(now).max(1));
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

/// The schedulers of the connections due at `now` (their deadlines disarmed).
fn take_due(st: &mut State, now: Millis, due: &mut Vec<Arc<Scheduler>>) {
    while let Some(&Reverse((at, id, generation))) = st.heap.peek() {
        if at > now {
            return;
        }
        st.heap.pop();
        let Some(slot) = st.slots.get_mut(id as usize) else {
            continue;
        };
        if slot.generation != generation || slot.armed != Some(at) {
            continue;
        }
        slot.armed = None;
        if let Some(scheduler) = &slot.scheduler {
            due.push(Arc::clone(scheduler));
        }
    }
}
