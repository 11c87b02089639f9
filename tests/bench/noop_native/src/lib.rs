//! An Envoy dynamic-module network filter (ABI v0.2.0, Envoy 1.40) that sees every byte and
//! does nothing else: in each data callback it takes the buffer's slices (zero-copy) and counts
//! the line feeds in them, then returns Continue. The floor of any native filter that must
//! look at the bytes it proxies, as redis-idle-guard must to frame RESP.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    len: usize,
}

extern "C" {
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(f: *mut c_void) -> usize;
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
        f: *mut c_void,
        out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(f: *mut c_void) -> usize;
    fn envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(
        f: *mut c_void,
        out: *mut EnvoyBuffer,
    ) -> bool;
}

/// Line feeds seen: kept so that the scan is not optimised away.
static SEEN: AtomicU64 = AtomicU64::new(0);
const TOKEN: *const c_void = b"noop\0".as_ptr().cast();

unsafe fn scan(n: usize, get: impl FnOnce(*mut EnvoyBuffer) -> bool) {
    let mut chunks = [EnvoyBuffer { ptr: std::ptr::null(), len: 0 }; 16];
    if n == 0 || n > chunks.len() || !get(chunks.as_mut_ptr()) {
        return;
    }
    let mut lf = 0u64;
    for c in &chunks[..n] {
        if !c.ptr.is_null() {
            lf += std::slice::from_raw_parts(c.ptr, c.len).iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    SEEN.fetch_add(lf, Ordering::Relaxed);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    b"v0.2.0\0".as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_new(
    _c: *mut c_void,
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    TOKEN
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_destroy(_c: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new(_c: *const c_void, _f: *mut c_void) -> *const c_void {
    TOKEN
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(_f: *mut c_void, _m: *const c_void) -> u32 {
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_read(f: *mut c_void, _m: *const c_void, _n: usize, _e: bool) -> u32 {
    let n = envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(f);
    scan(n, |out| envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(f, out));
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_write(f: *mut c_void, _m: *const c_void, _n: usize, _e: bool) -> u32 {
    let n = envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks_size(f);
    scan(n, |out| envoy_dynamic_module_callback_network_filter_get_write_buffer_chunks(f, out));
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_event(_f: *mut c_void, _m: *const c_void, _e: u32) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_destroy(_m: *const c_void) {}
