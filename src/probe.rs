//! Probe before stale reuse. A client command that arrives on a link with no byte from Redis
//! for `probe_after` is held in module memory; a PING goes out in its place, and the command
//! follows the PING's answer. A command that arrives while the filter's keepalive is still
//! unanswered is held the same way, behind that PING. No answer within `ping_timeout`, or the
//! upstream fails: the client connection is closed and the command is never sent, so the
//! application can safely retry it on a new connection.

use crate::duration::Millis;

/// Beyond this many held bytes the filter stops holding and lets them follow the PING at once:
/// the order on the wire is still right, only the protection for this command is given up.
pub const MAX_HELD: usize = 64 * 1024;

/// A probe PING in flight, and the client bytes held back behind it.
#[derive(Debug)]
pub struct Probe {
    pub held: Vec<u8>,
    pub since: Millis,
    /// False once the bytes were let go early (too many, or the filter stepped aside): the
    /// probe still ends as passed or failed, but a failure can no longer keep the command back.
    pub holding: bool,
    /// The probe sent its own PING (false: it holds the bytes behind a keepalive already out).
    pub own_ping: bool,
}
