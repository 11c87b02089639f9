//! One client connection's callbacks.

use super::host::{self, HostBuffer, Level};
use super::root::Registry;
use super::stats;
use crate::metrics::Metric;
use crate::session::{CloseReason, Session};
use std::cell::RefCell;
use std::rc::Rc;

pub struct Connection {
    id: u32,
    registry: Rc<RefCell<Registry>>,
    /// Data callbacks left in which to look up the upstream cluster (Envoy sets it once
    /// tcp_proxy has connected); 0 once known or given up.
    lookups_left: u8,
}

/// A connection whose cluster is still unknown after this many data callbacks is counted in
/// the global stats only.
const UPSTREAM_LOOKUPS: u8 = 4;

impl Connection {
    pub fn new(id: u32, registry: Rc<RefCell<Registry>>) -> Connection {
        Connection {
            id,
            registry,
            lookups_left: UPSTREAM_LOOKUPS,
        }
    }

    /// Learn which upstream cluster this connection goes to, once.
    fn identify_upstream(&mut self) {
        if self.lookups_left == 0 {
            return;
        }
        self.lookups_left -= 1;
        let cluster = match host::property(&["xds", "cluster_name"]) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                host::log(Level::Debug, &format!("redis-idle-guard: connection {}: no upstream cluster ({e:?}); global stats only", self.id));
                self.lookups_left = 0;
                return;
            }
        };
        self.lookups_left = 0;
        let cluster = String::from_utf8_lossy(&cluster);
        if let Ok(mut registry) = self.registry.try_borrow_mut() {
            registry.identify(self.id, &cluster);
        }
        if let Ok(Some(address)) = host::property(&["upstream", "address"]) {
            host::log(
                Level::Debug,
                &format!(
                    "redis-idle-guard: connection {} goes to upstream {cluster} (host {})",
                    self.id,
                    String::from_utf8_lossy(&address)
                ),
            );
        }
    }

    /// Run `f` on this connection's session, then record its events and re-arm its timer.
    /// None when there is no session (stepped aside at birth) or the registry is busy.
    fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.try_with_session(|s| Some(f(s)))
    }

    /// As [`Connection::with_session`], but `f` may decline (None), and then nothing is
    /// recorded or re-armed: the session did not change.
    fn try_with_session<R>(&self, f: impl FnOnce(&mut Session) -> Option<R>) -> Option<R> {
        let mut guard = self.registry.try_borrow_mut().ok()?;
        let registry = &mut *guard;
        let session = registry.sessions.get_mut(&self.id)?;
        let result = f(session)?;
        let events = session.take_events();
        let upstream = session.upstream();
        let next = session.next_deadline();
        registry
            .schedule
            .arm_cached(self.id, next, &mut session.armed);
        registry.settle(self.id, upstream, &events);
        Some(result)
    }

    /// Carry out a close the session decided inside a data callback (a probe that cannot
    /// complete). True if the connection is being closed.
    fn carry_out_close(&self, close: Option<CloseReason>) -> bool {
        if close.is_none() {
            return false;
        }
        if let Err(e) = host::close_downstream() {
            host::log(
                Level::Warn,
                &format!(
                    "redis-idle-guard: connection {}: close refused ({e:?})",
                    self.id
                ),
            );
        }
        true
    }
}

/// What a data callback tells Envoy (proxy-wasm ABI 0.2.1 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// proxy-wasm `PeerType` for a connection close: who closed it.
pub const PEER_LOCAL: u32 = 1;

impl Connection {
    pub fn on_done(&mut self) -> bool {
        if let Ok(mut registry) = self.registry.try_borrow_mut() {
            registry.remove(self.id);
        }
        true
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut registry) = self.registry.try_borrow_mut() {
            registry.remove(self.id);
        }
    }
}

impl Connection {
    pub fn on_new_connection(&mut self) -> Action {
        let Ok(now) = host::now_ms() else {
            host::log(
                Level::Warn,
                &format!(
                    "redis-idle-guard: connection {}: no host clock; passing through",
                    self.id
                ),
            );
            stats::add(Metric::Passthrough, 1);
            return Action::Continue;
        };
        let Ok(mut registry) = self.registry.try_borrow_mut() else {
            return Action::Continue;
        };
        let mut session = Box::new(Session::new(&registry.config, now));
        let next = session.next_deadline();
        registry
            .schedule
            .arm_cached(self.id, next, &mut session.armed);
        registry.sessions.insert(self.id, session);
        stats::add(Metric::Connections, 1);
        Action::Continue
    }

    /// A data callback's work on the session, given the host clock (for a reply owed promptly,
    /// the session's own lower bound of it: see `Session::reply_time_hint`). A read that lies wholly
    /// inside a payload the filter skips is consumed with no host call (no clock, no bytes, no
    /// pause: nothing can be injected before its frame ends) and `f` is not run: None, as when
    /// there is no session or no clock; either way the bytes just go on.
    fn on_data<R>(
        &self,
        size: usize,
        end_of_stream: bool,
        client: bool,
        f: impl FnOnce(&mut Session, u64) -> R,
    ) -> Option<R> {
        self.try_with_session(|s| {
            let skipped = !end_of_stream
                && if client {
                    s.skip_client_payload(size)
                } else {
                    s.skip_server_payload(size)
                };
            if skipped {
                return None;
            }
            let hint = if client || end_of_stream {
                None
            } else {
                s.reply_time_hint()
            };
            let now = match hint {
                Some(now) => now,
                None => host::now_ms().ok()?,
            };
            Some(f(s, now))
        })
    }

    pub fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.identify_upstream();
        let outcome = self.on_data(size, end_of_stream, true, |s, now| {
            // Before the data: bytes held by a probe must go out ahead of the client's FIN.
            if end_of_stream {
                s.client_closed();
            }
            s.on_client_data(now, &mut HostBuffer::downstream(size));
            (!s.requests_unfollowed(), s.take_close())
        });
        let (follow, close) = outcome.map_or((None, None), |(f, c)| (Some(f), c));
        if self.carry_out_close(close) {
            // Whatever is in the buffer must not reach Redis without the held bytes before it:
            // keep it paused; the close discards it.
            return Action::Pause;
        }
        if follow != Some(true) || end_of_stream {
            return Action::Continue;
        }
        // Pause, but let the bytes go on right after this callback: Envoy then keeps its
        // pointer to the read buffer, and the root tick can append a PING to it later.
        match host::continue_downstream() {
            Ok(()) => Action::Pause,
            Err(e) => {
                host::log(
                    Level::Warn,
                    &format!(
                        "redis-idle-guard: connection {}: continue refused ({e:?})",
                        self.id
                    ),
                );
                self.with_session(Session::host_failed);
                Action::Continue
            }
        }
    }

    pub fn on_upstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        // Never Pause here: Envoy cannot resume the write path.
        self.identify_upstream();
        let close = self.on_data(size, end_of_stream, false, |s, now| {
            s.on_server_data(now, &mut HostBuffer::upstream(size));
            // Redis's FIN, on its way to the client: tcp_proxy closes the client connection
            // next. While the client is idle, that close is the reconnect signal.
            if end_of_stream {
                s.upstream_closed(now);
            }
            // The probe was answered: the held command follows it, through the read buffer
            // Envoy kept for us (the last on_downstream_data returned Pause).
            if let Some(held) = s.take_release() {
                let sent = host::append_downstream(&held).and_then(|()| host::continue_downstream());
                if let Err(e) = sent {
                    host::log(Level::Warn, &format!("redis-idle-guard: releasing the held command refused ({e:?}); closing without sending it"));
                    s.fail_probe();
                }
            }
            s.take_close()
        });
        self.carry_out_close(close.flatten());
        Action::Continue
    }

    pub fn on_downstream_close(&mut self, peer: u32) {
        // Envoy closing the client (tcp_proxy after an upstream reset or its idle timeout) is
        // seen only here: Envoy 1.40 does not call on_upstream_close for network filters.
        if peer == PEER_LOCAL {
            let now = host::now_ms().unwrap_or(0);
            self.with_session(|s| s.upstream_closed(now));
        } else {
            self.with_session(Session::client_closed);
        }
    }
}
