//! One client connection's callbacks.

use super::abi::{self, HostBuffer};
use super::host::WasmHost;
use super::plugin::Plugin;
use crate::duration::Millis;
use crate::host::{Cluster, ConnectionId, DataCallback};
use crate::session::CloseReason;
use crate::worker::Worker;
use std::cell::RefCell;
use std::rc::Rc;

pub struct Connection {
    id: ConnectionId,
    plugin: Rc<RefCell<Plugin>>,
}

/// What a data callback tells Envoy (proxy-wasm ABI 0.2.1 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// proxy-wasm `PeerType` for a connection close: who closed it.
const PEER_LOCAL: u32 = 1;

/// Close the client connection (Envoy does it after the callback); true if asked to.
fn carry_out_close(id: ConnectionId, close: Option<CloseReason>) -> bool {
    if close.is_none() {
        return false;
    }
    if let Err(e) = abi::close_downstream() {
        log::warn!("connection {id}: close refused ({e:?})");
    }
    true
}

/// One data callback, as the core may ask about it.
struct Callback {
    id: ConnectionId,
    size: usize,
    /// on_downstream_data (the client's bytes), else on_upstream_data.
    client: bool,
}

impl DataCallback for Callback {
    type Buffer<'a> = HostBuffer;

    fn now(&mut self) -> Option<Millis> {
        abi::now_ms().ok()
    }

    fn buffer(&mut self) -> HostBuffer {
        if self.client {
            HostBuffer::downstream(self.size)
        } else {
            HostBuffer::upstream(self.size)
        }
    }

    /// Envoy sets `xds.cluster_name` once tcp_proxy has connected.
    fn cluster(&mut self) -> Cluster {
        match abi::property(&["xds", "cluster_name"]) {
            Ok(Some(cluster)) => {
                if let Ok(Some(address)) = abi::property(&["upstream", "address"]) {
                    let address = String::from_utf8_lossy(&address);
                    log::debug!("connection {}: upstream host {address}", self.id);
                }
                Cluster::Known(String::from_utf8_lossy(&cluster).into_owned())
            }
            Ok(None) => Cluster::NotYet,
            Err(e) => {
                log::debug!("connection {}: upstream cluster refused ({e:?})", self.id);
                Cluster::Unknowable
            }
        }
    }
}

impl Connection {
    pub fn new(id: ConnectionId, plugin: Rc<RefCell<Plugin>>) -> Connection {
        Connection { id, plugin }
    }

    /// Run `f` on the worker; `fallback` if the plugin is busy (never expected: callbacks do
    /// not nest).
    fn with<R>(&self, fallback: R, f: impl FnOnce(&mut Worker, &mut WasmHost) -> R) -> R {
        match self.plugin.try_borrow_mut() {
            Ok(mut plugin) => plugin.with(f),
            Err(_) => fallback,
        }
    }

    pub fn on_new_connection(&mut self) -> Action {
        let now = abi::now_ms().ok();
        let id = self.id;
        self.with((), |w, host| w.open(host, id, now));
        Action::Continue
    }

    pub fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let id = self.id;
        let mut callback = Callback {
            id,
            size,
            client: true,
        };
        let verdict = self.with(Default::default(), |w, host| {
            w.on_client_data(host, id, size, end_of_stream, &mut callback)
        });
        if carry_out_close(id, verdict.close) {
            // Whatever is in the buffer must not reach Redis without the held bytes before it:
            // keep it paused; the close discards it.
            return Action::Pause;
        }
        if !verdict.following || end_of_stream {
            return Action::Continue;
        }
        // Pause, but let the bytes go on right after this callback: Envoy then keeps its
        // pointer to the read buffer, and the tick can append a PING to it later.
        match abi::continue_downstream() {
            Ok(()) => Action::Pause,
            Err(e) => {
                log::warn!("connection {id}: continue refused ({e:?})");
                self.with((), |w, host| w.host_failed(host, id));
                Action::Continue
            }
        }
    }

    pub fn on_upstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        // Never Pause here: Envoy cannot resume the write path.
        let id = self.id;
        let mut callback = Callback {
            id,
            size,
            client: false,
        };
        let (release, close) = self.with((None, None), |w, host| {
            w.on_server_data(host, id, size, end_of_stream, &mut callback)
        });
        let mut close = close;
        // The probe was answered: the held command follows it, through the read buffer Envoy
        // kept for us (the last on_downstream_data returned Pause).
        if let Some(held) = release {
            let sent = abi::append_downstream(&held).and_then(|()| abi::continue_downstream());
            if let Err(e) = sent {
                log::warn!(
                    "releasing the held command refused ({e:?}); closing without sending it"
                );
                close = self.with(None, |w, host| w.release_failed(host, id));
            }
        }
        carry_out_close(id, close);
        Action::Continue
    }

    pub fn on_downstream_close(&mut self, peer: u32) {
        // Envoy closing the client (tcp_proxy after an upstream reset or its idle timeout) is
        // seen only here: Envoy 1.40 does not call on_upstream_close for network filters.
        let now = abi::now_ms().unwrap_or(0);
        let id = self.id;
        self.with((), |w, host| w.closed(host, id, peer == PEER_LOCAL, now));
    }

    pub fn on_done(&mut self) -> bool {
        self.forget();
        true
    }

    fn forget(&self) {
        let id = self.id;
        if let Ok(mut plugin) = self.plugin.try_borrow_mut() {
            plugin.schedule.forget(id);
            plugin.with(|w, host| w.remove(host, id));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.forget();
    }
}
