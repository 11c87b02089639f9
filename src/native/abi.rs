//! The part of Envoy's dynamic-module ABI (`abi.h`, version v0.2.0 as in Envoy 1.40) this
//! module uses, declared by hand: the official SDK is not on crates.io. Each declaration was
//! checked against the symbols the 1.40.0 binary exports (`nm -D`) and its argument registers,
//! and each call is exercised by the e2e suite on that binary.

use std::ffi::c_void;

/// The ABI version Envoy 1.40 expects from `envoy_dynamic_module_on_program_init`. A module
/// built for 1.40 loads on 1.40 and 1.41 (Envoy's rule since 1.37).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Bytes owned by Envoy, valid for the callback that handed them out.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// The bytes, for as long as Envoy keeps them (the current callback).
    ///
    /// # Safety
    /// `ptr..ptr+len` must be live bytes owned by Envoy for the lifetime `'a`.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller vouches that Envoy owns these bytes for 'a.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Bytes owned by the module, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl From<&[u8]> for ModuleBuffer {
    fn from(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

impl From<&str> for ModuleBuffer {
    fn from(text: &str) -> ModuleBuffer {
        ModuleBuffer::from(text.as_bytes())
    }
}

pub type FilterConfigEnvoy = *mut c_void;
pub type FilterEnvoy = *mut c_void;
pub type Scheduler = *mut c_void;
pub type BootstrapConfigEnvoy = *mut c_void;

/// `envoy_dynamic_module_type_on_network_filter_data_status`.
pub const STATUS_CONTINUE: u32 = 0;
pub const STATUS_STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_network_connection_event`.
pub const EVENT_REMOTE_CLOSE: u32 = 0;
pub const EVENT_LOCAL_CLOSE: u32 = 1;

/// `envoy_dynamic_module_type_network_connection_close_type`: flush what is written, then close.
pub const CLOSE_FLUSH_WRITE: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_TRACE: u32 = 0;
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

// Plain integers for enums, so that a value we do not know is a value to check, not undefined
// behaviour.
extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    pub fn envoy_dynamic_module_callback_get_concurrency() -> u32;

    pub fn envoy_dynamic_module_callback_network_filter_get_worker_index(
        filter: FilterEnvoy,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_get_upstream_host_cluster(
        filter: FilterEnvoy,
        cluster_out: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
        filter: FilterEnvoy,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
        filter: FilterEnvoy,
        chunks_out: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(
        filter: FilterEnvoy,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(
        filter: FilterEnvoy,
        chunks_out: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_drain_read_buffer(
        filter: FilterEnvoy,
        len: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_drain_write_buffer(
        filter: FilterEnvoy,
        len: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_prepend_read_buffer(
        filter: FilterEnvoy,
        data: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_prepend_write_buffer(
        filter: FilterEnvoy,
        data: ModuleBuffer,
    ) -> bool;
    /// Bytes to the filters after this one (tcp_proxy), i.e. towards Redis.
    pub fn envoy_dynamic_module_callback_network_filter_inject_read_data(
        filter: FilterEnvoy,
        data: ModuleBuffer,
        end_stream: bool,
    );
    pub fn envoy_dynamic_module_callback_network_filter_close(filter: FilterEnvoy, close_type: u32);

    pub fn envoy_dynamic_module_callback_network_filter_scheduler_new(
        filter: FilterEnvoy,
    ) -> Scheduler;
    /// Callable from any thread; a no-op once the filter is gone.
    pub fn envoy_dynamic_module_callback_network_filter_scheduler_commit(
        scheduler: Scheduler,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_network_filter_scheduler_delete(scheduler: Scheduler);

    // Stats of the filter configuration: defined in config_new only (later: Frozen), updated
    // from any thread.
    pub fn envoy_dynamic_module_callback_network_filter_config_define_counter(
        config: FilterConfigEnvoy,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_define_gauge(
        config: FilterConfigEnvoy,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_define_histogram(
        config: FilterConfigEnvoy,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_increment_counter(
        config: FilterConfigEnvoy,
        id: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_increment_gauge(
        config: FilterConfigEnvoy,
        id: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
        config: FilterConfigEnvoy,
        id: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_set_gauge(
        config: FilterConfigEnvoy,
        id: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_config_record_histogram_value(
        config: FilterConfigEnvoy,
        id: usize,
        value: u64,
    ) -> u32;

    // Stats of the bootstrap extension: labelled, defined in its config_new only.
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
        config: BootstrapConfigEnvoy,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
        config: BootstrapConfigEnvoy,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram(
        config: BootstrapConfigEnvoy,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
        config: BootstrapConfigEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
        config: BootstrapConfigEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
        config: BootstrapConfigEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    /// Envoy holds traffic until every bootstrap extension has called this once.
    pub fn envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
        config: BootstrapConfigEnvoy,
    );
}
