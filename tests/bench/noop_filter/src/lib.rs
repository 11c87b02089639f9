//! A proxy-wasm (ABI 0.2.1) network filter that does nothing: the cost floor of running any
//! Wasm network filter in Envoy (a VM call per callback, the buffer plumbing around it).

use std::mem::MaybeUninit;

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
pub extern "C" fn proxy_on_configure(_context_id: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(_context_id: u32, _size: usize, _eos: bool) -> u32 {
    0
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
