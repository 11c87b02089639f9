//! The proxy-wasm ABI 0.2.1 host calls a network filter makes, with Envoy 1.40's semantics as
//! measured (../shared/docs/envoy-network-wasm-facts.md) and as written in Envoy's
//! source/extensions/common/wasm/context.cc and proxy-wasm-cpp-host's src/exports.cc.
//!
//! Any other import the module declares is linked to a function that traps with its name, so
//! a module that starts calling something this host does not model fails its tests loudly.

use super::state::*;
use wasmtime::{format_err, Caller, Extern, Linker, Module, Result};

type C<'a> = Caller<'a, State>;

/// Calls this host implements; every other `env.*` import traps when called.
pub const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_status",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_set_effective_context",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
];

fn memory(caller: &mut C<'_>) -> Result<wasmtime::Memory> {
    caller
        .data()
        .memory
        .ok_or_else(|| format_err!("test host: module has no exported memory"))
}

/// Bytes at `[ptr, ptr+len)` of the module's memory, or None if out of bounds.
fn read(caller: &mut C<'_>, ptr: i32, len: i32) -> Result<Option<Vec<u8>>> {
    let mem = memory(caller)?;
    let data = mem.data(&caller);
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    Ok(ptr
        .checked_add(len)
        .and_then(|end| data.get(ptr..end))
        .map(<[u8]>::to_vec))
}

fn write(caller: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<bool> {
    let mem = memory(caller)?;
    let data = mem.data_mut(caller);
    let ptr = ptr as u32 as usize;
    let Some(slot) = ptr
        .checked_add(bytes.len())
        .and_then(|end| data.get_mut(ptr..end))
    else {
        return Ok(false);
    };
    slot.copy_from_slice(bytes);
    Ok(true)
}

/// Copy `bytes` into memory the module allocates with its exported `malloc`, as Envoy does,
/// and write the pointer and size to the module's out-parameters.
fn hand_over(caller: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<i32> {
    let malloc = caller
        .data()
        .malloc
        .clone()
        .ok_or_else(|| format_err!("test host: module exports no malloc"))?;
    let fuel_before = caller.get_fuel().ok();
    let ptr = malloc.call(&mut *caller, bytes.len() as i32)?;
    if let (Some(before), Ok(after)) = (fuel_before, caller.get_fuel()) {
        caller.data_mut().malloc_fuel += before - after;
    }
    if ptr == 0 || !write(caller, ptr, bytes)? {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    if !write(caller, ptr_ptr, &ptr.to_le_bytes())?
        || !write(caller, size_ptr, &(bytes.len() as u32).to_le_bytes())?
    {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

/// What a buffer type resolves to in the current context, per Envoy's `Context::getBuffer`.
enum View {
    /// No such buffer here (`getBuffer` returned nullptr): NotFound.
    Missing,
    /// `buffer_.set(nullptr)`: the network data pointer is not set. Status says size 0,
    /// reads return nothing, writes are BadArgument (proxy-wasm-cpp-host's BufferBase).
    Null,
    /// Readable, not writable (configuration buffers).
    Const(Vec<u8>),
    /// A network data buffer the module may read and rewrite.
    Data(Vec<u8>),
}

const BUFFER_DOWNSTREAM: i32 = 2;
const BUFFER_UPSTREAM: i32 = 3;
const BUFFER_VM_CONFIGURATION: i32 = 6;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;
const BUFFER_TYPE_MAX: i32 = 8;

fn downstream_visible(s: &State, id: u32, conn: &Conn) -> bool {
    if !conn.read_pointer {
        return false;
    }
    // The fault models an Envoy that drops its pointer as soon as the data callback ends.
    !s.faults.no_paused_buffer || s.frame == Some((id, Callback::DownstreamData))
}

fn view(s: &State, buffer_type: i32) -> Result<View, i32> {
    if !(0..=BUFFER_TYPE_MAX).contains(&buffer_type) {
        return Err(BAD_ARGUMENT);
    }
    match buffer_type {
        BUFFER_VM_CONFIGURATION => Ok(View::Const(s.vm_config.clone())),
        BUFFER_PLUGIN_CONFIGURATION => Ok(View::Const(s.plugin_config.clone())),
        BUFFER_DOWNSTREAM | BUFFER_UPSTREAM => {
            let Some(id) = s.context() else {
                return Ok(View::Null);
            };
            let Some(conn) = s.conns.get(&id) else {
                // The root context has no network buffers: its pointers are always null.
                return Ok(View::Null);
            };
            let data = if buffer_type == BUFFER_DOWNSTREAM {
                downstream_visible(s, id, conn).then(|| conn.read_buffer.clone())
            } else {
                conn.write_buffer.clone()
            };
            Ok(data.map_or(View::Null, View::Data))
        }
        _ => Ok(View::Missing),
    }
}

fn data_mut(s: &mut State, buffer_type: i32) -> Option<&mut Vec<u8>> {
    let id = s.context()?;
    let visible = {
        let conn = s.conns.get(&id)?;
        match buffer_type {
            BUFFER_DOWNSTREAM => downstream_visible(s, id, conn),
            BUFFER_UPSTREAM => conn.write_buffer.is_some(),
            _ => false,
        }
    };
    if !visible {
        return None;
    }
    let conn = s.conns.get_mut(&id)?;
    match buffer_type {
        BUFFER_DOWNSTREAM => Some(&mut conn.read_buffer),
        _ => conn.write_buffer.as_mut(),
    }
}

fn metric_index(id: i32) -> usize {
    (id as u32 >> 2) as usize
}

pub fn link(linker: &mut Linker<State>, module: &Module) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, size: i32| -> Result<i32> {
            c.data_mut().count("proxy_log");
            let Some(bytes) = read(&mut c, ptr, size)? else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let s = c.data_mut();
            let context = s.context().unwrap_or(0);
            s.logs.push(LogLine {
                level: level as u32,
                context,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| -> Result<i32> {
            c.data_mut().count("proxy_get_current_time_nanoseconds");
            if c.data().faults.no_clock {
                return Ok(BAD_ARGUMENT);
            }
            let now = c.data().now_ns;
            Ok(if write(&mut c, ptr, &now.to_le_bytes())? {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;

    // Envoy's Wasm::setTickPeriod: one timer per root context, first fire one period after it
    // is started, re-armed after each tick with the period current then.
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_set_tick_period_milliseconds");
            let was_running = s.next_tick_ns.is_some() && s.tick_period_ms > 0;
            s.tick_period_ms = period as u32;
            if s.tick_period_ms > 0 && !was_running {
                s.next_tick_ns = Some(s.now_ns + u64::from(s.tick_period_ms) * 1_000_000);
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, buffer_type: i32, len_ptr: i32, flags_ptr: i32| -> Result<i32> {
            c.data_mut().count("proxy_get_buffer_status");
            let len = match view(c.data(), buffer_type) {
                Err(status) => return Ok(status),
                Ok(View::Missing) => return Ok(NOT_FOUND),
                Ok(View::Null) => 0,
                Ok(View::Const(b) | View::Data(b)) => b.len(),
            };
            if !write(&mut c, len_ptr, &(len as u32).to_le_bytes())?
                || !write(&mut c, flags_ptr, &0u32.to_le_bytes())?
            {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            Ok(OK)
        },
    )?;

    // proxy-wasm-cpp-host's get_buffer_bytes: clip the length to the buffer; a zero length
    // returns Ok without touching the out-parameters.
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>,
         buffer_type: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            c.data_mut().count("proxy_get_buffer_bytes");
            let bytes = match view(c.data(), buffer_type) {
                Err(status) => return Ok(status),
                Ok(View::Missing) => return Ok(NOT_FOUND),
                Ok(View::Null) => Vec::new(),
                Ok(View::Const(b) | View::Data(b)) => b,
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > bytes.len() {
                // Envoy computes size - start in unsigned arithmetic here: undefined territory.
                c.data_mut().violation(format!(
                    "proxy_get_buffer_bytes(type {buffer_type}) from offset {start} past the end ({})",
                    bytes.len()
                ));
                return Ok(BAD_ARGUMENT);
            }
            let end = (start + max).min(bytes.len());
            if end == start {
                return Ok(OK);
            }
            hand_over(&mut c, &bytes[start..end], ptr_ptr, size_ptr)
        },
    )?;

    // Envoy's Buffer::copyFrom: start 0 drains `size` bytes then prepends; start >= length
    // appends; anything else is BadArgument. Const or null buffers: BadArgument.
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>,
         buffer_type: i32,
         start: i32,
         size: i32,
         data_ptr: i32,
         data_size: i32|
         -> Result<i32> {
            c.data_mut().count("proxy_set_buffer_bytes");
            match view(c.data(), buffer_type) {
                Err(status) => return Ok(status),
                Ok(View::Missing) => return Ok(NOT_FOUND),
                Ok(View::Null | View::Const(_)) => return Ok(BAD_ARGUMENT),
                Ok(View::Data(_)) => {}
            }
            let Some(data) = read(&mut c, data_ptr, data_size)? else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            let Some(buf) = data_mut(c.data_mut(), buffer_type) else {
                return Ok(BAD_ARGUMENT);
            };
            if start == 0 {
                buf.drain(..size.min(buf.len()));
                buf.splice(0..0, data);
                Ok(OK)
            } else if start >= buf.len() {
                buf.extend_from_slice(&data);
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
        },
    )?;

    // Envoy's Context::continueStream for a network filter: Downstream defers
    // continueReading() until the VM call returns; Upstream is Unimplemented (the write path
    // cannot be resumed); the HTTP stream types are a no-op Ok on a network context.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, stream_type: i32| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_continue_stream");
            if s.faults.refuse_continue {
                return Ok(BAD_ARGUMENT);
            }
            match stream_type {
                0 | 1 => Ok(OK),
                2 => {
                    if let Some(id) = s.context().filter(|id| s.conns.contains_key(id)) {
                        s.after_vm.push_back(AfterVm::ContinueReading(id));
                    }
                    Ok(OK)
                }
                3 => Ok(UNIMPLEMENTED),
                _ => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    // Envoy's Context::closeStream: Downstream and Upstream both close the client connection
    // (FlushWrite) after the VM call; tcp_proxy then closes the Redis side.
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, stream_type: i32| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_close_stream");
            match stream_type {
                0 | 1 => Ok(OK),
                2 | 3 => {
                    if let Some(id) = s.context().filter(|id| s.conns.contains_key(id)) {
                        s.after_vm.push_back(AfterVm::CloseDownstream(id));
                    }
                    Ok(OK)
                }
                _ => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_set_effective_context");
            let id = id as u32;
            let live = id == ROOT_ID || s.conns.get(&id).is_some_and(|conn| !conn.deleted);
            if !live {
                return Ok(BAD_ARGUMENT);
            }
            s.effective = Some(id);
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, name_ptr: i32, name_size: i32, id_ptr: i32| -> Result<i32> {
            c.data_mut().count("proxy_define_metric");
            if c.data().faults.refuse_metrics {
                return Ok(BAD_ARGUMENT);
            }
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(BAD_ARGUMENT),
            };
            let Some(name) = read(&mut c, name_ptr, name_size)? else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            let s = c.data_mut();
            let index = match s
                .metrics
                .iter()
                .position(|m| m.name == name && m.kind == kind)
            {
                Some(i) => i,
                None => {
                    s.metrics.push(Metric {
                        name,
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                    s.metrics.len() - 1
                }
            };
            let id = ((index as u32) << 2) | kind as u32;
            Ok(if write(&mut c, id_ptr, &id.to_le_bytes())? {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;

    // Envoy's Context::incrementMetric: counters only go up (offset <= 0 is BadArgument),
    // gauges add or subtract, histograms cannot be incremented.
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_increment_metric");
            let Some(m) = s.metrics.get_mut(metric_index(id)) else {
                return Ok(NOT_FOUND);
            };
            match m.kind {
                MetricKind::Counter if offset > 0 => m.value += offset,
                MetricKind::Gauge => m.value += offset,
                _ => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| -> Result<i32> {
            let s = c.data_mut();
            s.count("proxy_record_metric");
            let Some(m) = s.metrics.get_mut(metric_index(id)) else {
                return Ok(NOT_FOUND);
            };
            match m.kind {
                MetricKind::Counter => m.value += value,
                MetricKind::Gauge => m.value = value,
                MetricKind::Histogram => m.samples.push(value as u64),
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, value_ptr: i32| -> Result<i32> {
            c.data_mut().count("proxy_get_metric");
            let Some(value) = c.data().metrics.get(metric_index(id)).map(|m| m.value) else {
                return Ok(NOT_FOUND);
            };
            Ok(
                if write(&mut c, value_ptr, &(value as u64).to_le_bytes())? {
                    OK
                } else {
                    INVALID_MEMORY_ACCESS
                },
            )
        },
    )?;

    // Properties a network filter reads. Envoy fills the upstream ones once tcp_proxy has
    // connected, i.e. from the first data callback on; before that they are NotFound.
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, path_ptr: i32, path_size: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            c.data_mut().count("proxy_get_property");
            let Some(path) = read(&mut c, path_ptr, path_size)? else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let path: Vec<String> = path
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let Some(value) = property(c.data(), &path) else {
                return Ok(NOT_FOUND);
            };
            hand_over(&mut c, &value, ptr_ptr, size_ptr)
        },
    )?;

    // Shared data, as proxy-wasm-cpp-host's SharedData: get is NotFound for a missing key and
    // returns the value's CAS; set with a non-zero CAS that is not the current one is
    // CasMismatch; every successful set gets a new CAS.
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>,
         key_ptr: i32,
         key_size: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> Result<i32> {
            c.data_mut().count("proxy_get_shared_data");
            let Some(key) = read(&mut c, key_ptr, key_size)? else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let Some((value, cas)) = c.data().shared_data.get(&key).cloned() else {
                return Ok(NOT_FOUND);
            };
            let status = hand_over(&mut c, &value, ptr_ptr, size_ptr)?;
            if status != OK {
                return Ok(status);
            }
            Ok(if write(&mut c, cas_ptr, &cas.to_le_bytes())? {
                OK
            } else {
                INVALID_MEMORY_ACCESS
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>,
         key_ptr: i32,
         key_size: i32,
         value_ptr: i32,
         value_size: i32,
         cas: i32|
         -> Result<i32> {
            c.data_mut().count("proxy_set_shared_data");
            let (Some(key), Some(value)) = (
                read(&mut c, key_ptr, key_size)?,
                read(&mut c, value_ptr, value_size)?,
            ) else {
                return Ok(INVALID_MEMORY_ACCESS);
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let state = c.data_mut();
            let cas = cas as u32;
            if cas != 0
                && state
                    .shared_data
                    .get(&key)
                    .is_some_and(|(_, current)| *current != cas)
            {
                return Ok(CAS_MISMATCH);
            }
            let next = state.next_cas;
            state.next_cas += 1;
            state.shared_data.insert(key, (value, next));
            Ok(OK)
        },
    )?;

    // Everything else the module imports: trap, naming the call.
    for import in module.imports() {
        let name = import.name().to_string();
        if import.module() != "env" || IMPLEMENTED.contains(&name.as_str()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        linker.func_new("env", &name.clone(), ty, move |_c, _params, _results| {
            Err(format_err!(
                "test host: the module called `{name}`, which this host does not implement; \
                 model Envoy's behaviour for it in tests/host/abi.rs before relying on it"
            ))
        })?;
    }
    Ok(())
}

fn property(s: &State, path: &[String]) -> Option<Vec<u8>> {
    let joined = path.join(".");
    let conn = s.context().and_then(|id| s.conns.get(&id).map(|c| (id, c)));
    let text = |t: &str| Some(t.as_bytes().to_vec());
    match (joined.as_str(), conn) {
        ("plugin_name", _) => text("redis-idle-guard"),
        ("plugin_root_id", _) | ("plugin_vm_id", _) => text(""),
        ("xds.listener_direction", _) => Some(0i64.to_le_bytes().to_vec()),
        ("connection.id", Some((id, _))) => Some(u64::from(id).to_le_bytes().to_vec()),
        ("source.address", Some((_, c))) => text(&c.source_address),
        ("destination.address", Some(_)) => text("127.0.0.1:16379"),
        ("upstream.address", Some((_, c))) if c.upstream_known => text(&c.upstream_address),
        ("xds.cluster_name", Some((_, c))) if c.upstream_known => text(&c.cluster),
        _ => None,
    }
}

/// The module's exports a network filter host calls.
pub fn memory_and_malloc(
    store: &mut wasmtime::Store<State>,
    instance: &wasmtime::Instance,
) -> Result<()> {
    let memory = match instance.get_export(&mut *store, "memory") {
        Some(Extern::Memory(m)) => m,
        _ => return Err(format_err!("module exports no memory")),
    };
    let malloc = instance.get_typed_func::<i32, i32>(&mut *store, "malloc")?;
    store.data_mut().memory = Some(memory);
    store.data_mut().malloc = Some(malloc);
    Ok(())
}
