use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::sweeper::sweep_once;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn expiry_follows_time_to_live_and_time_to_idle() {
    let t0 = Instant::now();
    let slot = |born: u64, used: u64| Slot {
        value: (),
        born: t0 + Duration::from_secs(born),
        used: t0 + Duration::from_secs(used),
        tick: 0,
    };
    let settings = |ttl: Option<u64>, tti: Option<u64>| Settings {
        max_capacity: None,
        time_to_live: ttl.map(Duration::from_secs),
        time_to_idle: tti.map(Duration::from_secs),
    };
    // (ttl, tti, born, last used, now, expired)
    let table = [
        (None, None, 0, 0, 1_000_000, false),
        (Some(300), None, 0, 0, 299, false),
        (Some(300), None, 0, 0, 300, true),
        (Some(300), None, 0, 299, 300, true), // use does not extend a time to live
        (None, Some(10), 0, 0, 9, false),
        (None, Some(10), 0, 5, 14, false), // use extends a time to idle
        (None, Some(10), 0, 5, 15, true),
        (Some(300), Some(10), 0, 295, 300, true),
        (Some(300), Some(10), 0, 0, 10, true),
    ];
    for (ttl, tti, born, used, now, expected) in table {
        let got = settings(ttl, tti).expired(&slot(born, used), t0 + Duration::from_secs(now));
        assert_eq!(
            got, expected,
            "ttl {ttl:?} tti {tti:?} born {born} used {used} now {now}"
        );
    }
}

#[tokio::test]
async fn values_are_inserted_read_replaced_and_removed() {
    let cache: Cache<String, u32> = Cache::builder().max_capacity(10).build();
    assert_eq!(cache.get("a").await, None);
    cache.insert("a".into(), 1).await;
    assert_eq!(cache.get("a").await, Some(1));
    assert!(cache.contains_key("a"));
    let shared = cache.clone();
    shared.insert("a".into(), 2).await;
    assert_eq!(cache.get("a").await, Some(2), "clones are the same cache");
    assert_eq!(cache.remove("a").await, Some(2));
    assert_eq!(cache.remove("a").await, None);
    cache.insert("b".into(), 3).await;
    cache.invalidate("b").await;
    assert!(!cache.contains_key("b"));
    cache.insert("c".into(), 4).await;
    cache.invalidate_all();
    assert_eq!(cache.entry_count(), 0);
    let entry = cache.entry("d".to_string()).or_insert(5).await;
    assert!(entry.is_fresh());
    let entry = cache.entry_by_ref("d").or_insert(6).await;
    assert_eq!((entry.key().as_str(), *entry.value()), ("d", 5));
    assert!(!entry.is_fresh());
}

#[tokio::test]
async fn past_its_capacity_the_least_recently_used_go_first() {
    let cache: Cache<u32, u32> = Cache::builder().max_capacity(2).build();
    cache.insert(1, 1).await;
    cache.insert(2, 2).await;
    assert_eq!(cache.get(&1).await, Some(1)); // 2 is now the least recently used
    cache.insert(3, 3).await;
    assert_eq!(cache.entry_count(), 2);
    assert_eq!(cache.get(&2).await, None);
    assert_eq!(
        (cache.get(&1).await, cache.get(&3).await),
        (Some(1), Some(3))
    );

    let big: Cache<u32, u32> = Cache::new(800);
    for i in 0..10_000 {
        big.insert(i, i).await;
        assert!(big.entry_count() <= 800);
    }
    assert_eq!(big.get(&9_999).await, Some(9_999), "the newest stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_get_with_runs_the_init_once() {
    let cache: Cache<String, Arc<tokio::sync::Mutex<()>>> = Cache::builder().build();
    let inits = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for n in 0..64 {
        let cache = cache.clone();
        let inits = inits.clone();
        calls.push(tokio::spawn(async move {
            let init = async {
                inits.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Arc::new(tokio::sync::Mutex::new(()))
            };
            if n % 2 == 0 {
                cache.get_with("chat".to_string(), init).await
            } else {
                cache.get_with_by_ref("chat", init).await
            }
        }));
    }
    let mut locks = Vec::new();
    for call in calls {
        locks.push(call.await.unwrap());
    }
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    assert!(
        locks.iter().all(|l| Arc::ptr_eq(l, &locks[0])),
        "one lock for the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_is_atomic() {
    const MAX: u8 = 5;
    let cache: Cache<String, u8> = Cache::builder().build();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let cache = cache.clone();
        calls.push(tokio::spawn(async move {
            let result = cache
                .entry_by_ref("msg")
                .and_compute_with(|current| {
                    let op = match current.map(Entry::into_value) {
                        Some(n) if n >= MAX => Op::Nop,
                        Some(n) => Op::Put(n + 1),
                        None => Op::Put(1),
                    };
                    async move {
                        tokio::task::yield_now().await;
                        op
                    }
                })
                .await;
            match result {
                CompResult::Inserted(e) | CompResult::ReplacedWith(e) => Some(e.into_value()),
                _ => None,
            }
        }));
    }
    let mut counts = Vec::new();
    for call in calls {
        if let Some(n) = call.await.unwrap() {
            counts.push(n);
        }
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=MAX).collect::<Vec<_>>());
    let removed = cache
        .entry("msg".to_string())
        .and_compute_with(|_| async { Op::Remove })
        .await;
    assert!(matches!(removed, CompResult::Removed(ref e) if *e.value() == MAX));
    let none = cache
        .entry_by_ref("msg")
        .and_compute_with(|_| async { Op::Nop })
        .await;
    assert!(matches!(none, CompResult::StillNone(k) if k.as_str() == "msg"));
}

/// Expired entries are never returned, and the sweeper frees them without anyone asking: a
/// value holding a channel's sender (as wa-rs's per-chat queues do) is dropped, so the task
/// on the other end ends.
#[tokio::test]
async fn expired_entries_are_not_returned_and_the_sweeper_frees_them() {
    let cache: Cache<String, tokio::sync::mpsc::Sender<()>> =
        Cache::builder().time_to_live(5 * MINUTE).build();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let t0 = Instant::now();
    cache.insert_at("chat".into(), tx, t0);
    assert!(cache.get_at("chat", t0 + 4 * MINUTE).is_some());
    assert!(
        cache.get_at("chat", t0 + 5 * MINUTE).is_none(),
        "expired on read"
    );
    assert_eq!(cache.entry_count(), 0, "and removed");
    assert_eq!(rx.recv().await, None, "the sender was dropped");

    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    cache.insert_at("chat".into(), tx, t0);
    let idle: Cache<u32, u32> = Cache::builder().build(); // nothing can expire: never listed
    idle.insert(1, 1).await;
    assert!(!idle.inner.registered.load(Ordering::Relaxed));
    assert!(cache.inner.registered.load(Ordering::Relaxed));
    sweep_once(t0 + MINUTE);
    assert_eq!(cache.entry_count(), 1, "not expired yet");
    sweep_once(t0 + 6 * MINUTE);
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(rx.recv().await, None, "swept without a read");
    assert!(
        !cache.inner.registered.load(Ordering::Relaxed),
        "an empty cache leaves the sweeper's list"
    );
    // It registers again with its next entry.
    let (tx, _rx) = tokio::sync::mpsc::channel::<()>(1);
    cache.insert("again".into(), tx).await;
    assert!(cache.inner.registered.load(Ordering::Relaxed));
}

#[test]
fn an_empty_cache_is_small() {
    // What wa-rs's clients pay per cache before using it: the Arc'd inner, nothing else.
    let size = std::mem::size_of::<Inner<String, Arc<()>, RandomState>>();
    assert!(size <= 256, "{size} bytes");
}

#[test]
fn eviction_always_makes_room_for_an_eighth_of_the_capacity() {
    // Expired entries alone would bring the map back under its capacity; the pass still goes
    // down to seven eighths, so the next inserts do not each pay a full pass.
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(16)
        .time_to_live(MINUTE)
        .build();
    let t0 = Instant::now();
    cache.insert_at(0, 0, t0);
    cache.insert_at(1, 1, t0);
    for i in 2..16 {
        cache.insert_at(i, i, t0 + MINUTE / 2);
    }
    assert_eq!(cache.entry_count(), 16);
    // 17 entries > 16; 0 and 1 have expired, which leaves 15: one more goes (2, the least
    // recently used) to reach 14.
    cache.insert_at(16, 16, t0 + MINUTE);
    assert_eq!(cache.entry_count(), 14, "down to 16 - 16 / 8");
    let now = t0 + MINUTE;
    assert!(
        cache.get_at(&2, now).is_none(),
        "the least recently used went"
    );
    assert!((3..=16).all(|i| cache.get_at(&i, now).is_some()));
}
