//! The proxy-wasm ABI 0.2.1 entry points a network filter needs, exported directly.
//!
//! Our own rather than the SDK's dispatcher: the SDK looks each context up in SipHash maps on
//! every callback and panics on an id it does not know (a trap, which kills every connection
//! on the worker). Here an unknown id is a no-op that lets the bytes through, and a lookup is
//! one multiplicative hash.

use super::connection::{Action, Connection};
use super::plugin::Root;
use crate::context_map::ContextMap;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// The contexts of this VM (one VM per Envoy worker thread: no locking needed).
#[derive(Default)]
struct Contexts {
    roots: ContextMap<Root>,
    connections: ContextMap<Connection>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Run `f` on the context table; `fallback` if it is unavailable (never expected: callbacks
/// do not nest, and the host's only call back into the VM during ours is `malloc`).
fn with_contexts<R>(fallback: R, f: impl FnOnce(&mut Contexts) -> R) -> R {
    CONTEXTS
        .try_with(|c| c.try_borrow_mut().ok().map(|mut contexts| f(&mut contexts)))
        .ok()
        .flatten()
        .unwrap_or(fallback)
}

fn with_root<R>(id: u32, fallback: R, f: impl FnOnce(&mut Root) -> R) -> R {
    with_contexts(None, |c| c.roots.get_mut(&id).map(f)).unwrap_or(fallback)
}

fn with_connection<R>(id: u32, fallback: R, f: impl FnOnce(&mut Connection) -> R) -> R {
    with_contexts(None, |c| c.connections.get_mut(&id).map(f)).unwrap_or(fallback)
}

/// The ABI version marker Envoy looks for.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills for us (buffer bytes, properties). A buffer read goes into the
/// reused read buffer host.rs lends for the call; anything else is freed by whoever takes
/// ownership: host.rs rebuilds it as a `Vec<u8>` of exactly this capacity.
#[export_name = "malloc"]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    if let Some(lent) = super::abi::take_lent(size) {
        return lent;
    }
    let mut bytes: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit needs no initialisation; the host writes the bytes before use.
    unsafe { bytes.set_len(size) };
    Box::into_raw(bytes.into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    with_contexts((), |c| {
        if root_context_id == 0 {
            c.roots.insert(context_id, Root::new());
        } else if let Some(root) = c.roots.get(&root_context_id) {
            let connection = root.new_connection(context_id);
            c.connections.insert(context_id, connection);
        }
        // A connection of an unknown root gets no context: its callbacks are no-ops.
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool {
    with_root(context_id, true, |r| r.on_vm_start(vm_configuration_size))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with_root(context_id, false, |r| {
        r.on_configure(plugin_configuration_size)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_root(context_id, (), Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(context_id: u32) -> u32 {
    with_connection(context_id, Action::Continue, Connection::on_new_connection) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_data(
    context_id: u32,
    data_size: usize,
    end_of_stream: u32,
) -> u32 {
    with_connection(context_id, Action::Continue, |c| {
        c.on_downstream_data(data_size, end_of_stream != 0)
    }) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_upstream_data(
    context_id: u32,
    data_size: usize,
    end_of_stream: u32,
) -> u32 {
    with_connection(context_id, Action::Continue, |c| {
        c.on_upstream_data(data_size, end_of_stream != 0)
    }) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_downstream_connection_close(context_id: u32, peer_type: u32) {
    with_connection(context_id, (), |c| c.on_downstream_close(peer_type));
}

/// Envoy 1.40 was never seen calling this for a listener filter; nothing to do if it does.
#[no_mangle]
pub extern "C" fn proxy_on_upstream_connection_close(_context_id: u32, _peer_type: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> bool {
    with_connection(context_id, true, Connection::on_done)
}

#[no_mangle]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    // Dropping a Connection also forgets its session (see its Drop).
    let removed = with_contexts(None, |c| {
        c.connections
            .remove(&context_id)
            .map(|conn| Box::new(conn) as Box<dyn std::any::Any>)
            .or_else(|| {
                c.roots
                    .remove(&context_id)
                    .map(|root| Box::new(root) as Box<dyn std::any::Any>)
            })
    });
    // Dropped outside the borrow of the context table.
    drop(removed);
}
