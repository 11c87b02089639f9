//! A proxy-wasm (ABI 0.2.1) network filter that does nothing: the cost floor of running any
//! Wasm network filter in Envoy (a VM call per callback, the buffer plumbing around it).
//!
//! Its plugin configuration, space-separated words, adds work to every data callback:
//! - `pause`: what redis-idle-guard does to every client read and nothing else:
//!   `proxy_continue_stream(downstream)` and return Pause, which keeps Envoy's read buffer
//!   reachable for a later injection from the timer (the paused-buffer technique);
//! - `spin=N`: N rounds of a fixed arithmetic loop (calibrates what a wasm instruction costs
//!   in Envoy's V8; tests/bench_instructions.rs counts the loop's instructions);
//! - `clock=K`: K `proxy_get_current_time_nanoseconds` host calls (calibrates a host call);
//! - `read=K`: K one-byte reads of the callback's own buffer (`proxy_get_buffer_bytes`, which
//!   calls back into the module's `malloc`: calibrates a buffer read).
//!
//! The modes separate the cost of the technique, of module code and of host calls.

use std::cell::Cell;
use std::mem::MaybeUninit;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

thread_local! {
    static PAUSE_MODE: Cell<bool> = const { Cell::new(false) };
    static SPIN: Cell<u32> = const { Cell::new(0) };
    static CLOCK_READS: Cell<u32> = const { Cell::new(0) };
    static BUFFER_READS: Cell<u32> = const { Cell::new(0) };
    static SINK: Cell<u64> = const { Cell::new(0) };
}

fn buffer_bytes(buffer_type: u32, size: usize) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: on Ok the host allocated `len` bytes with our malloc (a forgotten boxed slice).
    unsafe {
        if proxy_get_buffer_bytes(buffer_type, 0, size, &mut data, &mut len) != 0 || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, len, len)
    }
}

fn plugin_configuration(size: usize) -> Vec<u8> {
    buffer_bytes(7, size)
}

/// The calibration work of one data callback on `buffer_type`.
fn extra_work(buffer_type: u32) {
    for _ in 0..BUFFER_READS.with(Cell::get) {
        let byte = buffer_bytes(buffer_type, 1);
        SINK.with(|s| s.set(s.get() ^ byte.len() as u64));
    }
    let rounds = SPIN.with(Cell::get);
    if rounds > 0 {
        // An LCG: a multiply and an add per round that the optimiser cannot fold away.
        let mut x = SINK.with(Cell::get);
        for i in 0..rounds {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(u64::from(i)),
            );
        }
        SINK.with(|s| s.set(x));
    }
    for _ in 0..CLOCK_READS.with(Cell::get) {
        let mut ns = 0u64;
        // SAFETY: the host writes one u64.
        unsafe { proxy_get_current_time_nanoseconds(&mut ns) };
        SINK.with(|s| s.set(s.get() ^ ns));
    }
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
    let config = if size > 0 {
        plugin_configuration(size)
    } else {
        Vec::new()
    };
    let config = String::from_utf8_lossy(&config);
    for word in config.split_whitespace() {
        let number = |prefix: &str| word.strip_prefix(prefix).and_then(|n| n.parse().ok());
        if word == "pause" {
            PAUSE_MODE.with(|m| m.set(true));
        } else if let Some(n) = number("spin=") {
            SPIN.with(|s| s.set(n));
        } else if let Some(k) = number("clock=") {
            CLOCK_READS.with(|c| c.set(k));
        } else if let Some(k) = number("read=") {
            BUFFER_READS.with(|c| c.set(k));
        } else {
            return false;
        }
    }
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(_context_id: u32, _size: usize, eos: bool) -> u32 {
    extra_work(2);
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
    extra_work(3);
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
pub extern "C" fn proxy_on_tick(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
