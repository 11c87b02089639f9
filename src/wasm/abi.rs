//! The proxy-wasm host calls the filter makes, declared raw so that every status is ours to
//! handle (the Rust SDK's helpers panic on a non-Ok status, and a panic traps the VM and every
//! connection on that worker; the filter does not use the SDK at all).

use crate::host::{StoreError, Stored};
use crate::session::Buffer;
use std::cell::Cell;

// ABI 0.2.1 enumerations, as the host passes them.
const BUFFER_DOWNSTREAM: u32 = 2;
const BUFFER_UPSTREAM: u32 = 3;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const STREAM_DOWNSTREAM: u32 = 2;
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;
const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
/// `proxy_set_shared_data` with a CAS that is no longer the value's.
const STATUS_CAS_MISMATCH: u32 = 8;

/// A host call that did not return Ok, with the raw status (1 NotFound, 2 BadArgument, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u32);

// Plain u32 statuses and enums, so that an unexpected value from the host is a value to check,
// not undefined behaviour.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_status(
        buffer_type: u32,
        return_length: *mut usize,
        return_flags: *mut u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

fn check(status: u32) -> Result<(), Refused> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(Refused(status))
    }
}

/// The `log` facade's backend: Envoy's log (component `wasm`), which filters by level itself.
struct EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        // proxy-wasm levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error.
        let level = match record.level() {
            log::Level::Error => 4,
            log::Level::Warn => 3,
            log::Level::Info => 2,
            log::Level::Debug => 1,
            log::Level::Trace => 0,
        };
        let message = format!("redis-idle-guard: {}", record.args());
        // SAFETY: pointer and length describe a live String for the duration of the call.
        // A refused log line is dropped: nothing to do about it.
        let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
    }

    fn flush(&self) {}
}

static LOGGER: EnvoyLog = EnvoyLog;

/// Route the `log` facade to Envoy (once per VM; later calls change nothing).
pub fn init_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// Host clock in milliseconds. `SystemTime::now` traps on wasm32-unknown-unknown.
pub fn now_ms() -> Result<u64, Refused> {
    let mut ns: u64 = 0;
    // SAFETY: the host writes one u64 to a valid pointer.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns / 1_000_000)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn set_effective_context(context_id: u32) -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_set_effective_context(context_id) })
}

pub fn continue_downstream() -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_continue_stream(STREAM_DOWNSTREAM) })
}

/// Close the client connection (Envoy flushes what is already written, then closes).
pub fn close_downstream() -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_close_stream(STREAM_DOWNSTREAM) })
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, Refused> {
    let mut id = 0;
    // SAFETY: name is a live &str; the host writes one u32.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Refused> {
    // SAFETY: plain value call.
    check(unsafe { proxy_record_metric(id, value) })
}

fn buffer_len(buffer_type: u32) -> Result<usize, Refused> {
    let mut len = 0;
    let mut flags = 0;
    // SAFETY: the host writes to two valid pointers.
    check(unsafe { proxy_get_buffer_status(buffer_type, &mut len, &mut flags) })?;
    Ok(len)
}

fn buffer_bytes(buffer_type: u32, start: usize, max: usize) -> Result<Vec<u8>, Refused> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on Ok the host has allocated `size` bytes with our exported allocator
    // (proxy_on_memory_allocate: a forgotten Vec<u8> of capacity `size`), which we now own.
    unsafe {
        check(proxy_get_buffer_bytes(
            buffer_type,
            start,
            max,
            &mut data,
            &mut size,
        ))?;
        if data.is_null() {
            return Ok(Vec::new());
        }
        Ok(Vec::from_raw_parts(data, size, size))
    }
}

fn set_buffer_bytes(
    buffer_type: u32,
    start: usize,
    len: usize,
    with: &[u8],
) -> Result<(), Refused> {
    // SAFETY: `with` is a live slice for the duration of the call.
    check(unsafe { proxy_set_buffer_bytes(buffer_type, start, len, with.as_ptr(), with.len()) })
}

/// A connection property, e.g. `["xds", "cluster_name"]`; `Ok(None)` when the host has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Refused> {
    let encoded = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: `encoded` is live for the call; on Ok the host allocated `size` bytes with our
    // exported allocator (a forgotten Vec<u8> of capacity `size`), which we now own.
    let status =
        unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    if status == STATUS_NOT_FOUND {
        return Ok(None);
    }
    check(status)?;
    if data.is_null() {
        return Ok(Some(Vec::new()));
    }
    // SAFETY: see above.
    Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) }))
}

/// A shared-data value and its CAS (one store per vm_id, seen by every worker's VM);
/// `Ok(None)` when the key is not set.
pub fn shared_data(key: &str) -> Result<Option<Stored>, StoreError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: `key` is live for the call; on Ok the host allocated `size` bytes with our
    // exported allocator (a forgotten Vec<u8> of capacity `size`), which we now own.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    if status == STATUS_NOT_FOUND {
        return Ok(None);
    }
    check(status).map_err(|_| StoreError::Refused)?;
    if data.is_null() {
        return Ok(Some((Vec::new(), cas)));
    }
    // SAFETY: see above.
    Ok(Some((
        unsafe { Vec::from_raw_parts(data, size, size) },
        cas,
    )))
}

/// Set a shared-data value if its CAS is still `cas` (0: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
    // SAFETY: `key` and `value` are live for the call.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        STATUS_OK => Ok(()),
        STATUS_CAS_MISMATCH => Err(StoreError::CasMismatch),
        _ => Err(StoreError::Refused),
    }
}

pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, Refused> {
    if size == 0 {
        return Ok(Vec::new());
    }
    buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size)
}

/// Append bytes to the client connection's read buffer (kept by Envoy while the last
/// `on_downstream_data` returned Pause), from outside any data callback.
pub fn append_downstream(bytes: &[u8]) -> Result<(), Refused> {
    let len = buffer_len(BUFFER_DOWNSTREAM)?;
    set_buffer_bytes(BUFFER_DOWNSTREAM, len, 0, bytes)
}

/// A read buffer kept between callbacks is at most this big (a header window is at most
/// 16 KiB; a larger read, which is rare, gets memory of its own and gives it back).
const SCRATCH_KEEP: usize = 32 * 1024;

thread_local! {
    /// The reused read buffer, between callbacks. One VM runs on one thread and its callbacks
    /// do not nest: one is enough.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// Set only during `proxy_get_buffer_bytes`: where the host's `malloc` for that call may
    /// put the bytes (pointer and capacity of the read buffer) instead of allocating.
    static LENT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// For the exported `malloc`: the lent read buffer, if the host is filling a buffer read of
/// at most its capacity. Taken once: any other allocation in the same call is a real one.
pub fn take_lent(size: usize) -> Option<*mut u8> {
    let (ptr, capacity) = LENT.try_with(Cell::take).ok().flatten()?;
    (size <= capacity).then_some(ptr as *mut u8)
}

/// One direction's data inside its own callback. Reads land in a buffer reused across reads
/// and callbacks, so a read costs the host call and no allocation.
pub struct HostBuffer {
    buffer_type: u32,
    len: usize,
    scratch: Vec<u8>,
}

impl HostBuffer {
    fn new(buffer_type: u32, len: usize) -> HostBuffer {
        HostBuffer {
            buffer_type,
            len,
            scratch: SCRATCH.try_with(Cell::take).unwrap_or_default(),
        }
    }
    pub fn downstream(len: usize) -> HostBuffer {
        HostBuffer::new(BUFFER_DOWNSTREAM, len)
    }
    pub fn upstream(len: usize) -> HostBuffer {
        HostBuffer::new(BUFFER_UPSTREAM, len)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if self.scratch.capacity() <= SCRATCH_KEEP {
            let scratch = std::mem::take(&mut self.scratch);
            let _ = SCRATCH.try_with(|s| s.set(scratch));
        }
    }
}

impl Buffer for HostBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        self.scratch.clear();
        let want = len.min(SCRATCH_KEEP);
        if self.scratch.capacity() < want {
            self.scratch.reserve(want);
        }
        let lent = self.scratch.as_mut_ptr();
        let capacity = self.scratch.capacity();
        let _ = LENT.try_with(|l| l.set(Some((lent as usize, capacity))));
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes two out-parameters; the bytes go to memory our malloc gave it.
        let status =
            unsafe { proxy_get_buffer_bytes(self.buffer_type, start, len, &mut data, &mut size) };
        let _ = LENT.try_with(|l| l.set(None));
        check(status).ok()?;
        if data.is_null() {
            return Some(&[]);
        }
        if data == lent && size <= capacity {
            // SAFETY: the host wrote `size` bytes into the lent spare capacity.
            unsafe { self.scratch.set_len(size) };
        } else {
            // SAFETY: the host allocated `size` bytes with our malloc (a forgotten Vec<u8> of
            // capacity `size`), which we now own; it replaces the read buffer.
            self.scratch = unsafe { Vec::from_raw_parts(data, size, size) };
        }
        Some(&self.scratch)
    }

    fn replace_prefix(&mut self, upto: usize, with: &[u8]) -> bool {
        if set_buffer_bytes(self.buffer_type, 0, upto, with).is_err() {
            return false;
        }
        self.len = self.len - upto.min(self.len) + with.len();
        true
    }
}
