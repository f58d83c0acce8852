//! The control socket in a cluster, against a stand-in for the other nodes (the daemon's real
//! `Peers` is tested end to end in `crates/warden/tests/cluster_control.rs`): operations on a
//! session this node does not run go to the peers, a session nobody has is this node's
//! `not found`, `list` and `health` still answer this node's part, saying so, when the
//! peers cannot be asked, and the feeds of other nodes' sessions (behind `watch` and
//! `GET /events`) report changes and removals only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use warden_control::peers::{Answer, LIST, Look};
use warden_control::protocol::{ErrorBody, ErrorCode, HealthView, ListView, SessionView};
use warden_control::{
    ControlClient, ControlServer, ElsewhereFeed, EventLine, Gathered, Op, Peers, Reply,
    ServerConfig,
};
use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{Supervisor, SupervisorConfig};

/// The other nodes: node `b` runs `theirs` (as the view given), and answers `list` with it
/// and `also_listed`, unless `b_silent` (then its reply is an error); the database places the
/// sessions as `placements` says. Or, `down`, the database cannot be reached; or, `stuck`, a
/// gathering never ends. `gathered` counts the gatherings.
#[derive(Default)]
struct OtherNodes {
    theirs: Mutex<Option<SessionView>>,
    also_listed: Mutex<Vec<SessionView>>,
    b_silent: AtomicBool,
    placements: Mutex<Vec<(String, Option<String>)>>,
    down: bool,
    stuck: bool,
    carried: Mutex<Vec<String>>,
    gathered: AtomicUsize,
    /// What the next look answers instead of gathering (a look shared from before).
    stale_look: Mutex<Option<Arc<Look>>>,
}

impl Peers for OtherNodes {
    fn me(&self) -> &str {
        "a"
    }

    fn on_session<'a>(&'a self, token: &'a str, op: &'a Op) -> Answer<'a, Option<Reply>> {
        Box::pin(async move {
            let theirs = self.theirs.lock().unwrap().clone()?;
            if theirs.token != token {
                return None;
            }
            self.carried.lock().unwrap().push(op.name().to_owned());
            Some(Reply::ok(Value::Null, theirs))
        })
    }

    fn look(&self) -> Answer<'_, Result<Arc<Look>, ErrorBody>> {
        Box::pin(async move {
            if let Some(stale) = self.stale_look.lock().unwrap().take() {
                return Ok(stale);
            }
            let started = tokio::time::Instant::now();
            let gathered = self.on_every_node(&LIST).await?;
            Ok(Arc::new(Look::of(&gathered, started)))
        })
    }

    fn on_every_node<'a>(&'a self, _op: &'a Op) -> Answer<'a, Result<Gathered, ErrorBody>> {
        Box::pin(async move {
            if self.stuck {
                std::future::pending::<()>().await;
            }
            if self.down {
                return Err(ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the cluster's database is unreachable",
                ));
            }
            self.gathered.fetch_add(1, Ordering::SeqCst);
            let mut theirs: Vec<SessionView> =
                self.theirs.lock().unwrap().clone().into_iter().collect();
            theirs.extend(self.also_listed.lock().unwrap().iter().cloned());
            let list = json!({"sessions": theirs, "counts": {}});
            let reply = if self.b_silent.load(Ordering::SeqCst) {
                Reply::err(
                    Value::Null,
                    ErrorBody::new(ErrorCode::Unavailable, "node b did not answer"),
                )
            } else {
                Reply::ok(Value::Null, list)
            };
            Ok(Gathered {
                replies: vec![("b".into(), reply)],
                placements: self.placements.lock().unwrap().clone(),
            })
        })
    }
}

/// A supervisor on a scripted link that never connects, in a folder of its own.
async fn supervisor() -> (Supervisor, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = SupervisorConfig::new(dir.path().join("sessions"));
    let link = ScriptedLink::new(Script::new());
    let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await.unwrap();
    (supervisor, dir)
}

/// Creates session `token` through `client`.
async fn create(client: &mut ControlClient, token: &str) -> SessionView {
    client
        .call(&Op::Create {
            name: None,
            token: Some(token.into()),
            proxy: None,
        })
        .await
        .unwrap()
}

/// A node over a scripted link, its socket served with `peers`; returns a client of it.
async fn node(peers: Arc<OtherNodes>) -> (ControlClient, oneshot::Sender<()>, tempfile::TempDir) {
    let (supervisor, dir) = supervisor().await;
    let socket = dir.path().join("warden.sock");
    let server = ControlServer::bind(ServerConfig::new(&socket))
        .await
        .unwrap()
        .with_peers(peers);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(supervisor, async {
        let _ = stopped.await;
    }));
    let client = ControlClient::connect(&socket).await.unwrap();
    (client, stop, dir)
}

#[tokio::test]
async fn an_operation_on_a_session_run_elsewhere_goes_to_the_peers_and_lists_merge() {
    let peers = Arc::new(OtherNodes::default());
    let (mut client, _stop, _dir) = node(peers.clone()).await;
    let mine: SessionView = create(&mut client, "mine").await;
    let mut theirs = mine.clone();
    theirs.token = "theirs".into();
    *peers.theirs.lock().unwrap() = Some(theirs);

    let status: SessionView = client
        .call(&Op::Status {
            token: "theirs".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.token, "theirs");
    let stopped: SessionView = client
        .call(&Op::Stop {
            token: "theirs".into(),
        })
        .await
        .unwrap();
    assert_eq!(stopped.token, "theirs");
    assert_eq!(*peers.carried.lock().unwrap(), ["status", "stop"]);
    // Its own sessions are answered here.
    let _: SessionView = client
        .call(&Op::Status {
            token: "mine".into(),
        })
        .await
        .unwrap();
    assert_eq!(peers.carried.lock().unwrap().len(), 2, "not carried");
    // A session nobody has: this node's answer.
    let missing = client
        .request(&Op::Status {
            token: "nobody".into(),
        })
        .await
        .unwrap();
    assert_eq!(missing.error.unwrap().code, ErrorCode::NotFound);

    let list: ListView = client.call(&Op::List {}).await.unwrap();
    let nodes: Vec<(&str, Option<&str>)> = list
        .sessions
        .iter()
        .map(|s| (s.token.as_str(), s.node.as_deref()))
        .collect();
    assert_eq!(nodes, [("mine", Some("a")), ("theirs", Some("b"))]);
    assert_eq!(list.incomplete, None);
    let health: HealthView = client.call(&Op::Health {}).await.unwrap();
    // The stand-in answers every gather with its list: not a health report, so b counts 0.
    assert_eq!(health.sessions, 1);
    assert_eq!(health.nodes["a"].sessions, 1);
    assert_eq!(
        health.nodes["b"].status,
        "an answer that is not a health report"
    );
}

#[tokio::test]
async fn with_the_database_unreachable_list_and_health_answer_this_node_s_part() {
    let peers = Arc::new(OtherNodes {
        down: true,
        ..OtherNodes::default()
    });
    let (mut client, _stop, _dir) = node(peers).await;
    let _: SessionView = create(&mut client, "mine").await;
    let list: ListView = tokio::time::timeout(Duration::from_secs(10), client.call(&Op::List {}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].node.as_deref(), Some("a"));
    let why = list.incomplete.expect("says it is only this node's");
    assert!(
        why.contains("unreachable") && why.contains("only this node"),
        "{why}"
    );
    let health: HealthView = client.call(&Op::Health {}).await.unwrap();
    assert_eq!(health.sessions, 1);
    assert!(health.incomplete.is_some());
}

/// What other nodes' sessions do, as the feeds behind `watch` and `GET /events` report it:
/// a view when it is new or changed (never again when it is not); nothing while its node does
/// not answer or while it moves between nodes; `removed` once the cluster no longer has it,
/// and a session's own feed then ends. A session this node runs is left to this node's own
/// events, however stale another node's list. A dropped feed looks no more.
#[tokio::test(start_paused = true)]
async fn the_feeds_of_other_nodes_report_changes_and_removals_only() {
    let (supervisor, _dir) = supervisor().await;
    let mine = supervisor.create(None, Some("mine")).await.unwrap();
    let mut theirs = SessionView::from(&mine);
    theirs.token = "theirs".into();
    theirs.state = "connected".into();
    let peers = Arc::new(OtherNodes {
        theirs: Mutex::new(Some(theirs.clone())),
        // b still lists a session that runs here now (a list from before it was handed over).
        also_listed: Mutex::new(vec![SessionView::from(&mine)]),
        placements: Mutex::new(vec![
            ("theirs".into(), Some("b".into())),
            ("mine".into(), Some("a".into())),
        ]),
        ..OtherNodes::default()
    });
    let within = Duration::from_secs(5);
    let lines_of = |lines: Vec<EventLine>| -> Vec<(String, String)> {
        lines
            .into_iter()
            .map(|line| match line {
                EventLine::Session { session } => (session.token, session.state),
                EventLine::Removed { token } => (token, "removed".into()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    let mut every = ElsewhereFeed::every_session(supervisor.clone(), peers.clone());
    let mut one = ElsewhereFeed::one_session(
        supervisor.clone(),
        peers.clone(),
        "theirs".into(),
        Some(SessionView {
            node: Some("b".into()),
            ..theirs.clone()
        }),
    );
    // The first look reports what the other nodes run (not what runs here); the session's own
    // feed had it already.
    let first = tokio::time::timeout(within, every.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lines_of(first), [("theirs".into(), "connected".into())]);
    // Unchanged: nothing, however many looks.
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
    assert!(tokio::time::timeout(within, one.next()).await.is_err());
    // Changed: both report it once.
    peers.theirs.lock().unwrap().as_mut().unwrap().state = "stopped".into();
    for feed in [&mut every, &mut one] {
        let changed = tokio::time::timeout(within, feed.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lines_of(changed), [("theirs".into(), "stopped".into())]);
        assert!(tokio::time::timeout(within, feed.next()).await.is_err());
    }
    // Its node does not answer: kept as last seen, not removed.
    peers.b_silent.store(true, Ordering::SeqCst);
    for feed in [&mut every, &mut one] {
        assert!(tokio::time::timeout(within, feed.next()).await.is_err());
    }
    peers.b_silent.store(false, Ordering::SeqCst);
    // Moving between nodes (no node lists it, the database still has it): not removed.
    *peers.theirs.lock().unwrap() = None;
    peers.placements.lock().unwrap()[0].1 = None;
    for feed in [&mut every, &mut one] {
        assert!(tokio::time::timeout(within, feed.next()).await.is_err());
    }
    // Deleted meanwhile: `removed`; the session's own feed then ends.
    peers.placements.lock().unwrap().remove(0);
    for feed in [&mut every, &mut one] {
        let gone = tokio::time::timeout(within, feed.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lines_of(gone), [("theirs".into(), "removed".into())]);
    }
    assert!(
        tokio::time::timeout(within, one.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
    // Dropped: no more looks.
    drop(every);
    tokio::task::yield_now().await;
    let looks = peers.gathered.load(Ordering::SeqCst);
    tokio::time::sleep(within).await;
    assert_eq!(peers.gathered.load(Ordering::SeqCst), looks);
}

/// Watching everything while the other nodes never answer: this node's own events still come
/// as they happen, the gathering apart.
#[tokio::test]
async fn a_watch_of_everything_never_waits_for_the_other_nodes() {
    let peers = Arc::new(OtherNodes {
        stuck: true,
        ..OtherNodes::default()
    });
    let (mut client, _stop, dir) = node(peers).await;
    let reply = client.request(&Op::Watch { token: None }).await.unwrap();
    assert!(reply.ok, "{reply:?}");
    let mut other = ControlClient::connect(&dir.path().join("warden.sock"))
        .await
        .unwrap();
    let _: SessionView = create(&mut other, "mine").await;
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next_event().await.unwrap() {
                Some(EventLine::Session { session }) if session.token == "mine" => return session,
                Some(_) => continue,
                None => panic!("the watch ended"),
            }
        }
    })
    .await
    .expect("this node's event came while the other nodes were being asked");
    assert_eq!(seen.token, "mine");
}

/// `watch` of a session another node runs, which then comes to this node (here: created in
/// its supervisor, as an adoption does): this node's own events about it are sent.
#[tokio::test]
async fn a_watched_session_that_comes_here_is_followed_by_this_node_s_events() {
    let peers = Arc::new(OtherNodes::default());
    let (mut client, _stop, dir) = node(peers.clone()).await;
    let mut other = ControlClient::connect(&dir.path().join("warden.sock"))
        .await
        .unwrap();
    // Node b runs it (a view made from a session of this node's, deleted again).
    let mut theirs = create(&mut other, "moving").await;
    let _: Value = other
        .call(&Op::Delete {
            token: "moving".into(),
        })
        .await
        .unwrap();
    theirs.state = "connected".into();
    *peers.theirs.lock().unwrap() = Some(theirs);
    peers
        .placements
        .lock()
        .unwrap()
        .push(("moving".into(), Some("b".into())));

    let reply = client
        .request(&Op::Watch {
            token: Some("moving".into()),
        })
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    let first = client.next_event().await.unwrap();
    let Some(EventLine::Session { session }) = first else {
        panic!("its view at b first: {first:?}");
    };
    assert_eq!(
        (session.state.as_str(), session.node.as_deref()),
        ("connected", Some("b"))
    );
    // It comes here; b no longer lists it.
    *peers.theirs.lock().unwrap() = None;
    let here = create(&mut other, "moving").await;
    assert_eq!(here.state, "stopped");
    // Started here: only this node's events can tell (the feed has left it to them).
    let _: Value = other
        .call(&Op::Start {
            token: "moving".into(),
            phone: None,
        })
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next_event().await.unwrap() {
                Some(EventLine::Session { session })
                    if session.state != "stopped" && session.state != "connected" =>
                {
                    return session;
                }
                Some(_) => continue,
                None => panic!("the watch ended"),
            }
        }
    })
    .await
    .expect("this node's view of it came");
    assert_eq!(seen.token, "moving");
}

/// Watching everything: a session this node held, taken over while it is still being closed
/// here, handed away (this node's events say nothing then) and deleted before any other node
/// listed it, is reported gone.
#[tokio::test(start_paused = true)]
async fn a_session_handed_away_and_deleted_unseen_is_reported_gone() {
    let (supervisor, _dir) = supervisor().await;
    supervisor.create(None, Some("left")).await.unwrap();
    let peers = Arc::new(OtherNodes {
        placements: Mutex::new(vec![("left".into(), Some("a".into()))]),
        ..OtherNodes::default()
    });
    let within = Duration::from_secs(5);
    let mut every = ElsewhereFeed::every_session(supervisor.clone(), peers.clone());
    // Held here: nothing to say (this node's own events tell).
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
    // Taken over by b while still here, then closed here, then between nodes: nothing.
    peers.placements.lock().unwrap()[0].1 = Some("b".into());
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
    supervisor.relinquish("left").await.unwrap();
    peers.placements.lock().unwrap()[0].1 = None;
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
    // Deleted: gone.
    peers.placements.lock().unwrap().clear();
    let gone = tokio::time::timeout(within, every.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(gone.as_slice(), [EventLine::Removed { token }] if token == "left"),
        "{gone:?}"
    );
    assert!(tokio::time::timeout(within, every.next()).await.is_err());
}

/// Following one session just found (asked of the cluster afresh), when the node's shared look
/// predates it: that look, which has no such session, is passed over; the session is never
/// taken for one deleted.
#[tokio::test(start_paused = true)]
async fn a_look_older_than_the_watch_never_says_its_session_was_deleted() {
    let (supervisor, _dir) = supervisor().await;
    let made = supervisor.create(None, Some("mine")).await.unwrap();
    let stale = Look {
        started: tokio::time::Instant::now(),
        lists: vec![("b".into(), None)],
        placements: Default::default(),
    };
    tokio::time::advance(Duration::from_millis(10)).await;
    // Node b runs it now.
    let mut view = SessionView::from(&made);
    view.token = "new".into();
    view.node = Some("b".into());
    let peers = Arc::new(OtherNodes {
        theirs: Mutex::new(Some(SessionView {
            node: None,
            ..view.clone()
        })),
        placements: Mutex::new(vec![("new".into(), Some("b".into()))]),
        stale_look: Mutex::new(Some(Arc::new(stale))),
        ..OtherNodes::default()
    });
    let mut one = ElsewhereFeed::one_session(supervisor, peers.clone(), "new".into(), Some(view));
    let within = Duration::from_secs(5);
    assert!(
        tokio::time::timeout(within, one.next()).await.is_err(),
        "nothing to say: it is unchanged"
    );
    assert!(
        peers.stale_look.lock().unwrap().is_none(),
        "the old look was offered"
    );
}
