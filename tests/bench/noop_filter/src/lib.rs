//! A proxy-wasm (ABI 0.2.1) network filter that does nothing: the cost floor of running any
//! Wasm network filter in Envoy (a VM call per callback, the buffer plumbing around it).
//!
//! With any plugin configuration it instead does what redis-idle-guard does to every client
//! read and nothing else: `proxy_continue_stream(downstream)` and return Pause, which keeps
//! Envoy's read buffer reachable for a later injection from the timer (the paused-buffer
//! technique). The two modes separate the cost of that technique from the rest.

use std::cell::Cell;
use std::mem::MaybeUninit;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

thread_local! {
    static PAUSE_MODE: Cell<bool> = const { Cell::new(false) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[export_name = "malloc"]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut bytes: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit needs no initialisation; the host writes the bytes before use.
    unsafe { bytes.set_len(size) };
    Box::into_raw(bytes.into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _root_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_context_id: u32, size: usize) -> bool {
    PAUSE_MODE.with(|m| m.set(size > 0));
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(_context_id: u32, _size: usize, eos: bool) -> u32 {
    if eos || !PAUSE_MODE.with(Cell::get) {
        return 0;
    }
    // SAFETY: plain value call. A refusal just leaves the bytes paused until the next read.
    if unsafe { proxy_continue_stream(2) } != 0 {
        return 0;
    }
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_data(_context_id: u32, _size: usize, _eos: bool) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_connection_close(_context_id: u32, _peer: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_connection_close(_context_id: u32, _peer: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_done(_context_id: u32) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
