//! The store every worker of the process sees (for the learned cutoffs), with proxy-wasm's
//! shared-data semantics: a value carries a CAS that the next conditional write must quote.

use crate::host::{StoreError, Stored};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

static STORE: LazyLock<Mutex<HashMap<String, Stored>>> = LazyLock::new(Mutex::default);

pub fn get(key: &str) -> Result<Option<Stored>, StoreError> {
    let store = STORE.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(store.get(key).cloned())
}

/// Set `key` if its CAS is still `cas` (0: whatever it is).
pub fn set(key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
    let mut store = STORE.lock().unwrap_or_else(PoisonError::into_inner);
    let current = store.get(key).map_or(0, |(_, c)| *c);
    if cas != 0 && cas != current {
        return Err(StoreError::CasMismatch);
    }
    let next = current.wrapping_add(1).max(1);
    store.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}
