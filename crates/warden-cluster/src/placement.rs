//! Where a session should run: rendezvous hashing over the live nodes as the preference, a
//! per-node cap as the brake, and a grace after which any node under its cap may claim. The
//! preference never decides alone: the claim's compare-and-swap does ([`crate::Pg::claim`]).
//!
//! Everything here is pure and deterministic across processes and releases (FNV-1a, not the
//! standard library's hasher, whose output may change between Rust versions).

use std::collections::HashMap;
use std::time::Duration;

/// A stable 64-bit score of `token` on `node`: FNV-1a over both, then a finaliser that spreads
/// the bits.
pub fn score(token: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The live node that `token` prefers: the highest score (ties to the smaller name).
pub fn preferred<'a>(token: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by(|a, b| score(token, a).cmp(&score(token, b)).then(b.cmp(a)))
        .map(String::as_str)
}

/// Whether `me` should claim `token`, claimable for `waited` on this node's clock, while
/// owning `owned` sessions under an optional `cap`.
pub fn may_claim(
    me: &str,
    token: &str,
    live: &[String],
    waited: Duration,
    grace: Duration,
    owned: usize,
    cap: Option<usize>,
) -> bool {
    if cap.is_some_and(|cap| owned >= cap) {
        return false;
    }
    preferred(token, live) == Some(me) || waited >= grace
}

/// Rebalancing after a node joins: one session `me` should hand to its preferred node, if `me`
/// holds more than 10 % above the mean and that node is under its cap and below the mean.
/// `counts` holds every live node's sessions (`me` included); `mine` is what `me` owns.
pub fn rebalance_pick<'a>(
    me: &str,
    mine: &'a [String],
    counts: &HashMap<String, usize>,
    cap: Option<usize>,
) -> Option<&'a str> {
    let live: Vec<String> = {
        let mut live: Vec<String> = counts.keys().cloned().collect();
        live.sort();
        live
    };
    if live.len() < 2 {
        return None;
    }
    let total: usize = counts.values().sum();
    let mean = total as f64 / live.len() as f64;
    let my_count = counts.get(me).copied().unwrap_or(0) as f64;
    if my_count <= mean * 1.1 || my_count - mean < 1.0 {
        return None;
    }
    let mut candidates: Vec<&String> = mine.iter().collect();
    candidates.sort();
    candidates.into_iter().map(String::as_str).find(|token| {
        let Some(target) = preferred(token, &live) else {
            return false;
        };
        let theirs = counts.get(target).copied().unwrap_or(0);
        target != me && (theirs as f64) < mean && cap.is_none_or(|cap| theirs < cap)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn preference_is_stable_and_spreads_evenly() {
        let live = nodes(&["n1", "n2", "n3"]);
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for i in 0..3000 {
            let token = format!("session-{i}");
            let first = preferred(&token, &live).unwrap();
            assert_eq!(preferred(&token, &live), Some(first));
            *per_node.entry(first).or_default() += 1;
        }
        for (node, count) in &per_node {
            assert!((900..=1100).contains(count), "{node}: {count} of 3000");
        }
        // Pinned values (computed independently): nodes of different builds must agree.
        assert_eq!(score("a", "b"), 0x552d_4556_57d9_1379);
        assert_eq!(score("shop1", "n1"), 0x9c10_f962_b2b4_8df5);
        assert_ne!(score("ab", ""), score("a", "b"));
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_sessions() {
        let before = nodes(&["n1", "n2", "n3"]);
        let after = nodes(&["n1", "n3"]);
        for i in 0..1000 {
            let token = format!("t{i}");
            let was = preferred(&token, &before).unwrap();
            if was != "n2" {
                assert_eq!(preferred(&token, &after), Some(was), "{token} moved");
            }
        }
    }

    #[test]
    fn claims_follow_preference_then_grace_under_the_cap() {
        let live = nodes(&["n1", "n2"]);
        let token = (0..)
            .map(|i| format!("t{i}"))
            .find(|t| preferred(t, &live) == Some("n1"))
            .unwrap();
        let grace = Duration::from_secs(3);
        let s = Duration::from_secs;
        // (me, waited, owned, cap, claims?)
        let table = [
            ("n1", s(0), 0, None, true),
            ("n2", s(0), 0, None, false),
            ("n2", s(2), 0, None, false),
            ("n2", s(3), 0, None, true),
            ("n1", s(0), 10, Some(10), false),
            ("n2", s(9), 10, Some(10), false),
            ("n2", s(9), 9, Some(10), true),
        ];
        for (me, waited, owned, cap, claims) in table {
            assert_eq!(
                may_claim(me, &token, &live, waited, grace, owned, cap),
                claims,
                "{me} waited {waited:?} owning {owned} cap {cap:?}"
            );
        }
    }

    #[test]
    fn rebalancing_hands_over_only_past_ten_percent() {
        let live = nodes(&["n1", "n2"]);
        let mine: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let to_n2 = mine
            .iter()
            .filter(|t| preferred(t, &live) == Some("n2"))
            .count();
        assert!(to_n2 > 0);
        let counts =
            |a: usize, b: usize| HashMap::from([("n1".to_owned(), a), ("n2".to_owned(), b)]);
        // (n1's count, n2's count, cap, hands one over?)
        let table = [
            (100, 0, None, true),
            (55, 45, None, false), // 10 % above the mean: not past it
            (56, 44, None, true),
            (100, 0, Some(0), false), // n2 is at its cap
            (50, 50, None, false),
        ];
        for (n1, n2, cap, hands) in table {
            let pick = rebalance_pick("n1", &mine, &counts(n1, n2), cap);
            assert_eq!(pick.is_some(), hands, "n1 {n1}, n2 {n2}, cap {cap:?}");
            if let Some(token) = pick {
                assert_eq!(preferred(token, &live), Some("n2"));
            }
        }
        let alone = HashMap::from([("n1".to_owned(), 100)]);
        assert_eq!(rebalance_pick("n1", &mine, &alone, None), None);
    }
}
