//! The operations of `and_compute_with`.

/// What a compute closure asks for, and what came of it.
pub mod compute {
    use std::sync::Arc;

    use crate::Entry;

    /// What to do with the entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op<V> {
        /// Leave it as it is.
        Nop,
        /// Insert or replace its value.
        Put(V),
        /// Remove it.
        Remove,
    }

    /// The result of `and_compute_with`.
    #[derive(Debug)]
    pub enum CompResult<K, V> {
        /// There was no entry, and there still is none.
        StillNone(Arc<K>),
        /// The entry existed and was left as it was (its value).
        Unchanged(Entry<K, V>),
        /// There was no entry; one was inserted (its value).
        Inserted(Entry<K, V>),
        /// The entry existed and its value was replaced (the new value).
        ReplacedWith(Entry<K, V>),
        /// The entry existed and was removed (the removed value).
        Removed(Entry<K, V>),
    }

    impl<K, V> CompResult<K, V> {
        /// The entry, if there is one.
        pub fn into_entry(self) -> Option<Entry<K, V>> {
            match self {
                CompResult::StillNone(_) => None,
                CompResult::Unchanged(e)
                | CompResult::Inserted(e)
                | CompResult::ReplacedWith(e)
                | CompResult::Removed(e) => Some(e),
            }
        }

        /// The entry; panics if there is none.
        pub fn unwrap(self) -> Entry<K, V> {
            self.into_entry()
                .expect("CompResult::unwrap called on StillNone")
        }
    }
}
