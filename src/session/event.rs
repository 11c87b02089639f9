//! What a session reports: the events the adapter turns into stats and log lines, and why it
//! closed a connection or stopped following one.

use crate::duration::Millis;
use crate::resp::RespError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The filter's PING went unanswered for `ping_timeout`.
    PingTimeout,
    /// The host would not let the filter send its PING; closing an idle connection before it
    /// can go stale is the fallback.
    InjectionRefused,
    /// Redis (or the path) closed the connection while the client was idle.
    ServerClosed,
    /// The probe's PING went unanswered (or could not be followed by the held command): the
    /// held command was never sent.
    ProbeFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassthroughReason {
    RequestParse(RespError),
    ReplyParse(RespError),
    /// A reply arrived that no request accounts for, or a filter place held something else.
    LostTrack(&'static str),
    Monitor,
    Replication,
    /// A mode change queued inside MULTI (CLIENT REPLY, HELLO, SUBSCRIBE…): we do not model it.
    ModeChangeInMulti,
    HostRefused,
    /// The client's first bytes are a TLS record: the session is encrypted end to end, and
    /// the filter sees no RESP (TLS must be originated by Envoy for the filter to work).
    Tls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    KeepaliveSent {
        idle_ms: Millis,
    },
    KeepaliveAnswered,
    KeepaliveFailed,
    KeepaliveRefused,
    ReconnectSignal(CloseReason),
    Passthrough(PassthroughReason),
    /// A client command is held while the probe's PING goes first.
    ProbeHeld,
    /// The probe was answered; the held command went on after `waited_ms`.
    ProbePassed {
        waited_ms: Millis,
    },
    /// The probe failed; the held command was never sent.
    ProbeFailed,
    /// The first bytes sent after `idle_ms` of silence were answered: the path survived it.
    IdleSurvived {
        idle_ms: Millis,
    },
    /// The link died after `idle_ms` of silence (PING or probe unanswered, Redis closed or
    /// reset while the client was idle).
    IdleDeath {
        idle_ms: Millis,
    },
    /// The link died (or stopped answering) while a reply was owed to the client: whatever
    /// killed it did not wait for the connection to be idle, so it was an event, not an idle
    /// cutoff (see `idle_cutoff`).
    BusyDeath,
}
