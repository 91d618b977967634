//! The one piece of host state the policy logic needs: proxy-wasm shared data, a key-value
//! store shared by every worker VM, with compare-and-swap.
//!
//! The filter implements [`SharedStore`] over `proxy_get_shared_data`/`proxy_set_shared_data`;
//! [`MemStore`] copies Envoy's rules for native tests.

use std::cell::RefCell;
use std::collections::HashMap;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the key since we read it.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// Shared data with compare-and-swap, as proxy-wasm defines it.
pub trait SharedStore {
    /// The value and its CAS token; `None` when the key is absent or was emptied.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if `cas` is 0, the key is absent, or `cas` is the key's current token.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// An in-memory [`SharedStore`] with Envoy's semantics: one CAS counter for the whole store,
/// starting at 1 and skipping 0; a set on an existing key with a non-zero stale token fails.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: RefCell<Entries>,
}

/// Key → (value, CAS token), and the last token handed out.
type Entries = (HashMap<String, (Vec<u8>, u32)>, u32);

impl MemStore {
    /// Number of keys stored (the footprint tests bound).
    pub fn len(&self) -> usize {
        self.inner.borrow().0.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.inner
            .borrow()
            .0
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let inner = self.inner.borrow();
        inner.0.get(key).filter(|(v, _)| !v.is_empty()).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.borrow_mut();
        let (map, counter) = &mut *inner;
        if let Some((_, current)) = map.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        *counter = counter.wrapping_add(1).max(1);
        map.insert(key.to_string(), (value.to_vec(), *counter));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_cas_rules() {
        let s = MemStore::default();
        assert_eq!(s.get("k"), None);
        // Absent key: any token is accepted.
        s.set("k", b"a", 77).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!((v.as_slice(), cas), (&b"a"[..], 1));
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.set("k", b"c", cas), Err(StoreError::CasMismatch));
        let (_, cas2) = s.get("k").unwrap();
        assert_eq!(cas2, 2);
        s.set("k", b"d", 0).unwrap();
        assert_eq!(s.get("k").unwrap().0, b"d");
        // Emptied values read as absent, as the SDK's remove does.
        s.set("k", b"", 0).unwrap();
        assert_eq!(s.get("k"), None);
    }
}
