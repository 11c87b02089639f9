//! What the host knows between VM calls: the clock, the connections as Envoy and tcp_proxy hold
//! them, metrics, logs, and the actions Envoy defers until the current VM call returns.

use std::collections::{BTreeMap, VecDeque};
use wasmtime::{Memory, TypedFunc};

/// Context id of the plugin's root context (Envoy allocates ids from 1; one root per plugin).
pub const ROOT_ID: u32 = 1;

/// proxy-wasm ABI 0.2.1 status codes, as Envoy returns them.
pub const OK: i32 = 0;
pub const NOT_FOUND: i32 = 1;
pub const BAD_ARGUMENT: i32 = 2;
pub const INVALID_MEMORY_ACCESS: i32 = 6;
pub const CAS_MISMATCH: i32 = 8;
pub const UNIMPLEMENTED: i32 = 12;

/// The VM callback being run, so that host calls can apply Envoy's per-callback rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    ContextCreate,
    VmStart,
    Configure,
    NewConnection,
    DownstreamData,
    UpstreamData,
    DownstreamClose,
    UpstreamClose,
    Tick,
    Done,
    Log,
    Delete,
}

/// Envoy's work that `proxy_continue_stream` / `proxy_close_stream` queue: it runs right after
/// the VM call returns (proxy-wasm-cpp-host's DeferAfterCallActions), never inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterVm {
    /// `network_read_filter_callbacks_->continueReading()`: the filters after ours (tcp_proxy)
    /// get the connection's read buffer; tcp_proxy drains it to Redis.
    ContinueReading(u32),
    /// `connection().close(FlushWrite)` on the client connection.
    CloseDownstream(u32),
}

/// A failure the module is allowed to cause on real Envoy only at the cost of its users; in
/// the host it fails the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: i64,
    pub samples: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Envoy's wasm log levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 critical.
    pub level: u32,
    pub context: u32,
    pub message: String,
}

/// What the test turns on to make the host refuse things Envoy could refuse.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Envoy does not keep the paused read buffer (as if the filter had returned Continue):
    /// the keepalive injection from the tick gets BadArgument.
    pub no_paused_buffer: bool,
    /// `proxy_continue_stream` returns BadArgument.
    pub refuse_continue: bool,
    /// `proxy_get_current_time_nanoseconds` returns BadArgument.
    pub no_clock: bool,
    /// `proxy_define_metric` returns BadArgument.
    pub refuse_metrics: bool,
}

/// One client connection through the listener: Envoy's view plus what each peer received.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Envoy's read buffer for the client connection. Bytes stay here while the filter
    /// pauses; tcp_proxy drains it to Redis on continue.
    pub read_buffer: Vec<u8>,
    /// The client's FIN was read and not yet handed on (the filter paused on it).
    pub read_eos_pending: bool,
    /// Envoy's `network_downstream_data_buffer_`: set for every on_downstream_data, kept
    /// after the call only if it returned Pause.
    pub read_pointer: bool,
    /// The write-direction buffer, only during on_upstream_data.
    pub write_buffer: Option<Vec<u8>>,
    /// tcp_proxy has an upstream connection and a data callback has run (Envoy fills
    /// `upstream.address` and `xds.cluster_name` from then on).
    pub upstream_known: bool,
    pub cluster: String,
    pub upstream_address: String,
    pub source_address: String,

    /// Everything Redis received, and whether it saw the connection end (FIN or close).
    pub to_redis: Vec<u8>,
    pub redis_saw_end: bool,
    /// Everything the client received, and whether its connection ended (a FIN, or a reset).
    pub to_client: Vec<u8>,
    pub client_saw_eof: bool,
    /// The client's connection ended with a reset (RST), not a FIN: Envoy 1.40's tcp_proxy
    /// passes Redis's reset on to the client.
    pub client_saw_reset: bool,
    /// Client bytes Envoy discarded because the connection closed while the filter held them.
    pub discarded: Vec<u8>,
    pub client_half_closed: bool,
    pub redis_half_closed: bool,
    pub open: bool,
    /// The SDK's context was deleted (on_delete ran).
    pub deleted: bool,
}

pub struct State {
    pub now_ns: u64,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    /// The context and callback the VM is running, if any.
    pub frame: Option<(u32, Callback)>,
    /// `proxy_set_effective_context`, reset at the end of every VM call.
    pub effective: Option<u32>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub conns: BTreeMap<u32, Conn>,
    pub next_context_id: u32,
    pub after_vm: VecDeque<AfterVm>,
    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,
    pub metrics: Vec<Metric>,
    pub logs: Vec<LogLine>,
    pub violations: Vec<Violation>,
    pub faults: Faults,
    /// Host calls made by the module, by name (a cost figure, and proof of what is used).
    pub host_calls: BTreeMap<&'static str, u64>,
    /// proxy-wasm shared data (Envoy: one store per vm_id, shared by every worker's VM): value
    /// and CAS by key.
    pub shared_data: BTreeMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    /// Fuel spent inside the module's `malloc` when the host hands it bytes (with fuel on).
    pub malloc_fuel: u64,
}

impl State {
    pub fn new(plugin_config: Vec<u8>, vm_config: Vec<u8>, faults: Faults) -> State {
        State {
            // 2026-11-27T00:00:00Z: a realistic epoch, far from zero.
            now_ns: 1_795_737_600_000_000_000,
            memory: None,
            malloc: None,
            frame: None,
            effective: None,
            plugin_config,
            vm_config,
            conns: BTreeMap::new(),
            next_context_id: ROOT_ID + 1,
            malloc_fuel: 0,
            after_vm: VecDeque::new(),
            tick_period_ms: 0,
            next_tick_ns: None,
            metrics: Vec::new(),
            logs: Vec::new(),
            violations: Vec::new(),
            faults,
            host_calls: BTreeMap::new(),
            shared_data: BTreeMap::new(),
            next_cas: 1,
        }
    }

    /// The context host calls act on: the effective one if set, else the running one.
    pub fn context(&self) -> Option<u32> {
        self.effective.or(self.frame.map(|(id, _)| id))
    }

    pub fn callback(&self) -> Option<Callback> {
        self.frame.map(|(_, cb)| cb)
    }

    pub fn violation(&mut self, what: String) {
        self.violations.push(Violation(what));
    }

    pub fn count(&mut self, call: &'static str) {
        *self.host_calls.entry(call).or_insert(0) += 1;
    }
}
