//! Cluster members as processes (`warden-cluster-node`), over a real PostgreSQL: a node
//! frozen with SIGSTOP for longer than its lease does not take back what it lost when it
//! resumes, and SIGTERM hands a node's sessions over without waiting for its death. Every
//! wait reads the nodes' own output lines; the only bound is a failure deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::postgres::Postgres;

const WITHIN: Duration = Duration::from_secs(40);
/// Timings at a fifth of the defaults (T = 3 s, D = 2 s), as in the other cluster tests.
const SCALE: &str = "0.2";

/// One node process; killed when dropped.
struct Member {
    name: String,
    child: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Member {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }
}

/// Every node's output lines, in the order they arrived: (node, line).
struct Lines {
    tx: mpsc::Sender<(String, String)>,
    rx: mpsc::Receiver<(String, String)>,
    seen: Vec<(String, String)>,
}

impl Lines {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            tx,
            rx,
            seen: Vec::new(),
        }
    }

    fn start(&self, url: &str, name: &str, sessions: usize) -> Member {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden-cluster-node"))
            .args(["--database-url", url, "--node", name, "--scale", SCALE])
            .args(["--sessions", &sessions.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        let who = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((who.clone(), line)).is_err() {
                    return;
                }
            }
        });
        Member {
            name: name.to_owned(),
            child,
        }
    }

    /// Reads lines until `done` holds over all seen so far.
    fn until(&mut self, what: &str, done: impl Fn(&[(String, String)]) -> bool) {
        let deadline = std::time::Instant::now() + WITHIN;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("not within {WITHIN:?}: {what}; lines: {:#?}", self.seen),
            }
        }
    }
}

/// Who owns what, by the lines seen (a claim moves a session; `lost` and `fenced` drop).
fn owners(lines: &[(String, String)]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for (node, line) in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["claimed", token, _] => {
                owners.insert((*token).to_owned(), node.clone());
            }
            ["lost", token] if owners.get(*token) == Some(node) => {
                owners.remove(*token);
            }
            _ => {}
        }
    }
    owners
}

fn owned_by(lines: &[(String, String)], node: &str) -> BTreeSet<String> {
    owners(lines)
        .into_iter()
        .filter(|(_, n)| n == node)
        .map(|(t, _)| t)
        .collect()
}

fn placed(lines: &[(String, String)], total: usize, nodes: &[&str]) -> bool {
    let o = owners(lines);
    o.len() == total && nodes.iter().all(|n| o.values().any(|v| v == n))
}

#[test]
fn a_node_frozen_past_its_lease_does_not_take_back_what_it_lost() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let mut lines = Lines::new();
    let n1 = lines.start(&url, "n1", 30);
    let _n2 = lines.start(&url, "n2", 0);
    let _n3 = lines.start(&url, "n3", 0);
    lines.until("30 sessions placed on three nodes", |l| {
        placed(l, 30, &["n1", "n2", "n3"])
    });
    let lost = owned_by(&lines.seen, "n1");

    n1.signal("STOP");
    lines.until("n2 and n3 own n1's sessions", |l| {
        let o = owners(l);
        lost.iter().all(|t| o.get(t).is_some_and(|n| n != "n1"))
    });
    let frozen_until = lines.seen.len();
    n1.signal("CONT");
    // Resumed, it fences itself and joins again as a new incarnation.
    lines.until("n1 joins again", |l| {
        l[frozen_until..]
            .iter()
            .any(|(n, line)| n == "n1" && line.starts_with("registered"))
    });
    // Stopped gracefully now, it hands over what it holds: nothing.
    n1.signal("TERM");
    lines.until("n1 left", |l| {
        l.iter()
            .any(|(n, line)| n == "n1" && line.starts_with("left"))
    });
    let after: Vec<&String> = lines.seen[frozen_until..]
        .iter()
        .filter(|(n, _)| n == "n1")
        .map(|(_, line)| line)
        .collect();
    assert!(after.iter().any(|l| l.starts_with("fenced")), "{after:?}");
    assert!(
        !after.iter().any(|l| l.starts_with("claimed")),
        "took back: {after:?}"
    );
    assert!(after.contains(&&"left 0".to_owned()), "{after:?}");
    // The others kept every session.
    let o = owners(&lines.seen);
    assert_eq!(o.len(), 30);
    assert!(o.values().all(|n| n != "n1"));
}

#[test]
fn sigterm_hands_a_nodes_sessions_over_without_waiting_for_its_death() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.url();
    let mut lines = Lines::new();
    let _n1 = lines.start(&url, "n1", 30);
    let mut n2 = lines.start(&url, "n2", 0);
    let _n3 = lines.start(&url, "n3", 0);
    lines.until("30 sessions placed on three nodes", |l| {
        placed(l, 30, &["n1", "n2", "n3"])
    });
    let held = owned_by(&lines.seen, "n2");

    n2.signal("TERM");
    lines.until("n1 and n3 own all 30", |l| {
        let o = owners(l);
        o.len() == 30 && o.values().all(|n| n != "n2")
    });
    assert!(n2.child.wait().unwrap().success());
    assert!(
        lines
            .seen
            .contains(&("n2".to_owned(), format!("left {}", held.len()))),
        "{:?}",
        lines.seen
    );
    assert!(
        !lines.seen.iter().any(|(_, l)| l.starts_with("reaped")),
        "the hand-over waited for a death"
    );
}
