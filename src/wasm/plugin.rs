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
        if let Err(e) = abi::set_tick_period_ms(u32::try_from(period).unwrap_or(1_000)) {
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
        for &id in &self.due {
            plugin.with(|worker, host| match worker.wake(host, id, now) {
                Wake::Nothing => {}
                Wake::Close(_) => close(id),
                Wake::SendPing => match send_ping(id) {
                    Ok(()) => worker.ping_sent(host, id, now),
                    Err(e) => {
                        log::debug!("connection {id}: keepalive injection refused ({e:?})");
                        if worker.ping_refused(host, id, now).is_some() {
                            close(id);
                        }
                    }
                },
            });
        }
    }

    pub fn new_connection(&self, context_id: ConnectionId) -> Connection {
        Connection::new(context_id, Rc::clone(&self.plugin))
    }
}
