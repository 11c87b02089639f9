//! A filter configuration (one per filter chain) with its workers, and one connection's filter.

use super::abi::{self, FilterEnvoy, ModuleBuffer};
use super::buffer::{ChunkBuffer, Side};
use super::host::{NativeHost, Stats};
use super::timer;
use crate::config::Config;
use crate::duration::Millis;
use crate::host::{Cluster, ConnectionId, DataCallback};
use crate::session::PING;
use crate::worker::{Verdict, Wake, Worker};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

/// What `config_new` builds: the parsed configuration, its stats, and one [`Worker`] per Envoy
/// worker thread. A worker's lock is taken by its own thread (never while a host call that may
/// call back in is running), and tried by a filter destroyed on the timer thread (see `Drop`).
pub struct FilterConfig {
    pub stats: Stats,
    workers: Box<[Mutex<Worker>]>,
    /// Per worker: connections destroyed while their worker was busy, to remove at its next
    /// callback.
    gone: Box<[Mutex<Vec<ConnectionId>>]>,
}

impl FilterConfig {
    pub fn new(config: Config, stats: Stats, concurrency: usize) -> FilterConfig {
        let n = concurrency.max(1);
        let workers = (0..n)
            .map(|_| Mutex::new(Worker::new(config.clone())))
            .collect();
        let gone = (0..n).map(|_| Mutex::new(Vec::new())).collect();
        FilterConfig {
            stats,
            workers,
            gone,
        }
    }
}

/// One connection. `id` is None when no timer slot could be had: the bytes then pass through.
pub struct Filter {
    config: Arc<FilterConfig>,
    worker: usize,
    id: Option<ConnectionId>,
}

/// One data callback, as the core may ask about it.
struct Callback {
    filter: FilterEnvoy,
    side: Side,
    size: usize,
}

impl DataCallback for Callback {
    type Buffer<'a> = ChunkBuffer;

    fn now(&mut self) -> Option<Millis> {
        Some(timer::now_ms())
    }

    fn buffer(&mut self) -> ChunkBuffer {
        ChunkBuffer::new(self.filter, self.side, self.size)
    }

    /// Envoy knows the upstream host once tcp_proxy has picked it.
    fn cluster(&mut self) -> Cluster {
        let mut name = abi::EnvoyBuffer::EMPTY;
        // SAFETY: the connection of the running callback; Envoy owns the name for the call.
        let known = unsafe {
            abi::envoy_dynamic_module_callback_network_filter_get_upstream_host_cluster(
                self.filter,
                &mut name,
            )
        };
        if !known {
            return Cluster::NotYet;
        }
        // SAFETY: as above.
        let name = unsafe { name.bytes() };
        Cluster::Known(String::from_utf8_lossy(name).into_owned())
    }
}

fn close(filter: FilterEnvoy) {
    // SAFETY: the connection of the running callback. Envoy may call back in (on_event) from
    // here: no worker lock is held.
    unsafe {
        abi::envoy_dynamic_module_callback_network_filter_close(filter, abi::CLOSE_FLUSH_WRITE)
    };
}

/// Send bytes towards Redis (to tcp_proxy, the filter after this one).
fn inject(filter: FilterEnvoy, bytes: &[u8]) {
    // SAFETY: the connection of the running callback; Envoy copies the bytes. No worker lock
    // is held (tcp_proxy runs inside this call).
    unsafe {
        abi::envoy_dynamic_module_callback_network_filter_inject_read_data(
            filter,
            ModuleBuffer::from(bytes),
            false,
        )
    };
}

impl Filter {
    pub fn new(config: Arc<FilterConfig>, filter: FilterEnvoy) -> Filter {
        // SAFETY: called from on_network_filter_new with Envoy's live filter, on its worker.
        let (index, scheduler) = unsafe {
            (
                abi::envoy_dynamic_module_callback_network_filter_get_worker_index(filter),
                abi::envoy_dynamic_module_callback_network_filter_scheduler_new(filter),
            )
        };
        let worker = usize::try_from(index).unwrap_or(0) % config.workers.len().max(1);
        let id = if scheduler.is_null() {
            None
        } else {
            let id = timer::register(scheduler);
            if id.is_none() {
                // SAFETY: just created, never committed to.
                unsafe {
                    abi::envoy_dynamic_module_callback_network_filter_scheduler_delete(scheduler)
                };
            }
            id
        };
        Filter { config, worker, id }
    }

    /// Run `f` on this connection's worker; `fallback` when the connection is not followed or
    /// the worker is busy (only a call back into the module during a host call could find it
    /// so; nothing is done then).
    fn with<R>(
        &self,
        fallback: R,
        f: impl FnOnce(&mut Worker, &mut NativeHost, ConnectionId) -> R,
    ) -> R {
        let Some(id) = self.id else { return fallback };
        let Some(lock) = self.config.workers.get(self.worker) else {
            return fallback;
        };
        let mut worker = match lock.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return fallback,
        };
        let mut host = NativeHost {
            stats: &self.config.stats,
        };
        self.config.stats.catch_up();
        if let Some(gone) = self.config.gone.get(self.worker) {
            let ids = std::mem::take(&mut *gone.lock().unwrap_or_else(PoisonError::into_inner));
            for gone_id in ids {
                worker.remove(&mut host, gone_id);
            }
        }
        f(&mut worker, &mut host, id)
    }

    pub fn on_new_connection(&self) {
        self.with((), |w, host, id| w.open(host, id, Some(timer::now_ms())));
        self.config.stats.report_memory();
    }

    /// Client bytes; returns false to stop them (the connection is being closed).
    pub fn on_read(&self, filter: FilterEnvoy, size: usize, end_of_stream: bool) -> bool {
        let mut callback = Callback {
            filter,
            side: Side::Read,
            size,
        };
        let verdict = self.with(Verdict::default(), |w, host, id| {
            w.on_client_data(host, id, size, end_of_stream, &mut callback)
        });
        if verdict.close.is_some() {
            // Whatever is in the buffer must not reach Redis without the held bytes before it.
            close(filter);
            return false;
        }
        true
    }

    /// Redis bytes; the filter's own replies are cut out of the write buffer.
    pub fn on_write(&self, filter: FilterEnvoy, size: usize, end_of_stream: bool) {
        let mut callback = Callback {
            filter,
            side: Side::Write,
            size,
        };
        let (release, close_now) = self.with((None, None), |w, host, id| {
            w.on_server_data(host, id, size, end_of_stream, &mut callback)
        });
        // The probe was answered: the held command follows it.
        if let Some(held) = release {
            inject(filter, &held);
        }
        if close_now.is_some() {
            close(filter);
        }
    }

    pub fn on_event(&self, event: u32) {
        let by_envoy = match event {
            abi::EVENT_LOCAL_CLOSE => true,
            abi::EVENT_REMOTE_CLOSE => false,
            _ => return,
        };
        let now = timer::now_ms();
        self.with((), |w, host, id| w.closed(host, id, by_envoy, now));
    }

    /// The timer thread woke this connection.
    pub fn on_scheduled(&self, filter: FilterEnvoy) {
        let now = timer::now_ms();
        match self.with(Wake::Nothing, |w, host, id| w.wake(host, id, now)) {
            Wake::Nothing => {}
            Wake::SendPing => {
                inject(filter, PING);
                self.with((), |w, host, id| w.ping_sent(host, id, now));
            }
            Wake::Close(_) => close(filter),
        }
        self.config.stats.report_memory();
    }
}

/// Envoy destroys a filter on its worker, or, when a wake was being committed at that moment,
/// on the timer thread (see `timer`): the worker may be busy then, so a removal that cannot
/// take the worker's lock at once is left for the next callback of that worker, which carries it
/// out before anything else; the stat updates of a removal on the timer thread wait for the
/// worker too (`host::MODULE_THREAD`). The timer slot (the connection's id) is freed last, so
/// that a new connection cannot get the id while the old one is still to be removed.
impl Drop for Filter {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        if let Some(worker) = self.config.workers.get(self.worker) {
            match worker.try_lock() {
                Ok(mut w) => {
                    let mut host = NativeHost {
                        stats: &self.config.stats,
                    };
                    w.remove(&mut host, id);
                }
                Err(_) => {
                    if let Some(gone) = self.config.gone.get(self.worker) {
                        gone.lock().unwrap_or_else(PoisonError::into_inner).push(id);
                    }
                }
            }
        }
        timer::unregister(id);
    }
}
