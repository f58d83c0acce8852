//! kill -9 during 200 concurrent pairings, with creates still arriving, against the real
//! `warden` binary and the fake WhatsApp server, driven only through the control socket.
//!
//! What it proves:
//! - every session whose `create` was answered `ok` exists after the restart (each reply waits
//!   for its commit);
//! - every session whose pairing the operator saw acknowledged before the kill comes back
//!   logged in on its own, as the same account, without a new QR code: the fake server sees
//!   only logins for it after the restart, never a registration or a pairing;
//! - `PRAGMA integrity_check` on `sessions/warden.db` is ok right after the kill, and no key
//!   row is left without its device;
//! - the server never sees two live connections for one account, before or after the kill.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warden_control::{ControlClient, EventLine, Op};
use warden_fakewa::{ClientKind, PairSpec, Plan, QrSpec, Scenario, ServerEvent, Step};

use common::{Daemon, fake_whatsapp_with, workspace};

/// Sessions created and started at once.
const SESSIONS: usize = 200;
/// The daemon is killed as soon as this many pairings were acknowledged.
const KILL_AFTER: usize = 100;
/// Connections that keep creating (never started) sessions until the kill.
const LATE_CREATORS: usize = 4;
/// The most creates each of them sends.
const LATE_CREATES_EACH: usize = 300;
/// Bound on each wait; nothing normally comes close.
const LIMIT: Duration = Duration::from_secs(90);

/// What the `watch` stream said, in order.
#[derive(Debug)]
enum Seen {
    State {
        token: String,
        state: String,
        jid: Option<String>,
    },
    Qr {
        token: String,
    },
    /// The stream ended (the daemon died, or it dropped this watcher).
    Ended(String),
}

/// Watches every session; the stream is read at once by a task, so the daemon never finds
/// this watcher slow.
async fn watch(socket: &Path) -> mpsc::UnboundedReceiver<Seen> {
    let mut client = ControlClient::connect(socket).await.expect("connect");
    let reply = client
        .request(&Op::Watch { token: None })
        .await
        .expect("watch");
    assert!(reply.ok, "watch refused: {reply:?}");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let seen = match client.next_event().await {
                Ok(Some(EventLine::Session { session })) => Seen::State {
                    token: session.token,
                    state: session.state,
                    jid: session.jid,
                },
                Ok(Some(EventLine::Qr { token, .. })) => Seen::Qr { token },
                Ok(Some(EventLine::Closed { reason })) => Seen::Ended(reason),
                Ok(Some(_)) => continue,
                Ok(None) => Seen::Ended("the daemon hung up".into()),
                Err(e) => Seen::Ended(e.to_string()),
            };
            let ended = matches!(seen, Seen::Ended(_));
            if tx.send(seen).is_err() || ended {
                return;
            }
        }
    });
    rx
}

/// The next thing the watch saw, within `deadline`.
async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, deadline: Instant, what: &str) -> Seen {
    tokio::time::timeout_at(deadline, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the watch task ended without saying why")
}

/// Whether `reply` is an `ok` answer.
async fn ok(client: &mut ControlClient, op: Op) -> bool {
    client.request(&op).await.is_ok_and(|reply| reply.ok)
}

/// On its own connection: creates `token`, then starts it. Returns whether each was answered
/// `ok`.
async fn create_and_start(socket: PathBuf, token: String) -> (bool, bool) {
    let Ok(mut client) = ControlClient::connect(&socket).await else {
        return (false, false);
    };
    let created = ok(
        &mut client,
        Op::Create {
            name: None,
            token: Some(token.clone()),
            proxy: None,
        },
    )
    .await;
    let started = created && ok(&mut client, Op::Start { token, phone: None }).await;
    (created, started)
}

/// Creates `late<n>x<i>` one after the other until the daemon stops answering; returns the
/// tokens whose create was answered `ok`.
async fn keep_creating(socket: PathBuf, n: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let Ok(mut client) = ControlClient::connect(&socket).await else {
        return acknowledged;
    };
    for i in 0..LATE_CREATES_EACH {
        let token = format!("late{n}x{i}");
        let op = Op::Create {
            name: None,
            token: Some(token.clone()),
            proxy: None,
        };
        match client.request(&op).await {
            Ok(reply) if reply.ok => acknowledged.push(token),
            Ok(reply) => panic!("create {token} refused while the daemon was up: {reply:?}"),
            Err(_) => break, // killed
        }
    }
    acknowledged
}

/// The phone number of a device JID (`15550000001:1@s.whatsapp.net`).
fn phone_of(jid: &str) -> &str {
    jid.split([':', '@']).next().unwrap_or(jid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_200_pairings_loses_no_acknowledged_create_or_pairing() {
    // Every registration shows one QR code, is "scanned" 200 ms later and pairs a new account
    // (the next phone number from the server's pool): every session has its own account.
    let registration = Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(Duration::from_millis(200)),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(50),
            ..PairSpec::default()
        }),
    ]));
    let whatsapp = fake_whatsapp_with(registration).await;
    let recorder = whatsapp.recorder().clone();
    // The workspace's admission control (16 connecting at once, 100 per second) spreads the
    // 200 pairings out: when the daemon dies, some sessions are still connecting, some show a
    // QR code, some are paired on the server but not yet acknowledged, some are reconnecting to log in.
    let dir = workspace(&whatsapp.url());
    let mut daemon = Daemon::start(dir.path()).await;
    let socket = daemon.socket.clone();
    let mut seen = watch(&socket).await;

    let tokens: Vec<String> = (1..=SESSIONS).map(|n| format!("pair{n:03}")).collect();
    let ours: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let began = std::time::Instant::now();
    let creating = tokio::spawn(join_all(
        tokens
            .iter()
            .map(|t| create_and_start(socket.clone(), t.clone())),
    ));
    let late: Vec<_> = (0..LATE_CREATORS)
        .map(|n| tokio::spawn(keep_creating(socket.clone(), n)))
        .collect();

    // The acknowledgement of a pairing: the protocol's `pairing` state, with the account's
    // `jid`. The daemon enters it only on wa-rs's `PairSuccess`, after the new credentials were
    // committed ("the phone accepted the pairing; reconnecting to log in"), so it comes before
    // `connected` (which follows the login on the new credentials) and is the strongest
    // promise the protocol makes: the earlier the acknowledgement, the more of them a kill can
    // catch. A `connected` (committed before it is reported, too) counts as well.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    // The last state the watch showed for each session.
    let mut latest: HashMap<String, String> = HashMap::new();
    let mut see = |acked: &mut BTreeMap<String, String>, seen: Seen| match seen {
        Seen::State { token, state, jid } => {
            if let Some(jid) = jid
                && matches!(state.as_str(), "pairing" | "connected")
                && ours.contains(token.as_str())
            {
                acked.entry(token.clone()).or_insert(jid);
            }
            latest.insert(token, state);
            true
        }
        Seen::Qr { .. } => true,
        Seen::Ended(_) => false,
    };
    let deadline = Instant::now() + LIMIT;
    while acked.len() < KILL_AFTER {
        let event = next(&mut seen, deadline, "pairings to be acknowledged").await;
        if let Seen::Ended(why) = &event {
            panic!("the watch ended before the kill: {why}");
        }
        see(&mut acked, event);
    }
    daemon.child.start_kill().expect("SIGKILL");
    daemon.child.wait().await.expect("the daemon died");
    let killed_after = began.elapsed();
    // Whatever the daemon wrote before it died was acknowledged too.
    while see(
        &mut acked,
        next(&mut seen, deadline, "the watch to end").await,
    ) {}
    let still_pairing = acked
        .keys()
        .filter(|t| latest.get(*t).map(String::as_str) != Some("connected"))
        .count();
    let results = tokio::time::timeout(LIMIT, creating)
        .await
        .expect("creates and starts ended")
        .expect("creates and starts");
    let mut created: Vec<String> = Vec::new();
    for (token, (was_created, was_started)) in tokens.iter().zip(&results) {
        if *was_created {
            created.push(token.clone());
        }
        if acked.contains_key(token) {
            assert!(was_started, "{token} paired but its start was not answered");
        }
    }
    let mut late_created = 0;
    for task in late {
        let acknowledged = tokio::time::timeout(LIMIT, task)
            .await
            .expect("the creators ended")
            .expect("creator");
        late_created += acknowledged.len();
        created.extend(acknowledged);
    }
    // The kernel closed the dead daemon's sockets; let the server's bookkeeping catch up.
    recorder
        .wait_until(LIMIT, |s| s.open_connections() == 0)
        .await
        .expect("every connection of the dead daemon closed");
    let boundary = recorder.inspect(|s| s.connections().len()) as u64;
    let registrations_before = recorder.inspect(|s| {
        s.connections()
            .iter()
            .filter(|c| {
                matches!(
                    c.client.as_ref().map(|c| &c.kind),
                    Some(ClientKind::Registration { .. })
                )
            })
            .count()
    });
    let paired_before =
        recorder.inspect(|s| s.count(|r| matches!(r.event, ServerEvent::Paired { .. })));
    eprintln!(
        "killed after {killed_after:.2?}: {} pairings acknowledged ({still_pairing} not yet \
         logged in; {paired_before} paired on the server), {} of {SESSIONS} sessions and {late_created} late sessions created, \
         {registrations_before} registrations seen",
        acked.len(),
        results.iter().filter(|(c, _)| *c).count(),
    );
    for jid in acked.values() {
        let paired = recorder
            .inspect(|s| s.any(|r| matches!(&r.event, ServerEvent::Paired { jid: j } if j == jid)));
        assert!(paired, "the server never paired {jid}");
    }

    // The database, as the kill left it.
    let sessions_dir = dir.path().join("sessions");
    let db = warden_store::Db::open_in(&sessions_dir).expect("the dead daemon's database opens");
    db.integrity_check().await.expect("PRAGMA integrity_check");
    assert_eq!(
        db.orphan_rows().await.expect("database"),
        0,
        "orphan key rows"
    );
    let records: HashSet<String> = db
        .load_records()
        .await
        .expect("records")
        .into_iter()
        .map(|(token, _)| token)
        .collect();
    let lost: Vec<&String> = created.iter().filter(|t| !records.contains(*t)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates have no record: {lost:?}",
        lost.len()
    );
    for token in acked.keys() {
        let device = db.find_device(token).await.expect("database");
        assert!(
            device.is_some(),
            "{token}: acknowledged pairing, no credentials"
        );
    }
    // The daemon must find the file unlocked.
    db.close().await;

    // The restart: the sessions that were running come back by themselves.
    let daemon = Daemon::start(dir.path()).await;
    let mut seen = watch(&daemon.socket).await;
    let mut control = ControlClient::connect(&daemon.socket)
        .await
        .expect("connect");
    let list: Value = control.call(&Op::List {}).await.expect("list");
    let listed: HashSet<&str> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["token"].as_str())
        .collect();
    let lost: Vec<&String> = created
        .iter()
        .filter(|t| !listed.contains(t.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates are gone: {lost:?}",
        lost.len()
    );
    for token in acked.keys().take(5) {
        let reply = control
            .request(&Op::Status {
                token: token.clone(),
            })
            .await
            .expect("status");
        assert!(reply.ok, "{token}: {reply:?}");
    }

    // Every acknowledged pairing logs in again, as the same account: restored sessions start
    // `queued`, so a `connected` on this watch is the new daemon's.
    let mut waiting: HashMap<&str, &str> = acked
        .iter()
        .map(|(t, jid)| (t.as_str(), jid.as_str()))
        .collect();
    let mut showed_qr: Vec<String> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while !waiting.is_empty() {
        let what = format!("{} acknowledged sessions to reconnect", waiting.len());
        match next(&mut seen, deadline, &what).await {
            Seen::State { token, state, jid } => {
                if acked.contains_key(&token) && state == "waiting_for_scan" {
                    showed_qr.push(format!("{token}: waiting_for_scan"));
                }
                if state == "connected"
                    && let Some(&expected) = waiting.get(token.as_str())
                {
                    assert_eq!(
                        jid.as_deref(),
                        Some(expected),
                        "{token} came back as another account"
                    );
                    waiting.remove(token.as_str());
                }
            }
            Seen::Qr { token } if acked.contains_key(&token) => {
                showed_qr.push(format!("{token}: qr event"));
            }
            Seen::Qr { .. } => {}
            Seen::Ended(why) => panic!("the watch ended: {why}"),
        }
    }
    assert!(
        showed_qr.is_empty(),
        "acknowledged pairings asked for a QR code again: {showed_qr:?}"
    );

    // What the server saw after the restart, for the acknowledged accounts: logins that went
    // online, and no registration or pairing.
    let phones: HashSet<&str> = acked.values().map(|jid| phone_of(jid)).collect();
    recorder
        .wait_until(LIMIT, |s| {
            phones.iter().all(|phone| {
                s.records().iter().any(|r| {
                    r.conn > boundary
                        && r.account.as_deref() == Some(*phone)
                        && r.event == ServerEvent::Online
                })
            })
        })
        .await
        .expect("every acknowledged account went online again");
    let (registered_again, paired_again, registrations_after) = recorder.inspect(|s| {
        let after = s.connections().iter().filter(|c| c.id > boundary);
        let mut registered = Vec::new();
        let mut registrations = 0;
        for c in after {
            let registration = matches!(
                c.client.as_ref().map(|c| &c.kind),
                Some(ClientKind::Registration { .. })
            );
            registrations += usize::from(registration);
            if registration && c.account.as_deref().is_some_and(|a| phones.contains(a)) {
                registered.push(c.account.clone());
            }
        }
        let paired: Vec<String> = s
            .records()
            .iter()
            .filter(|r| r.conn > boundary)
            .filter_map(|r| match &r.event {
                ServerEvent::Paired { jid } | ServerEvent::PairSent { jid }
                    if phones.contains(phone_of(jid)) =>
                {
                    Some(jid.clone())
                }
                _ => None,
            })
            .collect();
        (registered, paired, registrations)
    });
    assert!(
        registered_again.is_empty(),
        "acknowledged accounts registered again: {registered_again:?}"
    );
    assert!(
        paired_again.is_empty(),
        "acknowledged accounts paired again: {paired_again:?}"
    );
    eprintln!(
        "after the restart: {} acknowledged pairings logged in again, {registrations_after} \
         registrations (sessions whose pairing was never acknowledged)",
        acked.len()
    );
    let max = recorder.inspect(|s| s.max_concurrent_any());
    assert!(max <= 1, "an account had {max} live connections at once");
}
