//! The network filter's entry points (dynamic-module ABI v0.2.0). Each runs its body under
//! [`guard`]: the core is panic-free by lint, and should a panic happen anyway it stops here,
//! never unwinding into Envoy; the connection then passes through.

use super::abi::{self, EnvoyBuffer, FilterConfigEnvoy, FilterEnvoy};
use super::filter::{Filter, FilterConfig};
use super::host::Stats;
use super::log as envoy_log;
use crate::config::Config;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The filter name the listener config must use.
const NAME: &[u8] = b"redis_idle_guard";

/// Run `f`, or return `fallback` if it panics (the build unwinds, so this catches it).
pub fn guard<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("a callback panicked; this connection passes through untouched");
        fallback
    })
}

/// The filter of a module pointer Envoy hands back (null: none).
///
/// # Safety
/// `ptr` must be null or a pointer returned by `on_network_filter_new` and not yet destroyed.
unsafe fn filter<'a>(ptr: *const c_void) -> Option<&'a Filter> {
    // SAFETY: per the contract above; Envoy calls a filter's hooks on its worker thread only.
    unsafe { ptr.cast::<Filter>().as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    envoy_log::init();
    abi::ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_new(
    config_envoy: FilterConfigEnvoy,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        envoy_log::init();
        // SAFETY: Envoy owns both buffers for this call.
        let (name, bytes) = unsafe { (name.bytes(), config.bytes()) };
        if name != NAME {
            log::error!(
                "unknown filter_name {:?} (expected redis_idle_guard)",
                String::from_utf8_lossy(name)
            );
            return std::ptr::null();
        }
        let config = match Config::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                // Null makes Envoy reject the configuration; this line says why.
                log::error!("{e}");
                return std::ptr::null();
            }
        };
        log::info!("configured: {}", config.describe());
        let stats = Stats::define(config_envoy);
        // SAFETY: config_new runs on the main thread, where this must be called.
        let concurrency = unsafe { abi::envoy_dynamic_module_callback_get_concurrency() };
        let concurrency = usize::try_from(concurrency).unwrap_or(1);
        Arc::into_raw(Arc::new(FilterConfig::new(config, stats, concurrency))).cast()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_destroy(config: *const c_void) {
    guard((), || {
        if !config.is_null() {
            // SAFETY: the pointer config_new returned, released once, here.
            drop(unsafe { Arc::from_raw(config.cast::<FilterConfig>()) });
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new(
    config: *const c_void,
    filter_envoy: FilterEnvoy,
) -> *const c_void {
    guard(std::ptr::null(), || {
        if config.is_null() {
            return std::ptr::null();
        }
        let config = config.cast::<FilterConfig>();
        // SAFETY: the pointer config_new returned, alive until config_destroy, which Envoy calls
        // only after the last filter of it is gone; this takes one more reference.
        let config = unsafe {
            Arc::increment_strong_count(config);
            Arc::from_raw(config)
        };
        Box::into_raw(Box::new(Filter::new(config, filter_envoy))).cast()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(
    _filter_envoy: FilterEnvoy,
    module: *const c_void,
) -> u32 {
    guard(abi::STATUS_CONTINUE, || {
        // SAFETY: Envoy passes back the pointer on_network_filter_new returned.
        if let Some(f) = unsafe { filter(module) } {
            f.on_new_connection();
        }
        abi::STATUS_CONTINUE
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_read(
    filter_envoy: FilterEnvoy,
    module: *const c_void,
    data_length: usize,
    end_stream: bool,
) -> u32 {
    guard(abi::STATUS_CONTINUE, || {
        // SAFETY: as above.
        match unsafe { filter(module) } {
            Some(f) if !f.on_read(filter_envoy, data_length, end_stream) => {
                abi::STATUS_STOP_ITERATION
            }
            _ => abi::STATUS_CONTINUE,
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_write(
    filter_envoy: FilterEnvoy,
    module: *const c_void,
    data_length: usize,
    end_stream: bool,
) -> u32 {
    guard(abi::STATUS_CONTINUE, || {
        // SAFETY: as above.
        if let Some(f) = unsafe { filter(module) } {
            f.on_write(filter_envoy, data_length, end_stream);
        }
        abi::STATUS_CONTINUE
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_event(
    _filter_envoy: FilterEnvoy,
    module: *const c_void,
    event: u32,
) {
    guard((), || {
        // SAFETY: as above.
        if let Some(f) = unsafe { filter(module) } {
            f.on_event(event);
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_scheduled(
    filter_envoy: FilterEnvoy,
    module: *const c_void,
    _event_id: u64,
) {
    guard((), || {
        // SAFETY: as above (Envoy calls this only while the filter is alive).
        if let Some(f) = unsafe { filter(module) } {
            f.on_scheduled(filter_envoy);
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_destroy(module: *const c_void) {
    guard((), || {
        if !module.is_null() {
            // SAFETY: the pointer on_network_filter_new returned, released once, here.
            drop(unsafe { Box::from_raw(module.cast::<Filter>().cast_mut()) });
        }
    });
}
