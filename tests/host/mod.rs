//! An Envoy-faithful proxy-wasm host on wasmtime, for testing the filter's real `.wasm` byte for
//! byte with a virtual clock. See tests/host/README.md for what it implements and where it
//! follows Envoy 1.40.
//!
//! One [`Envoy`] is one Envoy worker: one VM, one root context (the plugin), the listener's
//! client connections, each with tcp_proxy behind the filter and a scripted Redis behind that.
//! The test plays client and Redis and advances the clock; it sees exactly the bytes each side
//! received. The module is compiled once per test binary and instantiated per `Envoy`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod abi;
pub mod state;

use state::{AfterVm, Callback, Conn, State};
pub use state::{Faults, LogLine, MetricKind, ROOT_ID};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use wasmtime::{Engine, InstancePre, Linker, Module, Store, TypedFunc};

/// The `.wasm` build.rs built from the current source.
pub fn wasm_path() -> &'static str {
    let path = env!("REDIS_IDLE_GUARD_WASM");
    assert!(
        !path.is_empty(),
        "build.rs could not build the .wasm (see its warning); run `make setup-rust`"
    );
    path
}

struct Compiled {
    engine: Engine,
    pre: InstancePre<State>,
}

fn compile(engine: Engine) -> Compiled {
    compile_file(engine, wasm_path())
}

fn compile_file(engine: Engine, path: &str) -> Compiled {
    let module =
        Module::from_file(&engine, path).unwrap_or_else(|e| panic!("compiling {path}: {e:?}"));
    let mut linker = Linker::new(&engine);
    abi::link(&mut linker, &module).expect("linking the host calls");
    let pre = linker
        .instantiate_pre(&module)
        .expect("the module imports something that is not env.*");
    Compiled { engine, pre }
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| compile(Engine::default()))
}

/// The same module compiled by an engine that counts fuel (about one unit per wasm
/// instruction), for [`Options::fuel`]. Compiled only when a test asks for it: fuel checks make
/// the code slower, so the default path does not use them.
fn compiled_with_fuel() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        compile(Engine::new(&config).expect("an engine with fuel"))
    })
}

/// The fuel an [`Options::fuel`] store starts with: far more than any test uses.
const FUEL_BUDGET: u64 = 1 << 62;

/// Write `/tmp/perf-<pid>.map` for the module's compiled functions, so that `perf record`
/// of this process names them (a time profile of the module, Cranelift's code standing in for
/// V8's). For profiling runs only.
pub fn write_perf_map() -> std::io::Result<()> {
    use std::io::Write;
    let module = compiled().pre.module();
    let text = module.text().as_ptr() as usize;
    let mut out = std::io::BufWriter::new(std::fs::File::create(format!(
        "/tmp/perf-{}.map",
        std::process::id()
    ))?);
    for f in module.functions() {
        let name = f
            .name
            .unwrap_or_else(|| format!("wasm-function[{}]", f.index.as_u32()));
        writeln!(out, "{:x} {:x} {name}", text + f.offset, f.len)?;
    }
    out.flush()
}

/// The imports the module declares, and which of them this host implements.
pub fn module_imports() -> Vec<(String, bool)> {
    let module = Module::from_file(&compiled().engine, wasm_path()).unwrap();
    module
        .imports()
        .map(|i| (i.name().to_string(), abi::IMPLEMENTED.contains(&i.name())))
        .collect()
}

struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: TypedFunc<(i32, i32), i32>,
    on_configure: TypedFunc<(i32, i32), i32>,
    on_new_connection: TypedFunc<i32, i32>,
    on_downstream_data: TypedFunc<(i32, i32, i32), i32>,
    on_upstream_data: TypedFunc<(i32, i32, i32), i32>,
    on_downstream_close: TypedFunc<(i32, i32), ()>,
    on_done: TypedFunc<i32, i32>,
    on_log: TypedFunc<i32, ()>,
    on_delete: TypedFunc<i32, ()>,
    on_tick: TypedFunc<i32, ()>,
}

/// Plugin and VM configuration plus host faults, for [`Envoy::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub plugin_config: String,
    pub vm_config: String,
    pub faults: Faults,
    /// Count the wasm instructions the module executes ([`Envoy::fuel_used`]), with a second
    /// engine that has wasmtime's fuel on (compiled on first use). Off by default.
    pub fuel: bool,
    /// Another proxy-wasm module to run instead of the filter (the benchmark's calibration
    /// module); compiled afresh on every start.
    pub module: Option<String>,
}

/// Envoy refused the plugin: the VM did not start or `on_configure` returned false.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub stage: &'static str,
    pub logs: Vec<LogLine>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} returned false", self.stage)?;
        for l in &self.logs {
            write!(f, "\n  [{}] {}", l.level, l.message)?;
        }
        Ok(())
    }
}

/// A client connection through the listener (the Envoy context id of its filter instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

/// proxy-wasm PeerType as Envoy passes it to on_downstream_connection_close.
const PEER_LOCAL: i32 = 1;
const PEER_REMOTE: i32 = 2;
const ACTION_CONTINUE: i32 = 0;
const ACTION_PAUSE: i32 = 1;

pub struct Envoy {
    store: Store<State>,
    x: Exports,
    next_client_port: u16,
    fuel: bool,
}

impl Envoy {
    /// Load the plugin with this JSON configuration, as Envoy does at listener creation.
    pub fn load(plugin_config: &str) -> Result<Envoy, LoadError> {
        Envoy::start(Options {
            plugin_config: plugin_config.to_string(),
            ..Options::default()
        })
    }

    /// Load with the default configuration (`{}`); panics if the module refuses it.
    pub fn new() -> Envoy {
        Envoy::load("{}").unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn start(options: Options) -> Result<Envoy, LoadError> {
        let c: &Compiled = match (&options.module, options.fuel) {
            (Some(path), fuel) => {
                let mut config = wasmtime::Config::new();
                config.consume_fuel(fuel);
                let engine = Engine::new(&config).expect("an engine");
                Box::leak(Box::new(compile_file(engine, path)))
            }
            (None, true) => compiled_with_fuel(),
            (None, false) => compiled(),
        };
        let mut store = Store::new(
            &c.engine,
            State::new(
                options.plugin_config.into_bytes(),
                options.vm_config.into_bytes(),
                options.faults,
            ),
        );
        if options.fuel {
            store.set_fuel(FUEL_BUDGET).expect("setting fuel");
        }
        let instance = c
            .pre
            .instantiate(&mut store)
            .expect("instantiating the module");
        abi::memory_and_malloc(&mut store, &instance).expect("module exports");
        let f = |store: &mut Store<State>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .unwrap_or_else(|| panic!("module does not export {name}"))
        };
        let x = Exports {
            on_context_create: f(&mut store, "proxy_on_context_create")
                .typed(&store)
                .unwrap(),
            on_vm_start: f(&mut store, "proxy_on_vm_start").typed(&store).unwrap(),
            on_configure: f(&mut store, "proxy_on_configure").typed(&store).unwrap(),
            on_new_connection: f(&mut store, "proxy_on_new_connection")
                .typed(&store)
                .unwrap(),
            on_downstream_data: f(&mut store, "proxy_on_downstream_data")
                .typed(&store)
                .unwrap(),
            on_upstream_data: f(&mut store, "proxy_on_upstream_data")
                .typed(&store)
                .unwrap(),
            on_downstream_close: f(&mut store, "proxy_on_downstream_connection_close")
                .typed(&store)
                .unwrap(),
            on_done: f(&mut store, "proxy_on_done").typed(&store).unwrap(),
            on_log: f(&mut store, "proxy_on_log").typed(&store).unwrap(),
            on_delete: f(&mut store, "proxy_on_delete").typed(&store).unwrap(),
            on_tick: f(&mut store, "proxy_on_tick").typed(&store).unwrap(),
        };
        // A reactor module's constructors, as proxy-wasm-cpp-host runs them before anything.
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).expect("_initialize trapped");
        }
        let mut envoy = Envoy {
            store,
            x,
            next_client_port: 40_000,
            fuel: options.fuel,
        };
        let vm_size = envoy.store.data().vm_config.len() as i32;
        let plugin_size = envoy.store.data().plugin_config.len() as i32;
        envoy.vm(ROOT_ID, Callback::ContextCreate, |s, x| {
            x.on_context_create.call(s, (ROOT_ID as i32, 0))
        });
        if envoy.vm(ROOT_ID, Callback::VmStart, |s, x| {
            x.on_vm_start.call(s, (ROOT_ID as i32, vm_size))
        }) == 0
        {
            return Err(envoy.load_error("proxy_on_vm_start"));
        }
        if envoy.vm(ROOT_ID, Callback::Configure, |s, x| {
            x.on_configure.call(s, (ROOT_ID as i32, plugin_size))
        }) == 0
        {
            return Err(envoy.load_error("proxy_on_configure"));
        }
        Ok(envoy)
    }

    fn load_error(&self, stage: &'static str) -> LoadError {
        LoadError {
            stage,
            logs: self.store.data().logs.clone(),
        }
    }

    /// Run one VM callback like Envoy: set the context, call, then carry out what the module
    /// asked for with continue/close (deferred until the call returns). A trap, or anything
    /// the module must never do on Envoy, fails the test here with the module's recent logs.
    fn vm<R>(
        &mut self,
        context: u32,
        callback: Callback,
        call: impl FnOnce(&mut Store<State>, &Exports) -> wasmtime::Result<R>,
    ) -> R {
        let outer = self.store.data().frame;
        self.store.data_mut().frame = Some((context, callback));
        self.store.data_mut().effective = None;
        let result = call(&mut self.store, &self.x);
        self.store.data_mut().frame = outer;
        self.store.data_mut().effective = None;
        let value = match result {
            Ok(v) => v,
            Err(e) => self.fail(&format!(
                "the module trapped in {callback:?} (context {context}): {e:?}"
            )),
        };
        if let Some(v) = self.store.data().violations.first().cloned() {
            self.fail(&v.0);
        }
        if outer.is_none() {
            while let Some(action) = self.store.data_mut().after_vm.pop_front() {
                self.after_vm(action);
            }
        }
        value
    }

    fn fail(&self, what: &str) -> ! {
        let logs = &self.store.data().logs;
        let recent: Vec<String> = logs
            .iter()
            .rev()
            .take(20)
            .rev()
            .map(|l| format!("  [{}] ctx {}: {}", l.level, l.context, l.message))
            .collect();
        panic!("{what}\nrecent module logs:\n{}", recent.join("\n"));
    }

    fn conn(&self, id: ConnId) -> &Conn {
        self.store
            .data()
            .conns
            .get(&id.0)
            .unwrap_or_else(|| panic!("no connection {id:?}"))
    }

    fn conn_mut(&mut self, id: ConnId) -> &mut Conn {
        self.store
            .data_mut()
            .conns
            .get_mut(&id.0)
            .unwrap_or_else(|| panic!("no connection {id:?}"))
    }

    fn after_vm(&mut self, action: AfterVm) {
        match action {
            AfterVm::ContinueReading(id) => {
                let conn = self.conn_mut(ConnId(id));
                if conn.open {
                    Self::tcp_proxy_forward(conn);
                }
            }
            AfterVm::CloseDownstream(id) => self.close(ConnId(id), PEER_LOCAL),
        }
    }

    /// tcp_proxy's onData: everything in the read buffer goes to Redis, and a FIN with it.
    fn tcp_proxy_forward(conn: &mut Conn) {
        let bytes = std::mem::take(&mut conn.read_buffer);
        conn.to_redis.extend_from_slice(&bytes);
        if conn.read_eos_pending {
            conn.read_eos_pending = false;
            conn.redis_saw_end = true;
        }
    }

    /// The client connection closes: the client sees EOF, the filter hears of it, tcp_proxy
    /// closes Redis's side, and the filter's context is done, logged and deleted. Client bytes
    /// still held in the read buffer are discarded, never sent.
    fn close(&mut self, id: ConnId, peer: i32) {
        let conn = self.conn_mut(id);
        if !conn.open {
            return;
        }
        conn.open = false;
        conn.client_saw_eof = true;
        conn.read_pointer = false;
        conn.write_buffer = None;
        let held = std::mem::take(&mut conn.read_buffer);
        conn.discarded.extend_from_slice(&held);
        self.vm(id.0, Callback::DownstreamClose, |s, x| {
            x.on_downstream_close.call(s, (id.0 as i32, peer))
        });
        self.conn_mut(id).redis_saw_end = true;
        let done = self.vm(id.0, Callback::Done, |s, x| x.on_done.call(s, id.0 as i32));
        if done == 0 {
            self.fail("on_done returned false: Envoy would wait for proxy_done, which this host does not model");
        }
        self.vm(id.0, Callback::Log, |s, x| x.on_log.call(s, id.0 as i32));
        self.vm(id.0, Callback::Delete, |s, x| {
            x.on_delete.call(s, id.0 as i32)
        });
        self.conn_mut(id).deleted = true;
    }

    // ---- the world ----

    pub fn now_ms(&self) -> u64 {
        self.store.data().now_ns / 1_000_000
    }

    /// Let `ms` of virtual time pass; the root context's ticks fire at their times.
    pub fn advance(&mut self, ms: u64) {
        let target = self.store.data().now_ns + ms * 1_000_000;
        while let Some(at) = self.store.data().next_tick_ns.filter(|&t| t <= target) {
            self.store.data_mut().now_ns = at;
            self.vm(ROOT_ID, Callback::Tick, |s, x| {
                x.on_tick.call(s, ROOT_ID as i32)
            });
            let s = self.store.data_mut();
            // Envoy re-arms the timer after each tick with the period current then.
            s.next_tick_ns =
                (s.tick_period_ms > 0).then(|| at + u64::from(s.tick_period_ms) * 1_000_000);
        }
        self.store.data_mut().now_ns = target;
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// A client connects; tcp_proxy connects to Redis (cluster `redis`, 127.0.0.1:6379).
    pub fn connect(&mut self) -> ConnId {
        self.connect_to("redis", "127.0.0.1:6379")
    }

    pub fn connect_to(&mut self, cluster: &str, upstream_address: &str) -> ConnId {
        let s = self.store.data_mut();
        let id = s.next_context_id;
        s.next_context_id += 1;
        self.next_client_port += 1;
        s.conns.insert(
            id,
            Conn {
                open: true,
                cluster: cluster.to_string(),
                upstream_address: upstream_address.to_string(),
                source_address: format!("127.0.0.1:{}", self.next_client_port),
                ..Conn::default()
            },
        );
        self.vm(id, Callback::ContextCreate, |s, x| {
            x.on_context_create.call(s, (id as i32, ROOT_ID as i32))
        });
        let action = self.vm(id, Callback::NewConnection, |s, x| {
            x.on_new_connection.call(s, id as i32)
        });
        if action != ACTION_CONTINUE {
            self.fail(&format!(
                "on_new_connection returned {action}: a paused new connection is not modelled"
            ));
        }
        ConnId(id)
    }

    /// One read from the client socket: Envoy appends it to the connection's read buffer
    /// (which still holds whatever the filter paused on) and calls on_downstream_data with
    /// the whole buffer.
    pub fn client_send(&mut self, id: ConnId, bytes: &[u8]) {
        self.client_read(id, bytes, false);
    }

    /// The client half-closes (FIN).
    pub fn client_close(&mut self, id: ConnId) {
        if !self.conn(id).open || self.conn(id).client_half_closed {
            return;
        }
        self.conn_mut(id).client_half_closed = true;
        self.client_read(id, b"", true);
        self.close_if_both_halves(id);
    }

    /// The client resets the connection (or it is torn down on the client's side).
    pub fn client_reset(&mut self, id: ConnId) {
        self.close(id, PEER_REMOTE);
    }

    fn client_read(&mut self, id: ConnId, bytes: &[u8], end_of_stream: bool) {
        let conn = self.conn_mut(id);
        if !conn.open {
            return;
        }
        conn.read_buffer.extend_from_slice(bytes);
        conn.read_pointer = true;
        conn.upstream_known = true;
        let len = conn.read_buffer.len() as i32;
        let action = self.vm(id.0, Callback::DownstreamData, |s, x| {
            x.on_downstream_data
                .call(s, (id.0 as i32, len, i32::from(end_of_stream)))
        });
        let conn = self.conn_mut(id);
        if !conn.open {
            return;
        }
        match action {
            ACTION_CONTINUE => {
                conn.read_pointer = false;
                conn.read_eos_pending |= end_of_stream;
                Self::tcp_proxy_forward(conn);
            }
            ACTION_PAUSE => conn.read_eos_pending |= end_of_stream,
            other => self.fail(&format!("on_downstream_data returned {other}")),
        }
    }

    /// One read from Redis: tcp_proxy writes it to the client connection, through the
    /// filter's on_upstream_data; what the filter leaves in the buffer reaches the client.
    pub fn redis_send(&mut self, id: ConnId, bytes: &[u8]) {
        self.redis_write(id, bytes, false);
    }

    /// Redis closes the connection (FIN): on_upstream_data with end_of_stream, and tcp_proxy
    /// passes the FIN on to the client (it sees EOF). tcp_proxy runs the client connection
    /// half-closed, so the connection (and the filter's context) lives on until the client
    /// closes its side too (`client_close` or `client_reset`); only then does Envoy close it.
    /// Measured against Envoy 1.40 (tests/envoy_differential.rs).
    pub fn redis_close(&mut self, id: ConnId) {
        if !self.conn(id).open || self.conn(id).redis_half_closed {
            return;
        }
        self.conn_mut(id).redis_half_closed = true;
        self.redis_write(id, b"", true);
        self.close_if_both_halves(id);
    }

    /// Redis's side resets: tcp_proxy resets the client connection (the client sees RST, not
    /// a FIN), no end_of_stream; the filter hears on_downstream_connection_close(Local).
    /// Measured against Envoy 1.40 (tests/envoy_differential.rs).
    pub fn redis_reset(&mut self, id: ConnId) {
        if self.conn(id).open {
            self.conn_mut(id).client_saw_reset = true;
        }
        self.close(id, PEER_LOCAL);
    }

    fn close_if_both_halves(&mut self, id: ConnId) {
        let c = self.conn(id);
        if c.open && c.client_half_closed && c.redis_half_closed {
            self.close(id, PEER_REMOTE);
        }
    }

    fn redis_write(&mut self, id: ConnId, bytes: &[u8], end_of_stream: bool) {
        let conn = self.conn_mut(id);
        if !conn.open {
            return;
        }
        conn.write_buffer = Some(bytes.to_vec());
        conn.upstream_known = true;
        let len = bytes.len() as i32;
        let action = self.vm(id.0, Callback::UpstreamData, |s, x| {
            x.on_upstream_data
                .call(s, (id.0 as i32, len, i32::from(end_of_stream)))
        });
        if action != ACTION_CONTINUE {
            self.fail("on_upstream_data returned Pause: Envoy cannot resume the write path, the client would hang");
        }
        let conn = self.conn_mut(id);
        let out = conn.write_buffer.take().unwrap_or_default();
        conn.to_client.extend_from_slice(&out);
        if end_of_stream {
            conn.client_saw_eof = true;
        }
    }

    // ---- what each side saw ----

    /// Everything the client received so far.
    pub fn client_received(&self, id: ConnId) -> &[u8] {
        &self.conn(id).to_client
    }

    /// Everything Redis received so far.
    pub fn redis_received(&self, id: ConnId) -> &[u8] {
        &self.conn(id).to_redis
    }

    /// What the client received since the last call (drains).
    pub fn take_client(&mut self, id: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.conn_mut(id).to_client)
    }

    /// What Redis received since the last call (drains).
    pub fn take_redis(&mut self, id: ConnId) -> Vec<u8> {
        std::mem::take(&mut self.conn_mut(id).to_redis)
    }

    /// Client bytes Envoy dropped because the connection closed while the filter held them.
    pub fn discarded(&self, id: ConnId) -> &[u8] {
        &self.conn(id).discarded
    }

    pub fn is_open(&self, id: ConnId) -> bool {
        self.conn(id).open
    }

    /// The client's connection ended: it read EOF (a FIN) or was reset (see
    /// [`Envoy::client_saw_reset`]).
    pub fn client_saw_eof(&self, id: ConnId) -> bool {
        self.conn(id).client_saw_eof
    }

    /// The client's connection ended with a reset (RST) rather than a FIN.
    pub fn client_saw_reset(&self, id: ConnId) -> bool {
        self.conn(id).client_saw_reset
    }

    pub fn redis_saw_end(&self, id: ConnId) -> bool {
        self.conn(id).redis_saw_end
    }

    /// Client bytes Envoy holds for the filter (the paused read buffer).
    pub fn held(&self, id: ConnId) -> &[u8] {
        &self.conn(id).read_buffer
    }

    // ---- stats and logs ----

    /// A counter's or gauge's value, or a histogram's sample count; 0 if never defined.
    pub fn stat(&self, name: &str) -> i64 {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| match m.kind {
                MetricKind::Histogram => m.samples.len() as i64,
                _ => m.value,
            })
    }

    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.samples.clone())
            .unwrap_or_default()
    }

    /// Every metric the module defined: counters and gauges by value, histograms by count.
    pub fn stats(&self) -> BTreeMap<String, i64> {
        self.store
            .data()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), self.stat(&m.name)))
            .collect()
    }

    pub fn metric_kinds(&self) -> BTreeMap<String, MetricKind> {
        self.store
            .data()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.kind))
            .collect()
    }

    /// A shared-data value (what every worker's VM sees), if set.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.store
            .data()
            .shared_data
            .get(key)
            .map(|(v, _)| v.clone())
    }

    /// Set a shared-data value as another worker's VM would.
    pub fn set_shared_data(&mut self, key: &str, value: &[u8]) {
        let state = self.store.data_mut();
        let cas = state.next_cas;
        state.next_cas += 1;
        state
            .shared_data
            .insert(key.to_string(), (value.to_vec(), cas));
    }

    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().logs
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.message.contains(needle))
    }

    /// Fuel the module has used since the store was created (instantiation and
    /// `on_vm_start`/`on_configure` included): about one unit per wasm instruction executed,
    /// in the module and in the `malloc` the host calls to hand it bytes; host calls themselves
    /// cost nothing. Take differences around the calls to measure. Needs [`Options::fuel`].
    pub fn fuel_used(&self) -> u64 {
        assert!(self.fuel, "fuel_used() needs Options {{ fuel: true, .. }}");
        FUEL_BUDGET - self.store.get_fuel().expect("fuel is on")
    }

    /// Of [`Envoy::fuel_used`], what the module's `malloc` took when the host handed it bytes.
    pub fn malloc_fuel(&self) -> u64 {
        self.store.data().malloc_fuel
    }

    pub fn host_calls(&self) -> &BTreeMap<&'static str, u64> {
        &self.store.data().host_calls
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.store.data_mut().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.store.data().faults
    }
}

impl Default for Envoy {
    fn default() -> Envoy {
        Envoy::new()
    }
}

/// The filter's keepalive as Redis receives it, and Redis's reply to it.
pub const PING: &[u8] = b"*2\r\n$4\r\nPING\r\n$16\r\nredis-idle-guard\r\n";
pub const PONG: &[u8] = b"$16\r\nredis-idle-guard\r\n";
/// The same reply on a RESP2 connection in subscribed mode.
pub const PONG_SUBSCRIBED: &[u8] = b"*2\r\n$4\r\npong\r\n$16\r\nredis-idle-guard\r\n";

/// A command as a RESP array of bulk strings.
pub fn cmd(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{}\r\n", w.len(), w).as_bytes());
    }
    out
}

/// Metric names, as the module defines them.
pub mod stat {
    pub const SENT: &str = "redis_idle_guard.keepalive.sent";
    pub const ANSWERED: &str = "redis_idle_guard.keepalive.answered";
    pub const FAILED: &str = "redis_idle_guard.keepalive.failed";
    pub const REFUSED: &str = "redis_idle_guard.keepalive.refused";
    pub const RECONNECT: &str = "redis_idle_guard.reconnect_signals";
    pub const PASSTHROUGH: &str = "redis_idle_guard.passthrough";
    pub const PASSTHROUGH_TLS: &str = "redis_idle_guard.passthrough.tls";
    pub const CONNECTIONS: &str = "redis_idle_guard.connections";
    pub const IDLE_MS: &str = "redis_idle_guard.keepalive.idle_ms";
    pub const PROBE_HELD: &str = "redis_idle_guard.probe.held";
    pub const PROBE_PASSED: &str = "redis_idle_guard.probe.passed";
    pub const PROBE_FAILED: &str = "redis_idle_guard.probe.failed";
    pub const PROBE_WAIT_MS: &str = "redis_idle_guard.probe.wait_ms";
}

/// A connection that has done one GET (nil reply), at the moment its reply arrived.
pub fn warm(e: &mut Envoy) -> ConnId {
    let c = e.connect();
    e.client_send(c, &cmd(&["GET", "k"]));
    assert_eq!(e.take_redis(c), cmd(&["GET", "k"]));
    e.redis_send(c, b"$-1\r\n");
    assert_eq!(e.take_client(c), b"$-1\r\n");
    c
}
