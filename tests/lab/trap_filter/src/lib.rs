//! A proxy-wasm (ABI 0.2.1) network filter that passes every byte through and traps its VM on
//! demand, so that tests can watch what Envoy does with the open and the new connections when
//! a filter's VM fails mid-traffic (tests/e2e/test_vm_failure.py). Test-only: the product has
//! no such switch.
//!
//! Two triggers, both a wasm `unreachable` (what a Rust panic with panic=abort becomes):
//! - a client sends bytes containing `TRAPVM` (the trap is in that connection's
//!   `proxy_on_downstream_data`);
//! - plugin configuration `trap_after_ms=N`: the root context's tick traps N ms after the VM was
//!   configured, in a VM with connections open (a worker's, not the main thread's), once per
//!   Envoy process (a flag in proxy-wasm shared data, which outlives the VM, so a reloaded VM
//!   behaves).
//!
//! What Envoy sees of it, as stats (`wasmcustom.trap_filter.*`): `vm_starts` (a VM started: 2
//! after a reload), `connections_opened` (connections that went through a live VM: a connection
//! that bypasses a failed VM does not count), `reads` (client reads the VM saw), and the gauge
//! `connections` (+1 when a connection's context is created, -1 when it is done, as
//! redis-idle-guard keeps `redis_idle_guard.connections`).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

const BUFFER_DOWNSTREAM: u32 = 2;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const COUNTER: u32 = 0;
const GAUGE: u32 = 1;
const MAGIC: &[u8] = b"TRAPVM";
const TRAPPED_KEY: &[u8] = b"trap_filter.trapped";

thread_local! {
    static TRAP_AT_NS: Cell<u64> = const { Cell::new(0) };
    static METRICS: Cell<[u32; 4]> = const { Cell::new([u32::MAX; 4]) };
    /// The connections' (stream) contexts, to count them down when they are deleted.
    static STREAMS: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
}

#[derive(Clone, Copy)]
enum Stat {
    VmStarts,
    ConnectionsOpened,
    Reads,
    Connections,
}

fn define(kind: u32, name: &str) -> u32 {
    let mut id = u32::MAX;
    // SAFETY: the host reads `name` and writes one u32.
    unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    id
}

fn add(stat: Stat, by: i64) {
    let mut ids = METRICS.with(Cell::get);
    if ids[stat as usize] == u32::MAX {
        ids = [
            define(COUNTER, "trap_filter.vm_starts"),
            define(COUNTER, "trap_filter.connections_opened"),
            define(COUNTER, "trap_filter.reads"),
            define(GAUGE, "trap_filter.connections"),
        ];
        METRICS.with(|m| m.set(ids));
    }
    // SAFETY: plain value call.
    unsafe { proxy_increment_metric(ids[stat as usize], by) };
}

fn buffer(buffer_type: u32, size: usize) -> Vec<u8> {
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

fn now_ns() -> u64 {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64.
    unsafe { proxy_get_current_time_nanoseconds(&mut ns) };
    ns
}

/// Whether a VM of this Envoy process already trapped on its timer.
fn trapped_before() -> bool {
    let mut data: *mut u8 = std::ptr::null_mut();
    let (mut len, mut cas) = (0usize, 0u32);
    // SAFETY: the host writes a pointer allocated with our malloc (leaked: a few bytes, once).
    let status = unsafe {
        proxy_get_shared_data(
            TRAPPED_KEY.as_ptr(),
            TRAPPED_KEY.len(),
            &mut data,
            &mut len,
            &mut cas,
        )
    };
    status == 0 && len > 0
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[export_name = "malloc"]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _size: usize) -> bool {
    add(Stat::VmStarts, 1);
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_context_id: u32, size: usize) -> bool {
    let config = buffer(BUFFER_PLUGIN_CONFIGURATION, size);
    let config = String::from_utf8_lossy(&config);
    for word in config.split_whitespace() {
        match word
            .strip_prefix("trap_after_ms=")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(ms) => {
                if !trapped_before() {
                    TRAP_AT_NS.with(|t| t.set(now_ns() + u64::from(ms) * 1_000_000));
                    // SAFETY: plain value call.
                    unsafe { proxy_set_tick_period_milliseconds(50) };
                }
            }
            None => return false,
        }
    }
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(_context_id: u32) {
    let at = TRAP_AT_NS.with(Cell::get);
    // Only a VM with connections open traps (the main thread's VM ticks too, but carries none).
    let carries = STREAMS.with(|s| !s.borrow().is_empty());
    if at != 0 && carries && now_ns() >= at && !trapped_before() {
        // SAFETY: the host copies the key and the value.
        unsafe {
            proxy_set_shared_data(TRAPPED_KEY.as_ptr(), TRAPPED_KEY.len(), b"1".as_ptr(), 1, 0)
        };
        core::arch::wasm32::unreachable();
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id != 0 {
        STREAMS.with(|s| s.borrow_mut().insert(context_id));
        add(Stat::ConnectionsOpened, 1);
        add(Stat::Connections, 1);
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(_context_id: u32, size: usize, _eos: bool) -> u32 {
    add(Stat::Reads, 1);
    let data = buffer(BUFFER_DOWNSTREAM, size);
    if data.windows(MAGIC.len()).any(|w| w == MAGIC) {
        core::arch::wasm32::unreachable();
    }
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
pub extern "C" fn proxy_on_delete(context_id: u32) {
    if STREAMS.with(|s| s.borrow_mut().remove(&context_id)) {
        add(Stat::Connections, -1);
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}
