//! Faults of one node in a cluster of three `warden serve` daemons over a real PostgreSQL
//! (Debian's, started by the test; skipped where none is installed) and the fake WhatsApp
//! server, which here ends the older connection of a device that logs in again
//! (`<stream:error><conflict type="replaced"/>`, as WhatsApp does). The lease timings are five
//! times faster than the defaults: a node fences itself 2 s after the send time of its last
//! successful renewal, its peers declare it dead after 3 s. Each node reaches the fake server
//! through its own forwarding proxy, so every connection the server sees is known by node.
//!
//! What it proves:
//! - **a partition between one node and PostgreSQL only** (a TCP proxy in front of the
//!   database, cut): the cut-off node fences itself and closes its WhatsApp connections before
//!   any other node's connection of those accounts even shakes hands; every one of its sessions
//!   comes online on the others; the server never sees two live connections of one account.
//!   Healed, the node joins again and runs a session placed on it, and never reconnects a
//!   session it lost on its own: it makes no connection of those accounts while cut off, and
//!   any it makes after it rejoined is a hand-over (rebalancing), which begins once the owner
//!   closed its connection; never two live connections of one account, nothing replaced;
//! - **a node frozen past its lease** (SIGSTOP): its sockets stay open at the server, so the
//!   other nodes' logins replace them there (two connections of an account for a moment, never
//!   three); once it runs again (SIGCONT) it fences itself and lets its sessions go without a
//!   fight: the new owners' connections are never replaced, each account ends with one live
//!   connection, and any connection of those accounts it makes after it rejoined is a clean
//!   hand-over as above; it runs a session placed on it.
//!
//! A hand-over to the returning node is allowed, not required: rebalancing may give it some of
//! its sessions back, one at a time, each closed by its owner first.

#[path = "common/cluster.rs"]
mod cluster_support;
mod common;
#[path = "../../warden-cluster/tests/support/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use warden_fakewa::{
    CloseKind, ConnId, FakeServer, Plan, Scenario, Script, ServerConfig, ServerEvent, Snapshot,
};

use cluster_support::{LIMIT, Postgres, add_sessions, add_tokens, held, phone_of, said};
use common::{Daemon, pair_any, workspace};
use proxy::CutProxy;

/// Sessions in the cluster.
const SESSIONS: usize = 9;
/// The lease timings, five times faster than the defaults: fenced after 2 s, dead after 3 s.
const SCALE: &str = "0.2";
/// The nodes' names.
const NAMES: [&str; 3] = ["a", "b", "c"];
/// What a node logs when it fences itself (`warden-cluster`'s heartbeat).
const FENCED: &str = "fenced: this node's lease ended";
/// What it logs once it has registered a new incarnation.
const REJOINED: &str = "joined the cluster again";

/// One test at a time: each runs PostgreSQL and three daemons on a 0.8 s lease margin, which
/// two cores shared by two such tests could starve.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fake WhatsApp that pairs every registration, accepts every login, and replaces the
/// older login of a device that logs in again.
async fn fake_whatsapp() -> FakeServer {
    let script = Script::default()
        .with_registration(pair_any(Duration::from_millis(200)))
        .with_login(Plan::always(Scenario::login()));
    FakeServer::start(ServerConfig {
        replace_older_login: true,
        ..ServerConfig::with_script(script)
    })
    .await
    .unwrap()
}

/// Which node made each connection the fake server accepted: every node dials the server
/// through its own forwarding proxy, which notes the local port of each connection it opens
/// to the server (the peer the server records).
#[derive(Clone, Default)]
struct Origins(Arc<Mutex<HashMap<u16, usize>>>);

impl Origins {
    /// A forwarding proxy to `upstream` for node number `node`; the URL the node dials.
    async fn front(&self, node: usize, upstream: SocketAddr) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let origins = self.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let origins = origins.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if let Ok(local) = server.local_addr() {
                        origins.0.lock().unwrap().insert(local.port(), node);
                    }
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        format!("ws://127.0.0.1:{port}/ws/chat")
    }

    /// The node that made connection `conn`.
    fn of(&self, s: &Snapshot, conn: ConnId) -> usize {
        let peer = s.connection(conn).expect("a connection").peer;
        *self
            .0
            .lock()
            .unwrap()
            .get(&peer.port())
            .unwrap_or_else(|| panic!("connection {conn} from {peer} came through no node's proxy"))
    }
}

/// Three nodes, `a`, `b` and `c`, reaching PostgreSQL at `urls` and the fake server through
/// `origins`.
async fn start_nodes(
    whatsapp: &FakeServer,
    origins: &Origins,
    urls: [String; 3],
) -> (Vec<Daemon>, Vec<tempfile::TempDir>) {
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    for (i, (name, url)) in NAMES.into_iter().zip(urls).enumerate() {
        let dir = workspace(&origins.front(i, whatsapp.addr()).await);
        let env = [
            ("WARDEN_CLUSTER_DATABASE_URL", url.as_str()),
            ("WARDEN_CLUSTER_NODE", name),
            ("WARDEN_CLUSTER_TIMING_SCALE", SCALE),
        ];
        daemons.push(Daemon::start_with(dir.path(), &env).await);
        dirs.push(dir);
    }
    (daemons, dirs)
}

/// Accounts that went online on the server.
fn online_accounts(s: &Snapshot) -> BTreeSet<&str> {
    s.records()
        .iter()
        .filter(|r| r.event == ServerEvent::Online)
        .filter_map(|r| r.account.as_deref())
        .collect()
}

/// Adds [`SESSIONS`] sessions, waits until each is linked and online on one node, and returns
/// the node running the most, with its sessions (token → account).
async fn spread(
    server: &Postgres,
    whatsapp: &FakeServer,
    daemons: &mut [Daemon],
) -> (usize, BTreeMap<String, String>) {
    let tokens = add_sessions(server, SESSIONS).await;
    whatsapp
        .recorder()
        .wait_until(LIMIT, |s| online_accounts(s).len() == SESSIONS)
        .await
        .unwrap_or_else(|_| panic!("every session linked and online; {}", said(daemons)));
    let mut shares = Vec::new();
    for daemon in daemons.iter() {
        shares.push(held(daemon).await);
    }
    let all: BTreeSet<String> = shares.iter().flat_map(|s| s.keys().cloned()).collect();
    assert_eq!(all.into_iter().collect::<Vec<_>>(), tokens, "{shares:?}");
    assert_eq!(
        shares.iter().map(BTreeMap::len).sum::<usize>(),
        SESSIONS,
        "each on one node: {shares:?}"
    );
    let victim = (0..shares.len()).max_by_key(|&i| shares[i].len()).unwrap();
    let accounts: BTreeMap<String, String> = shares[victim]
        .iter()
        .map(|(token, jid)| {
            let jid = jid.as_deref().expect("linked");
            (token.clone(), phone_of(jid).to_owned())
        })
        .collect();
    assert!(
        !accounts.is_empty() && accounts.len() < SESSIONS,
        "placement spreads the sessions: {shares:?}"
    );
    (victim, accounts)
}

/// The connections of `phone` that are live now (open, and their session not ended by the
/// server).
fn live(s: &Snapshot, phone: &str) -> Vec<ConnId> {
    s.connections_for(phone)
        .into_iter()
        .filter(|c| c.closed.is_none() && c.retired.is_none())
        .map(|c| c.id)
        .collect()
}

/// Each of `phones` with its one live connection, made by node `node`.
fn live_connections(
    s: &Snapshot,
    origins: &Origins,
    phones: &BTreeSet<String>,
    node: usize,
) -> BTreeMap<String, ConnId> {
    phones
        .iter()
        .map(|phone| {
            let live = live(s, phone);
            assert_eq!(live.len(), 1, "one live connection of {phone}: {live:?}");
            assert_eq!(origins.of(s, live[0]), node, "{phone}'s connection");
            (phone.clone(), live[0])
        })
        .collect()
}

/// The connections of `phone` accepted after `boundary`, in the order they shook hands.
fn since(s: &Snapshot, boundary: ConnId, phone: &str) -> Vec<ConnId> {
    let mut conns: Vec<ConnId> = s
        .connections_for(phone)
        .into_iter()
        .filter(|c| c.id > boundary)
        .map(|c| c.id)
        .collect();
    conns.sort_by_key(|c| handshake(s, *c));
    conns
}

/// Where in the server's log the first record of `conn` matching `what` is.
fn position(s: &Snapshot, conn: ConnId, what: impl Fn(&ServerEvent) -> bool) -> Option<usize> {
    s.records()
        .iter()
        .position(|r| r.conn == conn && what(&r.event))
}

/// Where `conn`'s handshake is in the server's log.
fn handshake(s: &Snapshot, conn: ConnId) -> usize {
    position(s, conn, |e| matches!(e, ServerEvent::Handshake { .. })).expect("shook hands")
}

/// Checks that `chain`, connections of `phone` in the order they shook hands, followed each
/// other cleanly: each logged in once and went online, none was replaced, and each but the
/// last was closed by its node (a hand-over) before the next one shook hands. The last is
/// live.
fn cleanly_in_turn(s: &Snapshot, phone: &str, chain: &[ConnId]) {
    let log = |conn: ConnId| format!("{:?}", s.events_of(conn));
    for &conn in chain {
        let logins = s.count(|r| r.conn == conn && r.event == ServerEvent::LoginAccepted);
        assert_eq!(
            logins,
            1,
            "{phone}: connection {conn} logged in once: {}",
            log(conn)
        );
        assert!(
            position(s, conn, |e| *e == ServerEvent::Online).is_some(),
            "{phone}: connection {conn} went online: {}",
            log(conn)
        );
        assert!(
            position(s, conn, |e| matches!(e, ServerEvent::Replaced { .. })).is_none(),
            "{phone}: connection {conn} was replaced by a second login: {}",
            log(conn)
        );
    }
    for pair in chain.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let closed = s.connection(before).unwrap().closed.map(|(_, kind)| kind);
        assert_eq!(
            closed,
            Some(CloseKind::Client),
            "{phone}: connection {before} was closed by its node before {after} came: {}",
            log(before)
        );
        let closed = position(s, before, |e| matches!(e, ServerEvent::Closed(_))).unwrap();
        assert!(
            closed < handshake(s, after),
            "{phone}: connection {after} shook hands before {before} closed"
        );
    }
    let last = s.connection(*chain.last().expect("a connection")).unwrap();
    assert_eq!(
        (last.closed, last.retired),
        (None, None),
        "{phone}: the last connection is live"
    );
}

/// Waits until each of `phones` has exactly one live connection, online (a hand-over in
/// progress has none for a moment); the server's record at that moment.
async fn until_one_live_each(whatsapp: &FakeServer, phones: &BTreeSet<String>) -> Snapshot {
    let seen = Mutex::new(None);
    whatsapp
        .recorder()
        .wait_until(LIMIT, |s| {
            let done = phones.iter().all(|phone| {
                let live = live(s, phone);
                live.len() == 1 && position(s, live[0], |e| *e == ServerEvent::Online).is_some()
            });
            if done {
                *seen.lock().unwrap() = Some(s.clone());
            }
            done
        })
        .await
        .expect("each account with one live connection, online");
    seen.into_inner().unwrap().expect("seen")
}

/// Sends `signal` (`-STOP`, `-CONT`) to `daemon` with kill(1).
async fn signal(daemon: &Daemon, signal: &str) {
    let pid = daemon.child.id().expect("running");
    let sent = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Waits until `node`'s live incarnation has renewed its lease twice: by then every other
/// node has read the membership with it (they poll every 0.2 s), so placement prefers it
/// everywhere. (A claim checks its preferred node against the membership its poll read, which
/// may be older than the sessions it finds claimable.) The database is the only place this
/// shows, so it is read every 50 ms.
async fn until_renewed(server: &Postgres, node: &str) {
    let pg = warden_cluster::Pg::connect(&server.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let rows = pg.nodes().await.unwrap();
        if rows
            .iter()
            .any(|r| r.key.node == node && !r.dead && r.beat >= 2)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} renews its lease: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds a session that placement prefers on node number `node`, once every node sees it
/// live, waits until the session is linked and online, and checks that the node runs it, on
/// its own connection: the node claims, dials and writes again.
async fn placed_on(
    server: &Postgres,
    whatsapp: &FakeServer,
    origins: &Origins,
    daemon: &Daemon,
    node: usize,
) {
    let name = NAMES[node];
    let nodes: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    until_renewed(server, name).await;
    let token = (0..)
        .map(|n| format!("late{n}"))
        .find(|t| warden_cluster::placement::preferred(t, &nodes) == Some(name))
        .unwrap();
    add_tokens(server, std::slice::from_ref(&token)).await;
    let recorder = whatsapp.recorder();
    recorder
        .wait_until(LIMIT, |s| online_accounts(s).len() == SESSIONS + 1)
        .await
        .unwrap_or_else(|_| panic!("{token} linked and online"));
    let here = held(daemon).await;
    let jid = here
        .get(&token)
        .unwrap_or_else(|| panic!("node {name} runs {token}, placed on it: {here:?}"))
        .as_deref()
        .expect("linked");
    let conns = recorder.inspect(|s| live(s, phone_of(jid)));
    assert_eq!(conns.len(), 1, "{token}: {conns:?}");
    assert_eq!(recorder.inspect(|s| origins.of(s, conns[0])), node);
}

/// After the node `victim` came back: each of `phones` has one live connection, the
/// connections accepted after `boundary` followed each other cleanly (see
/// [`cleanly_in_turn`]), and none of them is `victim`'s before `back` (the connection count
/// when it came back). Returns how many accounts `victim` got back by a hand-over.
async fn no_fight(
    whatsapp: &FakeServer,
    origins: &Origins,
    phones: &BTreeSet<String>,
    victim: usize,
    boundary: ConnId,
    back: ConnId,
) -> usize {
    let s = &until_one_live_each(whatsapp, phones).await;
    let mut returned = 0;
    for phone in phones {
        let chain = since(s, boundary, phone);
        cleanly_in_turn(s, phone, &chain);
        let first = chain[0];
        assert_ne!(
            origins.of(s, first),
            victim,
            "{phone}: the first connection after the fault is another node's"
        );
        let theirs: Vec<ConnId> = chain
            .iter()
            .copied()
            .filter(|c| origins.of(s, *c) == victim)
            .collect();
        assert!(
            theirs.iter().all(|c| *c > back),
            "{phone}: node {} connected it before it came back: {theirs:?}",
            NAMES[victim]
        );
        returned += usize::from(origins.of(s, *chain.last().unwrap()) == victim);
    }
    returned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_fences_itself_before_the_others_connect() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let whatsapp = fake_whatsapp().await;
    let recorder = whatsapp.recorder();
    let origins = Origins::default();
    // Every node reaches PostgreSQL through its own proxy, so that the one to cut can be the
    // one placement gave the most.
    let proxies = [
        CutProxy::start(server.port()).await,
        CutProxy::start(server.port()).await,
        CutProxy::start(server.port()).await,
    ];
    let urls = proxies.each_ref().map(|p| server.url_via(p.port()));
    let (mut daemons, _dirs) = start_nodes(&whatsapp, &origins, urls).await;
    let (victim, lost) = spread(&server, &whatsapp, &mut daemons).await;
    let phones: BTreeSet<String> = lost.values().cloned().collect();
    let old = recorder.inspect(|s| live_connections(s, &origins, &phones, victim));
    let boundary = recorder.inspect(|s| s.connections().len()) as ConnId;

    // The partition: this node and PostgreSQL only.
    proxies[victim].cut();
    let cut = Instant::now();
    daemons[victim].log_line(FENCED).await;
    let fenced = cut.elapsed();
    let early = recorder.inspect(|s| {
        phones
            .iter()
            .flat_map(|p| since(s, boundary, p))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        early,
        Vec::<ConnId>::new(),
        "no other node connected those accounts before the cut-off node fenced itself"
    );
    cluster_support::until_online_after(recorder, boundary, &phones, "the cut-off node's").await;
    let took_over = cut.elapsed();
    // Its connections were closed by itself, each before any other of its account shook hands.
    recorder.inspect(|s| {
        for (phone, conn) in &old {
            let mut chain = vec![*conn];
            chain.extend(since(s, boundary, phone));
            cleanly_in_turn(s, phone, &chain[..2]);
            assert_ne!(origins.of(s, chain[1]), victim, "{phone}");
        }
        assert!(
            !s.any(|r| matches!(r.event, ServerEvent::Replaced { .. })),
            "no login replaced another"
        );
    });
    assert_eq!(
        recorder.inspect(|s| s.max_concurrent_any()),
        1,
        "the server never saw two live connections of one account"
    );

    // Healed: the node joins again, runs what is placed on it, and takes back only what is
    // handed over to it.
    let healed = recorder.inspect(|s| s.connections().len()) as ConnId;
    proxies[victim].heal();
    daemons[victim].log_line(REJOINED).await;
    placed_on(&server, &whatsapp, &origins, &daemons[victim], victim).await;
    let returned = no_fight(&whatsapp, &origins, &phones, victim, boundary, healed).await;
    assert_eq!(
        recorder.inspect(|s| s.max_concurrent_any()),
        1,
        "never two live connections of one account, after the heal either"
    );
    assert!(
        !recorder.inspect(|s| s.any(|r| matches!(r.event, ServerEvent::Replaced { .. }))),
        "no login replaced another"
    );
    eprintln!(
        "{} of {SESSIONS} sessions on the cut-off node: fenced {fenced:.2?} after the cut, all \
         online on the others {took_over:.2?} after it; {returned} handed back after the heal",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_lets_its_sessions_go_without_a_fight() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let whatsapp = fake_whatsapp().await;
    let recorder = whatsapp.recorder();
    let origins = Origins::default();
    let url = server.url();
    let urls = [url.clone(), url.clone(), url];
    let (mut daemons, _dirs) = start_nodes(&whatsapp, &origins, urls).await;
    let (victim, lost) = spread(&server, &whatsapp, &mut daemons).await;
    let phones: BTreeSet<String> = lost.values().cloned().collect();
    let old = recorder.inspect(|s| live_connections(s, &origins, &phones, victim));
    let boundary = recorder.inspect(|s| s.connections().len()) as ConnId;

    // Frozen: its sockets stay open at the server; its peers declare it dead and log in.
    signal(&daemons[victim], "-STOP").await;
    let stopped = Instant::now();
    cluster_support::until_online_after(recorder, boundary, &phones, "the frozen node's").await;
    let took_over = stopped.elapsed();
    recorder.inspect(|s| {
        for (phone, conn) in &old {
            let new = since(s, boundary, phone);
            assert_eq!(new.len(), 1, "{phone}: {new:?}");
            assert_ne!(origins.of(s, new[0]), victim, "{phone}");
            assert!(
                s.any(|r| r.conn == *conn && r.event == ServerEvent::Replaced { by: new[0] }),
                "{phone}: the frozen node's connection {conn} was replaced by {}",
                new[0]
            );
            // The frozen socket and the new owner's, for a moment: never a third.
            assert_eq!(s.max_concurrent(phone), 2, "{phone}");
        }
        let others: Vec<&str> = online_accounts(s)
            .into_iter()
            .filter(|a| !phones.contains(*a))
            .collect();
        for account in others {
            assert_eq!(s.max_concurrent(account), 1, "{account} was not moved");
        }
    });

    // It runs again: it finds its lease over, fences itself, lets go and joins again.
    let resumed_at = recorder.inspect(|s| s.connections().len()) as ConnId;
    signal(&daemons[victim], "-CONT").await;
    let resumed = Instant::now();
    daemons[victim].log_line(FENCED).await;
    let fenced = resumed.elapsed();
    daemons[victim].log_line(REJOINED).await;
    placed_on(&server, &whatsapp, &origins, &daemons[victim], victim).await;
    let returned = no_fight(&whatsapp, &origins, &phones, victim, boundary, resumed_at).await;
    recorder.inspect(|s| {
        for (phone, conn) in &old {
            assert!(
                s.connection(*conn).unwrap().closed.is_some(),
                "{phone}: the frozen node's old connection is gone"
            );
            assert_eq!(s.max_concurrent(phone), 2, "{phone}: never a third");
        }
        let replaced: BTreeSet<ConnId> = s
            .records()
            .iter()
            .filter(|r| matches!(r.event, ServerEvent::Replaced { .. }))
            .map(|r| r.conn)
            .collect();
        assert_eq!(
            replaced,
            old.values().copied().collect(),
            "only the frozen node's old connections were replaced"
        );
    });
    eprintln!(
        "{} of {SESSIONS} sessions on the frozen node: online on the others {took_over:.2?} \
         after SIGSTOP; fenced {fenced:.2?} after SIGCONT; {returned} handed back after",
        lost.len()
    );
}
