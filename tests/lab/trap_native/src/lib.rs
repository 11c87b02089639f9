//! An Envoy dynamic-module network filter (ABI v0.2.0, Envoy 1.40) that passes every byte
//! through and panics when a client sends a magic word, so that tests can watch what a panic in
//! a native filter does (tests/e2e/test_vm_failure.py). Test-only: the product has no such switch.
//!
//! - `PANICCAUGHT`: the panic happens inside `catch_unwind`, as every entry point of the
//!   product's native build runs (src/native/exports.rs `guard`): the callback returns Continue;
//! - `PANICVM`: the panic is not caught; it reaches the `extern "C"` boundary, where Rust aborts
//!   the process (a panic cannot unwind out of an `extern "C"` function).
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    len: usize,
}

extern "C" {
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
        f: *mut c_void,
    ) -> usize;
    fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
        f: *mut c_void,
        out: *mut EnvoyBuffer,
    ) -> bool;
}

const TOKEN: *const c_void = c"trap".as_ptr().cast();

/// The bytes of the read buffer (a copy: test-only, small reads).
unsafe fn read_bytes(f: *mut c_void) -> Vec<u8> {
    let n = envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(f);
    let mut chunks = vec![
        EnvoyBuffer {
            ptr: std::ptr::null(),
            len: 0
        };
        n
    ];
    if n == 0
        || !envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
            f,
            chunks.as_mut_ptr(),
        )
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for c in &chunks {
        if !c.ptr.is_null() {
            out.extend_from_slice(std::slice::from_raw_parts(c.ptr, c.len));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    c"v0.2.0".as_ptr().cast()
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
pub extern "C" fn envoy_dynamic_module_on_network_filter_new(
    _c: *const c_void,
    _f: *mut c_void,
) -> *const c_void {
    TOKEN
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(
    _f: *mut c_void,
    _m: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_read(
    f: *mut c_void,
    _m: *const c_void,
    _n: usize,
    _e: bool,
) -> u32 {
    let data = read_bytes(f);
    if contains(&data, b"PANICCAUGHT") {
        let caught = catch_unwind(AssertUnwindSafe(|| panic!("trap-native: a caught panic")));
        debug_assert!(caught.is_err());
        return 0;
    }
    if contains(&data, b"PANICVM") {
        panic!("trap-native: an uncaught panic");
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_network_filter_write(
    _f: *mut c_void,
    _m: *const c_void,
    _n: usize,
    _e: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_event(
    _f: *mut c_void,
    _m: *const c_void,
    _e: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_destroy(_m: *const c_void) {}
