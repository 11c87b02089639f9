//! Learned cutoffs shared between Envoy's workers. Each worker learns on its own connections,
//! and would otherwise have to lose connections to learn what another worker already knows.
//! The host's shared store is one map every worker of the process reads and writes; the value
//! is the estimated cutoff and the keepalive interval in ms, as text `"<cutoff>:<interval>"`
//! (`"0"`: none).

use crate::duration::Millis;
use crate::host::{Host, StoreError};

const KEY_PREFIX: &str = "redis_idle_guard.idle_cutoff.";
/// A worker looks at the other workers' estimates this often.
pub const POLL_MS: Millis = 1_000;
/// CAS retries when several workers publish at once.
const PUBLISH_ATTEMPTS: u32 = 4;

fn key(cluster: &str) -> String {
    format!("{KEY_PREFIX}{cluster}")
}

/// An estimate and the interval it is kept alive at.
pub type Shared = Option<(Millis, Millis)>;

fn decode(bytes: &[u8]) -> Option<Shared> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text == "0" {
        return Some(None);
    }
    let (e, i) = text.split_once(':')?;
    Some(Some((e.parse().ok()?, i.parse().ok()?)))
}

fn encode(shared: Shared) -> String {
    shared.map_or_else(|| "0".to_string(), |(e, i)| format!("{e}:{i}"))
}

/// The shared estimate for `cluster` and its CAS; None if none is published (or unreadable).
pub fn read(host: &mut impl Host, cluster: &str) -> Option<(Shared, u32)> {
    let (bytes, cas) = host.shared_get(&key(cluster)).ok()??;
    Some((decode(&bytes)?, cas))
}

/// Publish this worker's new estimate and interval. A tighter one than the shared one replaces
/// it (a shorter cutoff, or the same with a shorter interval); `None` (a survival proved
/// `dropped` wrong) replaces it only if the shared estimate is still `dropped`, so a tighter
/// estimate another worker published meanwhile stands. Best effort: on a refusal each worker
/// simply keeps its own.
pub fn publish(host: &mut impl Host, cluster: &str, estimate: Shared, dropped: Option<Millis>) {
    let key = key(cluster);
    for _ in 0..PUBLISH_ATTEMPTS {
        let current = match host.shared_get(&key) {
            Ok(Some((bytes, cas))) => Some((decode(&bytes).flatten(), cas)),
            Ok(None) => None,
            Err(_) => return,
        };
        let write = match (estimate, current) {
            (_, None) => true,
            (Some(mine), Some((Some(shared), _))) => mine < shared,
            (Some(_), Some((None, _))) => true,
            (None, Some((shared, _))) => shared.is_some_and(|(e, _)| Some(e) == dropped),
        };
        if !write {
            return;
        }
        let cas = current.map_or(0, |(_, cas)| cas);
        let text = encode(estimate);
        match host.shared_set(&key, text.as_bytes(), cas) {
            Ok(()) => return,
            // Another worker wrote first: look again.
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Refused) => return,
        }
    }
}
