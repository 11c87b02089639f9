//! The root context: configuration, and the tick that wakes the connections that are due.

use super::abi::{self, Refused};
use super::connection::Connection;
use super::host::WasmHost;
use super::stats;
use crate::config::Config;
use crate::host::ConnectionId;
use crate::metrics::Metric;
use crate::schedule::Schedule;
use crate::session::PING;
use crate::worker::{Wake, Worker};
use std::cell::RefCell;
use std::rc::Rc;

/// What a root context and its connections share (one worker thread, no locking needed).
pub struct Plugin {
    pub worker: Worker,
    /// The connections' timers: the tick wakes those whose deadline has passed.
    pub schedule: Schedule,
}

impl Plugin {
    /// Run `f` on the worker with this plugin's host.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Worker, &mut WasmHost) -> R) -> R {
        let mut host = WasmHost {
            schedule: &mut self.schedule,
        };
        f(&mut self.worker, &mut host)
    }
}

pub struct Root {
    plugin: Rc<RefCell<Plugin>>,
    due: Vec<ConnectionId>,
    /// The configured tick period.
    tick_ms: u32,
    /// The tick runs every [`HURRIED_TICK_MS`]: closes wait for their turn.
    hurried: bool,
}

thread_local! {
    static REPORTED_MEMORY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Add this VM's linear memory growth to the gauge: with one VM per worker, the gauge is the
/// sum over workers (a set would show only the last worker that ticked).
fn report_vm_memory() {
    let now = (core::arch::wasm32::memory_size(0) as u64) * 65_536;
    let before = REPORTED_MEMORY.with(|r| r.replace(now));
    if now != before {
        stats::add(Metric::VmMemoryBytes, now as i64 - before as i64);
    }
}

/// Connections one tick may close; the rest of those due wait for the next tick. Envoy carries
/// out a close the tick asks for after the tick returns, and each close calls back into the VM
/// (on_downstream_connection_close), at whose end Envoy carries out the next queued close: the
/// closes nest, one level per close, and about a thousand overflowed V8's stack and failed the
/// VM (measured with Envoy 1.40: every connection of that worker then lost the filter).
pub const MAX_CLOSES_PER_TICK: usize = 100;

/// While closes wait for their turn, the tick comes this often (unless configured to come more
/// often): they go at 100 every 20 ms per worker, whatever the tick period.
pub const HURRIED_TICK_MS: u32 = 20;

/// Close connection `id` from the tick (Envoy closes it once the VM call returns).
fn close(id: ConnectionId) {
    if let Err(e) = abi::set_effective_context(id).and_then(|()| abi::close_downstream()) {
        log::warn!("connection {id}: close refused ({e:?})");
    }
}

/// Append the keepalive to the connection's read buffer and let it go on. This works only
/// while Envoy holds that buffer (the last on_downstream_data returned Pause); otherwise the
/// host says BadArgument.
fn send_ping(id: ConnectionId) -> Result<(), Refused> {
    abi::set_effective_context(id)?;
    abi::append_downstream(PING)?;
    if let Err(e) = abi::continue_downstream() {
        log::warn!("connection {id}: resuming after the keepalive refused ({e:?}); it goes out with the next client bytes");
    }
    Ok(())
}

impl Root {
    pub fn new() -> Root {
        Root {
            plugin: Rc::new(RefCell::new(Plugin {
                worker: Worker::new(Config::default()),
                schedule: Schedule::default(),
            })),
            due: Vec::new(),
            tick_ms: 0,
            hurried: false,
        }
    }

    pub fn on_vm_start(&mut self, _size: usize) -> bool {
        abi::init_logging();
        stats::define_all();
        true
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        abi::init_logging();
        stats::define_all();
        let bytes = match abi::plugin_configuration(size) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot read the plugin configuration ({e:?})");
                return false;
            }
        };
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                // Returning false makes Envoy reject the configuration; this line says why.
                log::error!("{e}");
                return false;
            }
        };
        let period = config.tick_period_ms();
        self.tick_ms = u32::try_from(period).unwrap_or(1_000);
        self.hurried = false;
        if let Err(e) = abi::set_tick_period_ms(self.tick_ms) {
            log::error!("cannot set the tick period ({e:?})");
            return false;
        }
        log::info!("configured: {} (tick {period}ms)", config.describe());
        let Ok(mut plugin) = self.plugin.try_borrow_mut() else {
            return false;
        };
        plugin.worker = Worker::new(config);
        true
    }

    pub fn on_tick(&mut self) {
        report_vm_memory();
        let Ok(now) = abi::now_ms() else { return };
        let Ok(mut guard) = self.plugin.try_borrow_mut() else {
            return;
        };
        let plugin = &mut *guard;
        self.due.clear();
        plugin.schedule.take_due(now, &mut self.due);
        let mut closes = 0;
        let mut waiting = false;
        for (n, &id) in self.due.iter().enumerate() {
            if closes >= MAX_CLOSES_PER_TICK {
                // The rest are woken first at the next tick (their deadline has passed).
                for &later in self.due.iter().skip(n) {
                    plugin.schedule.arm(later, Some(now));
                }
                waiting = true;
                break;
            }
            plugin.with(|worker, host| match worker.wake(host, id, now) {
                Wake::Nothing => {}
                Wake::Close(_) => {
                    closes += 1;
                    close(id);
                }
                Wake::SendPing => match send_ping(id) {
                    Ok(()) => worker.ping_sent(host, id, now),
                    Err(e) => {
                        log::debug!("connection {id}: keepalive injection refused ({e:?})");
                        if worker.ping_refused(host, id, now).is_some() {
                            closes += 1;
                            close(id);
                        }
                    }
                },
            });
        }
        drop(guard);
        self.hurry(waiting);
    }

    /// Tick every [`HURRIED_TICK_MS`] while closes wait for their turn, as configured after.
    fn hurry(&mut self, waiting: bool) {
        if waiting == self.hurried || self.tick_ms <= HURRIED_TICK_MS {
            return;
        }
        let period = if waiting {
            HURRIED_TICK_MS
        } else {
            self.tick_ms
        };
        match abi::set_tick_period_ms(period) {
            Ok(()) => self.hurried = waiting,
            Err(e) => log::warn!("cannot set the tick period to {period}ms ({e:?})"),
        }
    }

    pub fn new_connection(&self, context_id: ConnectionId) -> Connection {
        Connection::new(context_id, Rc::clone(&self.plugin))
    }
}
