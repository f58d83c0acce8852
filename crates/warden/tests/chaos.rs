//! Chaos (#13 item 1): a driver creates, starts, stops, logs out, deletes and restarts
//! sessions through the control socket of the real `warden` binary, against the fake WhatsApp
//! server (every registration pairs a new account), and the daemon is killed with SIGKILL at
//! a random moment, 20 times (`WARDEN_CHAOS_KILLS` sets another number; the seed is printed,
//! and `WARDEN_CHAOS_SEED` replays its operations and kill delays, not the interleavings).
//! After each kill:
//! - the database passes `PRAGMA integrity_check` and has no key row without its device;
//! - every session whose `create` was answered exists, with the same name and the desired
//!   state of its last answered operation (the one operation in flight at the kill may or may
//!   not have happened), and every answered `delete` is gone;
//! - the restarted daemon brings every session that had finished pairing (its record holds
//!   its account, and its credentials are there) and is meant to run back logged in as the
//!   same account, without a QR code (a delete cut short by the kill goes credentials first,
//!   so its record may outlive them);
//! - the fake server never saw two live connections for one account.
//!
//! It prints sessions lost, sessions corrupted and double connections: all three must be 0.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warden_control::{ControlClient, Op};
use warden_core::Desired;
use warden_core::store::SessionRecord;

use common::{Daemon, fake_whatsapp_with, until_without_qr, workspace};

const KILLS: usize = 20;
/// About how many sessions the driver keeps.
const MAX_LIVE: usize = 40;
const LIMIT: Duration = Duration::from_secs(60);

/// xorshift64*: enough randomness for a replayable schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the answered operations say about one session.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    name: String,
    desired: Desired,
}

/// The driver's view: sessions as the answers left them, deletions, and the operation in
/// flight (sent, not answered).
#[derive(Debug, Default)]
struct Model {
    sessions: BTreeMap<String, Expected>,
    deleted: BTreeSet<String>,
    pending: Option<Op>,
    created: usize,
}

fn token_of(op: &Op) -> &str {
    match op {
        Op::Create { token, .. } => token.as_deref().unwrap_or(""),
        Op::Start { token, .. }
        | Op::Stop { token }
        | Op::Logout { token }
        | Op::Delete { token }
        | Op::Restart { token, .. } => token,
        _ => "",
    }
}

impl Model {
    /// Applies an answered operation.
    fn apply(&mut self, op: &Op) {
        let token = token_of(op).to_owned();
        match op {
            Op::Create {
                name: Some(name), ..
            } => {
                self.sessions.insert(
                    token,
                    Expected {
                        name: name.clone(),
                        desired: Desired::Stopped,
                    },
                );
            }
            Op::Start { .. } | Op::Restart { .. } => {
                if let Some(s) = self.sessions.get_mut(&token) {
                    s.desired = Desired::Running;
                }
            }
            Op::Stop { .. } | Op::Logout { .. } => {
                if let Some(s) = self.sessions.get_mut(&token) {
                    s.desired = Desired::Stopped;
                }
            }
            Op::Delete { .. } => {
                self.sessions.remove(&token);
                self.deleted.insert(token);
            }
            _ => {}
        }
    }

    /// The next operation: mostly on live sessions, sometimes a new one.
    fn choose(&mut self, rng: &mut Rng, round: usize) -> Op {
        let live: Vec<&String> = self.sessions.keys().collect();
        if live.len() < 6 || rng.below(100) < 20 {
            self.created += 1;
            let n = self.created;
            return Op::Create {
                name: Some(format!("Shop {n}")),
                token: Some(format!("r{round}n{n}")),
                proxy: None,
            };
        }
        let token = live[rng.below(live.len())].clone();
        // Past `MAX_LIVE` sessions, deletes dominate: every round's checks stay small.
        if live.len() > MAX_LIVE && rng.below(2) == 0 {
            return Op::Delete { token };
        }
        match rng.below(100) {
            0..40 => Op::Start { token, phone: None },
            40..55 => Op::Stop { token },
            55..67 => Op::Logout { token },
            67..80 => Op::Delete { token },
            _ => Op::Restart { token, force: true },
        }
    }
}

/// Sends operations one at a time until the daemon stops answering.
async fn drive(socket: std::path::PathBuf, model: Arc<Mutex<Model>>, seed: u64, round: usize) {
    let mut rng = Rng(seed | 1);
    let Ok(mut client) = ControlClient::connect(&socket).await else {
        return;
    };
    loop {
        let op = {
            let mut m = model.lock().unwrap();
            let op = m.choose(&mut rng, round);
            m.pending = Some(op.clone());
            op
        };
        match client.request(&op).await {
            Ok(reply) => {
                let mut m = model.lock().unwrap();
                if reply.ok {
                    m.apply(&op);
                }
                m.pending = None;
            }
            Err(_) => return, // killed: `pending` may or may not have happened
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_corrupts_nothing() {
    let kills: usize = std::env::var("WARDEN_CHAOS_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(KILLS);
    let seed: u64 = std::env::var("WARDEN_CHAOS_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: {kills} kills, WARDEN_CHAOS_SEED={seed}");
    let mut rng = Rng(seed | 1);
    // Every registration shows one QR code, is "scanned" 50 ms later and pairs a new account.
    let registration = common::pair_any(Duration::from_millis(50));
    let whatsapp = fake_whatsapp_with(registration).await;
    let recorder = whatsapp.recorder().clone();
    let dir = workspace(&whatsapp.url());
    let model = Arc::new(Mutex::new(Model::default()));
    let (mut lost, mut corrupted) = (Vec::new(), Vec::new());
    let mut logins_checked = 0;

    let mut daemon = Daemon::start(dir.path()).await;
    for round in 0..kills {
        let driver = tokio::spawn(drive(
            daemon.socket.clone(),
            model.clone(),
            rng.next(),
            round,
        ));
        tokio::time::sleep(Duration::from_millis(100 + rng.below(1400) as u64)).await;
        daemon.child.start_kill().expect("SIGKILL");
        daemon.child.wait().await.expect("the daemon died");
        tokio::time::timeout(LIMIT, driver)
            .await
            .expect("the driver saw the kill")
            .unwrap();
        recorder
            .wait_until(LIMIT, |s| s.open_connections() == 0)
            .await
            .expect("every connection of the dead daemon closed");

        // The database, as the kill left it.
        let db = warden_store::Db::open_in(&dir.path().join("sessions")).expect("it opens");
        db.integrity_check().await.expect("PRAGMA integrity_check");
        assert_eq!(db.orphan_rows().await.unwrap(), 0, "orphan key rows");
        let mut records: BTreeMap<String, SessionRecord> = BTreeMap::new();
        // Sessions whose record names an account and whose credentials are there: paired.
        let mut paired: BTreeSet<String> = BTreeSet::new();
        for (token, text) in db.load_records().await.unwrap() {
            match SessionRecord::decode(&token, &text) {
                Ok(record) => {
                    if record.jid.is_some() && db.find_device(&token).await.unwrap().is_some() {
                        paired.insert(token.clone());
                    }
                    records.insert(token, record);
                }
                Err(e) => corrupted.push(format!("{token}: {e}")),
            }
        }
        db.close().await;

        // Against the answers.
        let pending_token = {
            let mut m = model.lock().unwrap();
            let pending = m.pending.take();
            let pending_token = pending.as_ref().map(token_of).unwrap_or("").to_owned();
            for (token, expected) in &m.sessions {
                let Some(record) = records.get(token) else {
                    if !matches!(&pending, Some(Op::Delete { .. })) || *token != pending_token {
                        lost.push(format!("round {round}: {token}"));
                    }
                    continue;
                };
                if record.name != expected.name {
                    corrupted.push(format!("{token}: name {:?}", record.name));
                }
                if record.desired != expected.desired && *token != pending_token {
                    corrupted.push(format!(
                        "{token}: desired {:?}, answered {:?}",
                        record.desired, expected.desired
                    ));
                }
            }
            for token in &m.deleted {
                assert!(!records.contains_key(token), "{token}: deleted, but back");
            }
            for token in records.keys() {
                let known = m.sessions.contains_key(token) || *token == pending_token;
                assert!(known, "{token}: a session nobody created");
            }
            // The one in flight: whatever happened, the model follows the database.
            if let Some(op) = &pending {
                match records.get(&pending_token) {
                    Some(record) => {
                        m.sessions.insert(
                            pending_token.clone(),
                            Expected {
                                name: record.name.clone(),
                                desired: record.desired,
                            },
                        );
                        if let Op::Create {
                            name: Some(name), ..
                        } = op
                        {
                            assert_eq!(&record.name, name);
                        }
                    }
                    None => {
                        m.sessions.remove(&pending_token);
                        m.deleted.insert(pending_token.clone());
                    }
                }
            }
            pending_token
        };

        // Paired sessions meant to run log in again, as the same account, without a QR code
        // (the one in flight at the kill aside: a logout may have been half done). The next
        // round drives this daemon.
        daemon = Daemon::start(dir.path()).await;
        for (token, record) in &records {
            if let (Some(jid), Desired::Running) = (&record.jid, record.desired)
                && *token != pending_token
                && paired.contains(token)
            {
                let back =
                    until_without_qr(&daemon.socket, token, |s| s.state == "connected").await;
                assert_eq!(
                    back.jid.as_ref(),
                    Some(jid),
                    "{token} came back as another account"
                );
                logins_checked += 1;
            }
        }
    }
    daemon.child.start_kill().unwrap();
    daemon.child.wait().await.unwrap();
    let double = recorder
        .inspect(|s| s.max_concurrent_any())
        .saturating_sub(1);
    let created = model.lock().unwrap().created;
    eprintln!(
        "chaos: {kills} kills, {created} sessions created, {logins_checked} logins after a kill \
         checked; sessions lost {}, sessions corrupted {}, double connections {double}",
        lost.len(),
        corrupted.len()
    );
    assert!(logins_checked > 0, "no paired session was ever checked");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(corrupted.is_empty(), "corrupted: {corrupted:?}");
    assert_eq!(double, 0, "an account had two live connections at once");
}
