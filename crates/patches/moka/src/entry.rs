//! [`Entry`]: a key and a value, as returned by the entry and compute operations.

use std::sync::Arc;

/// A cache entry: its key, its value and how the operation that returned it found it.
#[derive(Debug, Clone)]
pub struct Entry<K, V> {
    key: Arc<K>,
    value: V,
    fresh: bool,
    replaced: bool,
}

impl<K, V> Entry<K, V> {
    pub(crate) fn new(key: Arc<K>, value: V, fresh: bool, replaced: bool) -> Self {
        Self {
            key,
            value,
            fresh,
            replaced,
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The entry's value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The entry's value, consuming the entry.
    pub fn into_value(self) -> V {
        self.value
    }

    /// Whether the operation that returned it inserted or computed the value (rather than
    /// finding it in the cache).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Whether the operation replaced an older value.
    pub fn is_old_value_replaced(&self) -> bool {
        self.replaced
    }
}
