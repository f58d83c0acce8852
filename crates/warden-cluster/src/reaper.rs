//! Declaring peers dead: a pure observer of the membership table.
//!
//! A peer's incarnation is declared dead only after its heartbeat was seen unchanged for
//! [`Timing::dead_after`] on *this* node's monotonic clock, with no failed poll in between: a
//! failed poll restarts every timer, so time this node could not observe never counts against
//! a peer. The declaration itself is a compare-and-swap on the beat seen ([`crate::Pg::reap`]),
//! which loses to any renewal that lands first.

use std::collections::HashMap;
use std::time::Instant;

use crate::timing::Timing;

/// One process start of a node: its configured name and a random incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// The configured node name (the placement key).
    pub node: String,
    /// This process start's incarnation, never reused.
    pub incarnation: i64,
}

/// A row of the membership table as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Whose row.
    pub key: NodeKey,
    /// Its heartbeat counter.
    pub beat: i64,
    /// Declared dead (never cleared).
    pub dead: bool,
    /// Where its control API listens, if it said.
    pub addr: Option<String>,
}

/// The heartbeats seen, and since when each has not changed.
#[derive(Debug, Default)]
pub struct Reaper {
    seen: HashMap<NodeKey, (i64, Instant)>,
}

impl Reaper {
    /// A poll read `rows` at `now`: returns the incarnations to declare dead, each with the
    /// beat to compare against. `me` is never among them.
    pub fn observe(
        &mut self,
        now: Instant,
        rows: &[NodeRow],
        me: &NodeKey,
        timing: &Timing,
    ) -> Vec<(NodeKey, i64)> {
        let live: Vec<&NodeRow> = rows.iter().filter(|r| !r.dead && r.key != *me).collect();
        self.seen
            .retain(|key, _| live.iter().any(|row| row.key == *key));
        let mut doomed = Vec::new();
        for row in live {
            match self.seen.get(&row.key) {
                Some(&(beat, since)) if beat == row.beat => {
                    if now.duration_since(since) >= timing.dead_after {
                        doomed.push((row.key.clone(), beat));
                    }
                }
                _ => {
                    self.seen.insert(row.key.clone(), (row.beat, now));
                }
            }
        }
        doomed.sort();
        doomed
    }

    /// A poll failed: nothing is known about the time since, so every timer starts again.
    pub fn poll_failed(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(node: &str) -> NodeKey {
        NodeKey {
            node: node.to_owned(),
            incarnation: 1,
        }
    }

    /// A poll at second `at`: `Some(rows as (node, beat, dead))`, or `None` for a failed poll.
    type Poll = (u64, Option<&'static [(&'static str, i64, bool)]>);

    fn run(polls: &[Poll]) -> Vec<(u64, Vec<String>)> {
        let t = Timing::default();
        let t0 = Instant::now();
        let me = key("me");
        let mut reaper = Reaper::default();
        let mut out = Vec::new();
        for &(at, rows) in polls {
            let now = t0 + Duration::from_secs(at);
            let Some(rows) = rows else {
                reaper.poll_failed();
                continue;
            };
            let rows: Vec<NodeRow> = rows
                .iter()
                .map(|&(n, beat, dead)| NodeRow {
                    key: key(n),
                    beat,
                    dead,
                    addr: None,
                })
                .collect();
            let doomed = reaper.observe(now, &rows, &me, &t);
            if !doomed.is_empty() {
                out.push((at, doomed.into_iter().map(|(k, _)| k.node).collect()));
            }
        }
        out
    }

    #[test]
    fn a_peer_is_declared_dead_only_after_its_beat_stood_still_for_t() {
        let b1: &[(&str, i64, bool)] = &[("a", 1, false), ("me", 1, false)];
        let b2: &[(&str, i64, bool)] = &[("a", 2, false), ("me", 9, false)];
        let dead: &[(&str, i64, bool)] = &[("a", 2, true)];
        type Row = (&'static str, Vec<Poll>, Vec<(u64, Vec<&'static str>)>);
        let table: Vec<Row> = vec![
            (
                "standing still 14 s is not enough",
                vec![(0, Some(b1)), (14, Some(b1))],
                vec![],
            ),
            (
                "15 s is",
                vec![(0, Some(b1)), (15, Some(b1))],
                vec![(15, vec!["a"])],
            ),
            (
                "a beat restarts the timer",
                vec![
                    (0, Some(b1)),
                    (10, Some(b2)),
                    (24, Some(b2)),
                    (25, Some(b2)),
                ],
                vec![(25, vec!["a"])],
            ),
            (
                "a failed poll restarts every timer",
                vec![
                    (0, Some(b1)),
                    (10, None),
                    (15, Some(b1)),
                    (29, Some(b1)),
                    (30, Some(b1)),
                ],
                vec![(30, vec!["a"])],
            ),
            (
                "a row already dead is left alone",
                vec![(0, Some(dead)), (20, Some(dead))],
                vec![],
            ),
            (
                "this node never reaps itself",
                vec![(0, Some(b2)), (60, Some(b2))],
                vec![(60, vec!["a"])],
            ),
            (
                "a row that disappears is forgotten",
                vec![
                    (0, Some(b1)),
                    (5, Some(&[])),
                    (16, Some(b1)),
                    (31, Some(b1)),
                ],
                vec![(31, vec!["a"])],
            ),
        ];
        for (name, polls, expected) in table {
            let got = run(&polls);
            let expected: Vec<(u64, Vec<String>)> = expected
                .into_iter()
                .map(|(at, v)| (at, v.into_iter().map(str::to_owned).collect()))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }
}
