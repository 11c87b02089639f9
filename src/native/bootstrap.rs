//! The bootstrap extension (`extension_name: redis_idle_guard`) that comes with the filter.
//! Optional, and it does two things the filter cannot do alone on Envoy 1.40:
//! - per-upstream stats: a network filter may define stats only in its config_new, before any
//!   cluster is known, and without labels; a bootstrap extension may define labelled ones, so
//!   each upstream's stats carry its cluster as the `upstream_cluster` label;
//! - a clean stop: at Envoy's shutdown it stops the timer thread before the workers go.
//!
//! Without it the filter works the same, with the global stats only.

use super::abi::{self, BootstrapConfigEnvoy, EnvoyBuffer, ModuleBuffer};
use super::host::{on_module_thread, Later, Pending};
use super::{exports::guard, log as envoy_log, timer};
use crate::metrics::{Kind, UpstreamMetric, UPSTREAM_LABEL};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};

/// The extension name the bootstrap config must use.
const NAME: &[u8] = b"redis_idle_guard";

struct UpstreamStats {
    config: usize,
    ids: [usize; UpstreamMetric::ALL.len()],
}

static STATS: OnceLock<UpstreamStats> = OnceLock::new();
/// Cleared at shutdown, before Envoy destroys the configuration the stats belong to.
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn define(config: BootstrapConfigEnvoy) -> UpstreamStats {
    let label = [ModuleBuffer::from(UPSTREAM_LABEL)];
    let mut ids = [0usize; UpstreamMetric::ALL.len()];
    for (slot, metric) in ids.iter_mut().zip(UpstreamMetric::ALL) {
        let name = metric.labelled_name();
        let name = ModuleBuffer::from(name.as_str());
        let mut id = 0;
        // SAFETY: Envoy's config pointer is live in config_new; name and label for the call.
        let result = unsafe {
            match metric.kind() {
                Kind::Counter => {
                    abi::envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
                        config,
                        name,
                        label.as_ptr(),
                        label.len(),
                        &mut id,
                    )
                }
                Kind::Gauge => {
                    abi::envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
                        config,
                        name,
                        label.as_ptr(),
                        label.len(),
                        &mut id,
                    )
                }
                Kind::Histogram => {
                    abi::envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram(
                        config,
                        name,
                        label.as_ptr(),
                        label.len(),
                        &mut id,
                    )
                }
            }
        };
        if result == abi::METRICS_SUCCESS {
            *slot = id;
        } else {
            log::warn!(
                "stat {} not defined (result {result})",
                metric.labelled_name()
            );
        }
    }
    UpstreamStats {
        config: config as usize,
        ids,
    }
}

/// Held across every call that updates a labelled stat: Envoy 1.40 builds a labelled stat's
/// name in the extension configuration's one `StatNamePool`, shared by every worker.
static UPDATE: Mutex<()> = Mutex::new(());

/// Updates made on the module's thread, for the next worker callback (see
/// `host::MODULE_THREAD`).
static LATER: LazyLock<Pending<(String, UpstreamMetric, Later)>> = LazyLock::new(Pending::default);

/// On a worker: carry out the updates made on the module's thread.
pub fn catch_up() {
    for (cluster, metric, update) in LATER.take() {
        match update {
            Later::Add(by) => upstream_add(&cluster, metric, by),
            Later::Record(value) => upstream_record(&cluster, metric, value),
        }
    }
}

fn with_stats(metric: UpstreamMetric, f: impl FnOnce(BootstrapConfigEnvoy, usize)) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    let Some(stats) = STATS.get() else { return };
    let id = stats.ids.get(metric.index()).copied().unwrap_or(0);
    if id != 0 {
        // Nothing under the lock panics; a poisoned lock still serializes.
        let _serial = UPDATE.lock().unwrap_or_else(PoisonError::into_inner);
        f(stats.config as BootstrapConfigEnvoy, id);
    }
}

pub fn upstream_add(cluster: &str, metric: UpstreamMetric, by: i64) {
    if on_module_thread() {
        LATER.push((cluster.to_string(), metric, Later::Add(by)));
        return;
    }
    let Ok(by) = u64::try_from(by) else { return };
    let label = [ModuleBuffer::from(cluster)];
    with_stats(metric, |config, id| {
        // SAFETY: the configuration is live while ACTIVE; an Envoy thread, serialized by
        // UPDATE (see there); the label is live for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
                config,
                id,
                label.as_ptr(),
                label.len(),
                by,
            );
        }
    });
}

pub fn upstream_record(cluster: &str, metric: UpstreamMetric, value: u64) {
    if on_module_thread() {
        LATER.push((cluster.to_string(), metric, Later::Record(value)));
        return;
    }
    let label = [ModuleBuffer::from(cluster)];
    with_stats(metric, |config, id| {
        // SAFETY: as in `upstream_add`.
        unsafe {
            match metric.kind() {
                Kind::Gauge => {
                    abi::envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
                        config,
                        id,
                        label.as_ptr(),
                        label.len(),
                        value,
                    );
                }
                Kind::Histogram => {
                    abi::envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
                        config,
                        id,
                        label.as_ptr(),
                        label.len(),
                        value,
                    );
                }
                Kind::Counter => {}
            }
        }
    });
}

/// A non-null pointer that is not dereferenced: this extension keeps its state in statics.
const TOKEN: *const c_void = NAME.as_ptr().cast();

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_new(
    config: BootstrapConfigEnvoy,
    name: EnvoyBuffer,
    _extension_config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        envoy_log::init();
        // SAFETY: Envoy owns the name for this call.
        if unsafe { name.bytes() } != NAME {
            log::error!("unknown bootstrap extension name (expected redis_idle_guard)");
            return std::ptr::null();
        }
        if STATS.set(define(config)).is_err() {
            log::warn!("a second redis_idle_guard bootstrap extension is ignored");
        }
        ACTIVE.store(true, Ordering::Release);
        // SAFETY: called once, on the main thread, in config_new, as the ABI asks.
        unsafe {
            abi::envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
                config,
            )
        };
        TOKEN
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_destroy(
    _config: *const c_void,
) {
    ACTIVE.store(false, Ordering::Release);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_new(
    _config: *const c_void,
    _extension: *mut c_void,
) -> *const c_void {
    TOKEN
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_shutdown(
    _extension: *mut c_void,
    _module: *const c_void,
    done: Option<unsafe extern "C" fn(*mut c_void)>,
    context: *mut c_void,
) {
    guard((), || {
        ACTIVE.store(false, Ordering::Release);
        timer::stop();
    });
    if let Some(done) = done {
        // SAFETY: Envoy's completion callback, called once with its own context, as asked.
        unsafe { done(context) };
    }
}

// The other hooks Envoy requires of a bootstrap extension: nothing to do in them.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_server_initialized(
    _extension: *mut c_void,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_worker_thread_initialized(
    _extension: *mut c_void,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_drain_started(
    _extension: *mut c_void,
    _module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_destroy(_module: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_scheduled(
    _config: *mut c_void,
    _module: *const c_void,
    _event: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_timer_fired(
    _config: *mut c_void,
    _module: *const c_void,
    _timer: *mut c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_file_changed(
    _config: *mut c_void,
    _module: *const c_void,
    _path: EnvoyBuffer,
    _events: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_add_or_update(
    _config: *mut c_void,
    _module: *const c_void,
    _cluster: EnvoyBuffer,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_removal(
    _config: *mut c_void,
    _module: *const c_void,
    _cluster: EnvoyBuffer,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_add_or_update(
    _config: *mut c_void,
    _module: *const c_void,
    _listener: EnvoyBuffer,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_removal(
    _config: *mut c_void,
    _module: *const c_void,
    _listener: EnvoyBuffer,
) {
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_http_callout_done(
    _config: *mut c_void,
    _module: *const c_void,
    _callout: u64,
    _result: u32,
    _headers: *mut c_void,
    _headers_len: usize,
    _body: *mut c_void,
    _body_len: usize,
) {
}

/// No admin handler is registered; Envoy never calls this.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_admin_request(
    _config: *mut c_void,
    _module: *const c_void,
    _method: EnvoyBuffer,
    _path: EnvoyBuffer,
    _body: EnvoyBuffer,
) -> u32 {
    404
}
