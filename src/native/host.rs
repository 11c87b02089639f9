//! The core's [`Host`] over the dynamic-module ABI: the filter configuration's stats, the
//! bootstrap extension's labelled per-upstream stats, the process-wide store, and the timer
//! thread.

use super::abi::{self, FilterConfigEnvoy, ModuleBuffer};
use super::{bootstrap, memory, store, timer};
use crate::duration::Millis;
use crate::host::{ConnectionId, Host, StoreError, Stored, Upstream};
use crate::metrics::{Kind, Metric, UpstreamMetric};
use crate::upstream::UpstreamId;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

thread_local! {
    /// Set on the module's own thread (the timer). Envoy 1.40 creates and records stats
    /// through per-thread caches that exist only on its own threads: a labelled gauge set from
    /// the timer thread crashed Envoy (SIGSEGV in `..._bootstrap_extension_config_set_gauge`,
    /// measured). There, stat updates wait for the next callback on a worker.
    static MODULE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Mark the calling thread as the module's own (see `MODULE_THREAD`).
pub fn mark_module_thread() {
    MODULE_THREAD.with(|m| m.set(true));
}

pub fn on_module_thread() -> bool {
    MODULE_THREAD.with(Cell::get)
}

/// A stat update made on the module's thread, carried out later on a worker.
#[derive(Clone, Copy)]
pub enum Later {
    Add(i64),
    Record(u64),
}

/// Updates waiting for a worker, and whether there are any (checked on every callback).
pub struct Pending<T> {
    any: AtomicBool,
    list: Mutex<Vec<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            any: AtomicBool::new(false),
            list: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Pending<T> {
    pub fn push(&self, item: T) {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
        self.any.store(true, Ordering::Release);
    }

    /// Everything waiting (nothing, at the cost of one atomic load, in the common case).
    pub fn take(&self) -> Vec<T> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The ids of the global stats of one filter configuration (0: not defined).
pub struct Stats {
    config: usize,
    ids: [usize; Metric::ALL.len()],
    later: Pending<(Metric, Later)>,
}

impl Stats {
    /// Define every stat; only possible inside `config_new` (Envoy freezes them after it).
    pub fn define(config: FilterConfigEnvoy) -> Stats {
        let mut ids = [0usize; Metric::ALL.len()];
        for (slot, metric) in ids.iter_mut().zip(Metric::ALL) {
            let name = ModuleBuffer::from(metric.name());
            let mut id = 0;
            // SAFETY: Envoy's config pointer is live during config_new; `name` for the call.
            let result = unsafe {
                match metric.kind() {
                    Kind::Counter => {
                        abi::envoy_dynamic_module_callback_network_filter_config_define_counter(
                            config, name, &mut id,
                        )
                    }
                    Kind::Gauge => {
                        abi::envoy_dynamic_module_callback_network_filter_config_define_gauge(
                            config, name, &mut id,
                        )
                    }
                    Kind::Histogram => {
                        abi::envoy_dynamic_module_callback_network_filter_config_define_histogram(
                            config, name, &mut id,
                        )
                    }
                }
            };
            if result == abi::METRICS_SUCCESS {
                *slot = id;
            } else {
                log::warn!("stat {} not defined (result {result})", metric.name());
            }
        }
        Stats {
            config: config as usize,
            ids,
            later: Pending::default(),
        }
    }

    fn id(&self, metric: Metric) -> usize {
        self.ids.get(metric.index()).copied().unwrap_or(0)
    }

    /// On a worker: carry out the updates made on the module's thread since the last call.
    pub fn catch_up(&self) {
        for (metric, update) in self.later.take() {
            match update {
                Later::Add(by) => self.add(metric, by),
                Later::Record(value) => self.record(metric, value),
            }
        }
        bootstrap::catch_up();
    }

    fn add(&self, metric: Metric, by: i64) {
        let id = self.id(metric);
        if id == 0 || by == 0 {
            return;
        }
        if on_module_thread() {
            self.later.push((metric, Later::Add(by)));
            return;
        }
        let config = self.config as FilterConfigEnvoy;
        let n = by.unsigned_abs();
        // SAFETY: the filter configuration outlives every connection of it (Envoy destroys it
        // after its last filter); on an Envoy thread (see `MODULE_THREAD`).
        unsafe {
            match (metric.kind(), by > 0) {
                (Kind::Counter, true) => {
                    abi::envoy_dynamic_module_callback_network_filter_config_increment_counter(
                        config, id, n,
                    );
                }
                (Kind::Gauge, true) => {
                    abi::envoy_dynamic_module_callback_network_filter_config_increment_gauge(
                        config, id, n,
                    );
                }
                (Kind::Gauge, false) => {
                    abi::envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
                        config, id, n,
                    );
                }
                _ => {}
            }
        }
    }

    fn record(&self, metric: Metric, value: u64) {
        let id = self.id(metric);
        if id == 0 {
            return;
        }
        if on_module_thread() {
            self.later.push((metric, Later::Record(value)));
            return;
        }
        let config = self.config as FilterConfigEnvoy;
        // SAFETY: as in `add`.
        unsafe {
            match metric.kind() {
                Kind::Histogram => {
                    abi::envoy_dynamic_module_callback_network_filter_config_record_histogram_value(
                        config, id, value,
                    );
                }
                Kind::Gauge => {
                    abi::envoy_dynamic_module_callback_network_filter_config_set_gauge(
                        config, id, value,
                    );
                }
                Kind::Counter => {}
            }
        }
    }

    /// Bring `vm_memory_bytes` up to date with the module's heap (set only when it changed).
    pub fn report_memory(&self) {
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        let now = memory::allocated();
        if REPORTED.swap(now, Ordering::Relaxed) != now {
            self.record(Metric::VmMemoryBytes, now as u64);
        }
    }
}

/// Borrowed for one call into a worker.
pub struct NativeHost<'a> {
    pub stats: &'a Stats,
}

impl Host for NativeHost<'_> {
    fn arm(&mut self, id: ConnectionId, at: Millis) {
        timer::arm(id, at);
    }

    fn add(&mut self, metric: Metric, by: i64) {
        self.stats.add(metric, by);
    }

    fn record(&mut self, metric: Metric, value: u64) {
        self.stats.record(metric, value);
    }

    /// Per-upstream stats are labelled, and a labelled counter exists from its first
    /// increment: add 0 to each, so that Prometheus sees it at 0 before its first event
    /// (`increase()` cannot count the event that creates a series).
    fn define_upstream(&mut self, _upstream: UpstreamId, cluster: &str) {
        for metric in UpstreamMetric::ALL {
            if metric.kind() == Kind::Counter {
                bootstrap::upstream_add(cluster, metric, 0);
            }
        }
    }

    fn upstream_add(&mut self, (id, cluster): Upstream, metric: UpstreamMetric, by: i64) {
        if id != 0 {
            bootstrap::upstream_add(cluster, metric, by);
        }
    }

    fn upstream_record(&mut self, (id, cluster): Upstream, metric: UpstreamMetric, value: u64) {
        if id != 0 {
            bootstrap::upstream_record(cluster, metric, value);
        }
    }

    fn shared_get(&mut self, key: &str) -> Result<Option<Stored>, StoreError> {
        store::get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        store::set(key, value, cas)
    }

    /// `inject_read_data` needs no client bytes to carry the PING.
    fn sends_before_client_bytes(&self) -> bool {
        true
    }
}
