//! [`Cache`]: moka's `future::Cache` API over a mutex'd map; see the crate docs.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::Entry;
use crate::ops::compute::{CompResult, Op};
use crate::sweeper::{self, Sweep};

/// A concurrent cache with optional time-to-live, time-to-idle and capacity. Cheap to clone:
/// every clone is the same cache.
pub struct Cache<K, V, S = RandomState> {
    inner: Arc<Inner<K, V, S>>,
}

struct Inner<K, V, S> {
    map: Mutex<Map<K, V, S>>,
    /// Serialises `get_with` inits and `and_compute_with` computes, so that each runs once
    /// per key and atomically. Only taken when the fast path missed.
    compute: tokio::sync::Mutex<()>,
    settings: Settings,
    /// Whether the sweeper has this cache in its list; changed under `map`'s lock.
    registered: AtomicBool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    max_capacity: Option<u64>,
    time_to_live: Option<Duration>,
    time_to_idle: Option<Duration>,
}

impl Settings {
    fn expires(&self) -> bool {
        self.time_to_live.is_some() || self.time_to_idle.is_some()
    }

    fn expired<V>(&self, slot: &Slot<V>, now: Instant) -> bool {
        self.time_to_live
            .is_some_and(|ttl| now.saturating_duration_since(slot.born) >= ttl)
            || self
                .time_to_idle
                .is_some_and(|tti| now.saturating_duration_since(slot.used) >= tti)
    }
}

struct Map<K, V, S> {
    slots: HashMap<K, Slot<V>, S>,
    /// Bumped on every use; the smallest ticks are the least recently used.
    tick: u64,
}

struct Slot<V> {
    value: V,
    born: Instant,
    used: Instant,
    tick: u64,
}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, S> std::fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// What a builder builds, as a type marker.
type Builds<K, V, C> = PhantomData<fn() -> (K, V, C)>;

/// Builds a [`Cache`].
#[must_use]
pub struct CacheBuilder<K, V, C> {
    settings: Settings,
    _cache: Builds<K, V, C>,
}

impl<K, V> CacheBuilder<K, V, Cache<K, V, RandomState>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder with no limit and no expiry.
    pub fn new(max_capacity: u64) -> Self {
        Self::default().max_capacity(max_capacity)
    }

    /// The most entries the cache keeps; past it, the least recently used are evicted.
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.settings.max_capacity = Some(max_capacity);
        self
    }

    /// Accepted for compatibility; the map grows as needed.
    pub fn initial_capacity(self, _capacity: usize) -> Self {
        self
    }

    /// An entry expires this long after it was inserted (or last replaced).
    pub fn time_to_live(mut self, duration: Duration) -> Self {
        self.settings.time_to_live = Some(duration);
        self
    }

    /// An entry expires this long after it was last read or written.
    pub fn time_to_idle(mut self, duration: Duration) -> Self {
        self.settings.time_to_idle = Some(duration);
        self
    }

    /// Accepted for compatibility; caches are not named.
    pub fn name(self, _name: &str) -> Self {
        self
    }

    /// The cache.
    pub fn build(self) -> Cache<K, V, RandomState> {
        Cache::with_settings(self.settings, RandomState::new())
    }

    /// The cache, with its own hasher.
    pub fn build_with_hasher<S>(self, hasher: S) -> Cache<K, V, S>
    where
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        Cache::with_settings(self.settings, hasher)
    }
}

impl<K, V, C> Default for CacheBuilder<K, V, C> {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            _cache: PhantomData,
        }
    }
}

impl<K, V> Cache<K, V, RandomState>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `max_capacity` entries, without expiry.
    pub fn new(max_capacity: u64) -> Self {
        Self::builder().max_capacity(max_capacity).build()
    }

    /// A builder.
    pub fn builder() -> CacheBuilder<K, V, Cache<K, V, RandomState>> {
        CacheBuilder::default()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    fn with_settings(settings: Settings, hasher: S) -> Self {
        if settings.expires() {
            // The sweeper's one thread starts with the first cache that can hold expiring
            // entries, not with its first such entry: a process's thread count is then
            // settled once its first client exists.
            sweeper::start();
        }
        Self {
            inner: Arc::new(Inner {
                map: Mutex::new(Map {
                    slots: HashMap::with_hasher(hasher),
                    tick: 0,
                }),
                compute: tokio::sync::Mutex::new(()),
                settings,
                registered: AtomicBool::new(false),
            }),
        }
    }

    fn map(&self) -> MutexGuard<'_, Map<K, V, S>> {
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key`, unless it is missing or expired.
    pub async fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_now(key)
    }

    fn get_now<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_at(key, Instant::now())
    }

    fn get_at<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut expired = None;
        let value = {
            let mut map = self.map();
            map.tick += 1;
            let tick = map.tick;
            match map.slots.get_mut(key) {
                Some(slot) if self.inner.settings.expired(slot, now) => {
                    expired = map.slots.remove(key);
                    None
                }
                Some(slot) => {
                    slot.used = now;
                    slot.tick = tick;
                    Some(slot.value.clone())
                }
                None => None,
            }
        };
        drop(expired);
        value
    }

    /// Whether `key` has a value that has not expired.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        self.map()
            .slots
            .get(key)
            .is_some_and(|slot| !self.inner.settings.expired(slot, now))
    }

    /// Inserts or replaces the value of `key`.
    pub async fn insert(&self, key: K, value: V) {
        self.insert_now(key, value);
    }

    /// Inserts; returns whether a live value was replaced.
    fn insert_now(&self, key: K, value: V) -> bool {
        self.insert_at(key, value, Instant::now())
    }

    fn insert_at(&self, key: K, value: V, now: Instant) -> bool {
        let settings = self.inner.settings;
        let (old, evicted, register) = {
            let mut map = self.map();
            map.tick += 1;
            let slot = Slot {
                value,
                born: now,
                used: now,
                tick: map.tick,
            };
            let old = map.slots.insert(key, slot);
            let evicted = match settings.max_capacity {
                Some(max) if map.slots.len() as u64 > max => evict(&mut map, settings, max, now),
                _ => Vec::new(),
            };
            let register = settings.expires()
                && !map.slots.is_empty()
                && !self.inner.registered.swap(true, Ordering::Relaxed);
            (old, evicted, register)
        };
        if register {
            let me: Arc<dyn Sweep> = self.inner.clone();
            sweeper::register(Arc::downgrade(&me));
        }
        let replaced = old.is_some_and(|slot| !settings.expired(&slot, now));
        drop(evicted);
        replaced
    }

    /// Removes `key`; returns its value unless it had expired.
    pub async fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let old = self.map().slots.remove(key);
        old.filter(|slot| !self.inner.settings.expired(slot, now))
            .map(|slot| slot.value)
    }

    /// Removes `key`.
    pub async fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = self.map().slots.remove(key);
        drop(old);
    }

    /// Removes every entry.
    pub fn invalidate_all(&self) {
        let old = {
            let mut map = self.map();
            let hasher = map.slots.hasher().clone();
            std::mem::replace(&mut map.slots, HashMap::with_hasher(hasher))
        };
        drop(old);
    }

    /// The number of entries (expired ones not yet removed included, as in moka).
    pub fn entry_count(&self) -> u64 {
        self.map().slots.len() as u64
    }

    /// Removes the expired entries now (moka runs its housekeeping here).
    pub async fn run_pending_tasks(&self) {
        let expired = take_expired(&mut self.map(), self.inner.settings, Instant::now());
        drop(expired);
    }

    /// The value of `key`; if it has none, `init` is awaited (once, however many callers race
    /// for the same key) and its value inserted.
    pub async fn get_with(&self, key: K, init: impl Future<Output = V>) -> V {
        if let Some(value) = self.get_now(&key) {
            return value;
        }
        let _compute = self.inner.compute.lock().await;
        if let Some(value) = self.get_now(&key) {
            return value;
        }
        let value = init.await;
        self.insert_now(key, value.clone());
        value
    }

    /// [`get_with`](Self::get_with) with a borrowed key, owned only when inserted.
    pub async fn get_with_by_ref<Q>(&self, key: &Q, init: impl Future<Output = V>) -> V
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        if let Some(value) = self.get_now(key) {
            return value;
        }
        let _compute = self.inner.compute.lock().await;
        if let Some(value) = self.get_now(key) {
            return value;
        }
        let value = init.await;
        self.insert_now(key.to_owned(), value.clone());
        value
    }

    /// The entry of an owned key, for `or_insert` and `and_compute_with`.
    pub fn entry(&self, key: K) -> OwnedKeyEntrySelector<'_, K, V, S>
    where
        K: Clone,
    {
        OwnedKeyEntrySelector { cache: self, key }
    }

    /// The entry of a borrowed key, for `or_insert` and `and_compute_with`.
    pub fn entry_by_ref<'a, Q>(&'a self, key: &'a Q) -> RefKeyEntrySelector<'a, K, Q, V, S>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        RefKeyEntrySelector { cache: self, key }
    }

    /// `or_insert_with` of both selectors: under `compute`, the current value, or `init`'s.
    async fn or_insert_with(
        &self,
        make_key: impl Fn() -> K,
        init: impl Future<Output = V>,
    ) -> Entry<K, V> {
        let _compute = self.inner.compute.lock().await;
        let key = make_key();
        if let Some(v) = self.get_now(&key) {
            return Entry::new(Arc::new(key), v, false, false);
        }
        let v = init.await;
        self.insert_now(make_key(), v.clone());
        Entry::new(Arc::new(key), v, true, false)
    }

    /// `and_compute_with` of both selectors: under `compute`, `f` decides from the current
    /// value.
    async fn compute<F, Fut>(&self, make_key: impl Fn() -> K, f: F) -> CompResult<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = Op<V>>,
    {
        let _compute = self.inner.compute.lock().await;
        let key = Arc::new(make_key());
        let current = self.get_now(key.as_ref());
        let existed = current.is_some();
        let op = f(current
            .clone()
            .map(|v| Entry::new(key.clone(), v, false, false)))
        .await;
        match (op, current) {
            (Op::Nop, None) => CompResult::StillNone(key),
            (Op::Nop, Some(v)) => CompResult::Unchanged(Entry::new(key, v, false, false)),
            (Op::Remove, None) => CompResult::StillNone(key),
            (Op::Remove, Some(_)) => {
                let removed = self.remove(key.as_ref()).await;
                match removed {
                    Some(v) => CompResult::Removed(Entry::new(key, v, false, false)),
                    None => CompResult::StillNone(key),
                }
            }
            (Op::Put(v), _) => {
                self.insert_now(make_key(), v.clone());
                if existed {
                    CompResult::ReplacedWith(Entry::new(key, v, true, true))
                } else {
                    CompResult::Inserted(Entry::new(key, v, true, false))
                }
            }
        }
    }
}

/// Removes the entries expired at `now`; returns them, to be dropped outside the lock.
fn take_expired<K, V, S>(map: &mut Map<K, V, S>, settings: Settings, now: Instant) -> Vec<V>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    if !settings.expires() || !map.slots.values().any(|s| settings.expired(s, now)) {
        return Vec::new();
    }
    split_off(map, |slot| settings.expired(slot, now))
}

/// Brings the map down to seven eighths of `max`, so that the O(n) pass is paid once per
/// `max / 8` inserts rather than on each: expired entries first, then the least recently used.
fn evict<K, V, S>(map: &mut Map<K, V, S>, settings: Settings, max: u64, now: Instant) -> Vec<V>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    let target = max - max / 8;
    let mut gone = take_expired(map, settings, now);
    let len = map.slots.len() as u64;
    if len <= target {
        return gone;
    }
    let excess = (len - target) as usize;
    let mut ticks: Vec<u64> = map.slots.values().map(|s| s.tick).collect();
    let (_, cutoff, _) = ticks.select_nth_unstable(excess - 1);
    let cutoff = *cutoff;
    gone.extend(split_off(map, |slot| slot.tick <= cutoff));
    gone
}

/// Removes the entries `pred` picks and returns their values; one pass, and the map is rebuilt
/// at its size so that nothing is rehashed twice.
fn split_off<K, V, S>(map: &mut Map<K, V, S>, pred: impl Fn(&Slot<V>) -> bool) -> Vec<V>
where
    K: Hash + Eq,
    S: BuildHasher + Clone,
{
    let hasher = map.slots.hasher().clone();
    let len = map.slots.len();
    let all = std::mem::replace(
        &mut map.slots,
        HashMap::with_capacity_and_hasher(len, hasher),
    );
    let mut taken = Vec::new();
    for (key, slot) in all {
        if pred(&slot) {
            taken.push(slot.value);
        } else {
            map.slots.insert(key, slot);
        }
    }
    map.slots.shrink_to_fit();
    taken
}

impl<K, V, S> Sweep for Inner<K, V, S>
where
    K: Hash + Eq + Send + Sync,
    V: Send + Sync,
    S: BuildHasher + Clone + Send + Sync,
{
    fn sweep(&self, now: Instant) -> bool {
        let (expired, remains) = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let expired = take_expired(&mut map, self.settings, now);
            let remains = !map.slots.is_empty();
            if !remains {
                self.registered.store(false, Ordering::Relaxed);
            }
            (expired, remains)
        };
        drop(expired);
        remains
    }
}

/// The entry of an owned key; see [`Cache::entry`].
pub struct OwnedKeyEntrySelector<'a, K, V, S> {
    cache: &'a Cache<K, V, S>,
    key: K,
}

impl<K, V, S> OwnedKeyEntrySelector<'_, K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The entry's value, inserting `default` if there is none.
    pub async fn or_insert(self, default: V) -> Entry<K, V> {
        self.or_insert_with(async { default }).await
    }

    /// The entry's value, inserting the value of `init` if there is none.
    pub async fn or_insert_with(self, init: impl Future<Output = V>) -> Entry<K, V> {
        let key = self.key;
        self.cache.or_insert_with(|| key.clone(), init).await
    }

    /// Computes the entry from its current value, atomically; see [`Op`].
    pub async fn and_compute_with<F, Fut>(self, f: F) -> CompResult<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = Op<V>>,
    {
        let key = self.key;
        self.cache.compute(|| key.clone(), f).await
    }
}

/// The entry of a borrowed key; see [`Cache::entry_by_ref`].
pub struct RefKeyEntrySelector<'a, K, Q: ?Sized, V, S> {
    cache: &'a Cache<K, V, S>,
    key: &'a Q,
}

impl<K, Q, V, S> RefKeyEntrySelector<'_, K, Q, V, S>
where
    K: Hash + Eq + Borrow<Q> + Send + Sync + 'static,
    Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync + 'static,
{
    /// The entry's value, inserting `default` if there is none.
    pub async fn or_insert(self, default: V) -> Entry<K, V> {
        self.or_insert_with(async { default }).await
    }

    /// The entry's value, inserting the value of `init` if there is none.
    pub async fn or_insert_with(self, init: impl Future<Output = V>) -> Entry<K, V> {
        let key = self.key;
        self.cache.or_insert_with(|| key.to_owned(), init).await
    }

    /// Computes the entry from its current value, atomically; see [`Op`].
    pub async fn and_compute_with<F, Fut>(self, f: F) -> CompResult<K, V>
    where
        F: FnOnce(Option<Entry<K, V>>) -> Fut,
        Fut: Future<Output = Op<V>>,
    {
        let key = self.key;
        self.cache.compute(|| key.to_owned(), f).await
    }
}

#[cfg(test)]
mod tests;
