//! Drives a real wa-rs 0.2 client through every scenario of the fake server and
//! checks the client's events (in dispatch order) and what the server recorded.
//!
//! Each test has its own server and client; timers are in milliseconds and every
//! wait is on an event, except the few "nothing happens" windows, which are the
//! assertion itself.

mod support;

use std::time::{Duration, Instant};

use support::{Ev, LIMIT, TestClient, wait_saved};
use wa_rs::request::IqError;
use wa_rs_core::iq::keepalive::KeepaliveSpec;
use wa_rs_core::types::events::{ConnectFailureReason as Reason, TempBanReason};
use warden_fakewa::{
    CloseKind, FailureSpec, FakeServer, ListenerMode, ListenerPhase, MessageSpec, PairSpec, Plan,
    QrSpec, Scenario, Script, ServerConfig, ServerEvent, Step, StreamErrorSpec,
};

const PHONE: &str = "15551234567";
/// A window in which something must *not* happen.
const QUIET: Duration = Duration::from_millis(300);

/// Registration: one QR ref, "scanned" 30 ms later, paired as `phone`.
fn pairing(phone: &str) -> Plan {
    Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(Duration::from_millis(30)),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::phone(phone)
        }),
    ]))
}

fn config(script: Script) -> ServerConfig {
    ServerConfig {
        online_timeout: Duration::from_secs(5),
        ..ServerConfig::with_script(script)
    }
}

/// A server that pairs registrations as [`PHONE`] and plays `login` for its logins.
async fn server(login: Plan) -> FakeServer {
    FakeServer::start(config(
        Script::default()
            .with_registration(pairing(PHONE))
            .with_account(PHONE, login),
    ))
    .await
    .expect("server")
}

fn jid(phone: &str) -> String {
    format!("{phone}:1@s.whatsapp.net")
}

/// A fresh client, paired with `server` as `phone`: ready to log in.
async fn paired_client(server: &FakeServer, phone: &str) -> TestClient {
    let mut c = TestClient::new(&server.url()).await;
    assert_eq!(
        c.run_to_end().await,
        vec![Ev::Qr { timeout_secs: 60 }, Ev::PairSuccess(jid(phone))]
    );
    c
}

/// Pairs, then plays one login attempt to its end; returns the login's events.
async fn login_run(login: Plan) -> (Vec<Ev>, FakeServer, TestClient) {
    let server = server(login).await;
    let mut c = paired_client(&server, PHONE).await;
    let events = c.run_to_end().await;
    (events, server, c)
}

/// The events of a login that is accepted.
fn connected() -> Vec<Ev> {
    vec![Ev::OfflineSyncCompleted(0), Ev::Connected]
}

fn with(mut a: Vec<Ev>, b: impl IntoIterator<Item = Ev>) -> Vec<Ev> {
    a.extend(b);
    a
}

/// How the last connection of `server` ended.
async fn last_close(server: &FakeServer) -> CloseKind {
    let rec = server.recorder();
    let last = rec.inspect(|s| s.connections().len()) as u64;
    rec.wait_until(LIMIT, |s| {
        s.connection(last).is_some_and(|c| c.closed.is_some())
    })
    .await
    .expect("closed");
    rec.inspect(|s| s.connection(last).and_then(|c| c.closed).map(|(_, k)| k))
        .expect("close kind")
}

#[tokio::test]
async fn qr_refs_rotate_then_expire() {
    let qr = QrSpec::new(3, Duration::from_millis(150), Duration::from_millis(100));
    let script = Script::default().with_registration(Plan::always(Scenario::new([Step::Qr(qr)])));
    let server = FakeServer::start(config(script)).await.unwrap();
    let mut c = TestClient::new(&server.url()).await;

    let started = Instant::now();
    let events = c.run_to_end().await;
    // wa-rs shows each server-paced ref as a 60 s code; the empty pair-device at the
    // end makes it run its own expiry path: run() returns with no further event.
    assert_eq!(events, vec![Ev::Qr { timeout_secs: 60 }; 3]);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "expired too early: {:?}",
        started.elapsed()
    );

    let s = server.recorder().snapshot();
    let qr_events: Vec<_> = s
        .events_of(1)
        .into_iter()
        .filter(|e| matches!(e, ServerEvent::QrRef { .. } | ServerEvent::QrExpired))
        .cloned()
        .collect();
    assert_eq!(
        qr_events,
        vec![
            ServerEvent::QrRef { n: 1 },
            ServerEvent::QrRef { n: 2 },
            ServerEvent::QrRef { n: 3 },
            ServerEvent::QrExpired
        ]
    );
    assert_eq!(last_close(&server).await, CloseKind::Client);
    assert!(server.registry().devices().is_empty());
}

#[tokio::test]
async fn pairing_restart_then_login_connects() {
    let server = server(Plan::always(Scenario::login())).await;
    let mut c = paired_client(&server, PHONE).await;

    let rec = server.recorder();
    let s = rec.snapshot();
    let first = s.connection(1).unwrap();
    assert_eq!(
        first.account.as_deref(),
        Some(PHONE),
        "a registration that paired counts for its account"
    );
    assert!(
        s.events_of(1)
            .contains(&&ServerEvent::Paired { jid: jid(PHONE) })
    );
    assert!(
        s.events_of(1)
            .contains(&&ServerEvent::StreamErrorSent("515".into()))
    );
    let devices = server.registry().devices();
    assert_eq!((devices.len(), devices[0].jid()), (1, jid(PHONE)));

    // The supervisor restarts after PairSuccess: the second run logs in.
    c.start();
    assert_eq!(c.until(|e| *e == Ev::Connected).await, connected());
    rec.wait_for(LIMIT, |r| r.conn == 2 && r.event == ServerEvent::Online)
        .await
        .unwrap();
    c.stop().await;
    assert_eq!(c.drain(), vec![], "disconnect() emits no event");

    let s = rec.snapshot();
    let second = s.connection(2).unwrap();
    assert_eq!(second.client.as_ref().and_then(|c| c.phone()), Some(PHONE));
    assert_eq!(
        (second.attempt, second.steps.clone()),
        (1, vec!["login".to_string()])
    );
    assert_eq!(s.connections_for(PHONE).len(), 2);
    assert_eq!(s.max_concurrent(PHONE), 1);
    assert_eq!(last_close(&server).await, CloseKind::Client);
}

#[tokio::test]
async fn stored_credentials_log_in_from_a_new_client() {
    let script = Script::default().with_registration(pairing(PHONE));
    let server = FakeServer::start(ServerConfig {
        accept_unknown_devices: false,
        ..config(script)
    })
    .await
    .unwrap();
    let mut first = paired_client(&server, PHONE).await;
    first.stop().await;
    wait_saved(first.db()).await;

    // A new process would open the same database: its stored credentials log in.
    let mut second = TestClient::open(&server.url(), first.db(), Duration::from_secs(5)).await;
    second.start();
    assert_eq!(second.until(|e| *e == Ev::Connected).await, connected());
    second.stop().await;
    let s = server.recorder().snapshot();
    assert!(!s.any(|r| r.event == ServerEvent::UnknownDevice));
    assert_eq!(
        s.connection(2).unwrap().client.as_ref().unwrap().noise_key,
        s.connection(1).unwrap().client.as_ref().unwrap().noise_key
    );
}

#[tokio::test]
async fn strict_server_logs_out_devices_it_never_paired() {
    let other = FakeServer::start(config(Script::default().with_registration(pairing(PHONE))))
        .await
        .unwrap();
    let mut c = paired_client(&other, PHONE).await;
    c.stop().await;
    wait_saved(c.db()).await;

    let strict = FakeServer::start(ServerConfig {
        accept_unknown_devices: false,
        ..config(Script::default())
    })
    .await
    .unwrap();
    let mut c = TestClient::open(&strict.url(), c.db(), Duration::from_secs(5)).await;
    assert_eq!(
        c.run_to_end().await,
        vec![Ev::logged_out(true, Reason::LoggedOut)]
    );
    let s = strict.recorder().snapshot();
    assert!(s.any(|r| r.event == ServerEvent::UnknownDevice));
    assert!(s.any(|r| r.event == ServerEvent::FailureSent { reason: 401 }));
}

#[tokio::test]
async fn login_attempts_follow_the_plan() {
    let plan = Plan::attempts([Scenario::new([Step::failure(503)])], Scenario::login());
    let (events, server, mut c) = login_run(plan).await;
    assert_eq!(
        events,
        vec![
            Ev::connect_failure(Reason::ServiceUnavailable),
            Ev::Disconnected
        ]
    );
    c.start();
    assert_eq!(c.until(|e| *e == Ev::Connected).await, connected());
    c.stop().await;
    let s = server.recorder().snapshot();
    let attempts: Vec<_> = s.connections_for(PHONE).iter().map(|c| c.attempt).collect();
    assert_eq!(
        attempts,
        vec![1, 1, 2],
        "registration attempt 1, then logins 1 and 2"
    );
    assert_eq!(s.max_concurrent(PHONE), 1);
}

#[tokio::test]
async fn drop_after_delay_is_a_disconnect() {
    let plan = Plan::always(Scenario::new([
        Step::Login,
        Step::wait(Duration::from_millis(100)),
        Step::Drop,
    ]));
    let server = server(plan).await;
    let mut c = paired_client(&server, PHONE).await;
    c.start();
    assert_eq!(c.until(|e| *e == Ev::Connected).await, connected());
    let connected_at = Instant::now();
    assert_eq!(c.finish().await, vec![Ev::Disconnected]);
    assert!(connected_at.elapsed() >= Duration::from_millis(80));
    assert_eq!(last_close(&server).await, CloseKind::Dropped);
}

#[tokio::test]
async fn clean_close_is_a_disconnect() {
    let (events, server, _c) =
        login_run(Plan::always(Scenario::new([Step::Login, Step::Close]))).await;
    assert_eq!(events, with(connected(), [Ev::Disconnected]));
    assert_eq!(last_close(&server).await, CloseKind::Server);
}

/// Plays `<failure reason=…>` on the login and checks the client's events.
async fn failure_case(spec: FailureSpec, expected: Vec<Ev>) {
    let reason = spec.reason;
    let (events, server, _c) = login_run(Plan::always(Scenario::new([Step::Failure(spec)]))).await;
    assert_eq!(events, expected, "failure {reason}");
    assert!(
        server
            .recorder()
            .snapshot()
            .any(|r| r.event == ServerEvent::FailureSent { reason })
    );
    assert_eq!(last_close(&server).await, CloseKind::Server);
}

#[tokio::test]
async fn failure_401_logs_out() {
    failure_case(
        FailureSpec::reason(401),
        vec![Ev::logged_out(true, Reason::LoggedOut)],
    )
    .await;
}

#[tokio::test]
async fn failure_403_main_device_gone() {
    failure_case(
        FailureSpec::reason(403),
        vec![Ev::logged_out(true, Reason::MainDeviceGone)],
    )
    .await;
}

#[tokio::test]
async fn failure_406_unknown_logout() {
    failure_case(
        FailureSpec::reason(406),
        vec![Ev::logged_out(true, Reason::UnknownLogout)],
    )
    .await;
}

#[tokio::test]
async fn failure_402_temporary_ban_with_expiry() {
    let spec = FailureSpec::temp_ban(101, Duration::from_secs(3600));
    failure_case(
        spec,
        vec![Ev::temporary_ban(TempBanReason::SentToTooManyPeople, 3600)],
    )
    .await;
}

#[tokio::test]
async fn failure_405_client_outdated() {
    failure_case(FailureSpec::reason(405), vec![Ev::ClientOutdated]).await;
}

#[tokio::test]
async fn failure_409_connect_failure() {
    failure_case(
        FailureSpec::reason(409),
        vec![Ev::connect_failure(Reason::BadUserAgent)],
    )
    .await;
}

#[tokio::test]
async fn failure_500_and_503_are_transient() {
    // wa-rs treats these as "should reconnect": it stays on the socket until the
    // server closes it, hence the Disconnected.
    failure_case(
        FailureSpec::reason(500),
        vec![
            Ev::connect_failure(Reason::InternalServerError),
            Ev::Disconnected,
        ],
    )
    .await;
    failure_case(
        FailureSpec::reason(503),
        vec![
            Ev::connect_failure(Reason::ServiceUnavailable),
            Ev::Disconnected,
        ],
    )
    .await;
}

/// Logs in, then plays `after` once the client is online.
async fn after_login(after: impl IntoIterator<Item = Step>) -> (Vec<Ev>, FakeServer) {
    let steps = std::iter::once(Step::Login).chain(after);
    let (events, server, _c) = login_run(Plan::always(Scenario::new(steps))).await;
    (events, server)
}

#[tokio::test]
async fn stream_error_515_restarts_silently() {
    let (events, server) =
        after_login([Step::StreamError(StreamErrorSpec::restart_required())]).await;
    assert_eq!(events, connected());
    assert_eq!(last_close(&server).await, CloseKind::Client);
}

#[tokio::test]
async fn stream_error_516_logs_out() {
    let (events, _server) = after_login([Step::stream_error(516)]).await;
    assert_eq!(
        events,
        with(connected(), [Ev::logged_out(false, Reason::LoggedOut)])
    );
}

#[tokio::test]
async fn stream_conflict_replaced() {
    let (events, _server) = after_login([Step::StreamError(StreamErrorSpec::replaced())]).await;
    assert_eq!(events, with(connected(), [Ev::StreamReplaced]));
}

#[tokio::test]
async fn stream_conflict_device_removed_logs_out() {
    let (events, _server) =
        after_login([Step::StreamError(StreamErrorSpec::device_removed())]).await;
    assert_eq!(
        events,
        with(connected(), [Ev::logged_out(false, Reason::LoggedOut)])
    );
}

#[tokio::test]
async fn stream_error_unknown_code() {
    let (events, server) = after_login([Step::stream_error(999)]).await;
    assert_eq!(events, with(connected(), [Ev::StreamError("999".into())]));
    assert!(
        server
            .recorder()
            .snapshot()
            .any(|r| r.event == ServerEvent::StreamErrorSent("999".into()))
    );
}

#[tokio::test]
async fn stream_error_503_then_close_is_a_disconnect() {
    let (events, _server) = after_login([
        Step::stream_error(503),
        Step::wait(Duration::from_millis(50)),
        Step::Close,
    ])
    .await;
    assert_eq!(events, with(connected(), [Ev::Disconnected]));
}

#[tokio::test]
async fn stream_end_ends_the_run_without_event() {
    let (events, server) = after_login([Step::StreamEnd]).await;
    assert_eq!(events, connected());
    assert!(
        server
            .recorder()
            .snapshot()
            .any(|r| r.event == ServerEvent::StreamEndSent)
    );
}

#[tokio::test]
async fn a_delivered_message_is_acknowledged() {
    let from = "15550001111@s.whatsapp.net";
    let login = Scenario::new([Step::Login, Step::Message(MessageSpec::new(from, "m1"))]);
    let server = server(Plan::always(login)).await;
    let mut c = paired_client(&server, PHONE).await;
    c.start();
    c.until(|e| *e == Ev::Connected).await;
    let rec = server.recorder();
    rec.wait_for(LIMIT, |r| {
        r.event
            == ServerEvent::ClientAck {
                class: "message".into(),
                id: "m1".into(),
            }
    })
    .await
    .expect("the client acknowledged the message");
    assert!(rec.snapshot().any(|r| r.event
        == ServerEvent::MessageSent {
            id: "m1".into(),
            from: from.into()
        }));
    c.stop().await;
}

#[tokio::test]
async fn pings_are_answered_by_default() {
    let server = server(Plan::always(Scenario::login())).await;
    let mut c = paired_client(&server, PHONE).await;
    c.start();
    c.until(|e| *e == Ev::Connected).await;
    let ping = c
        .client
        .execute(KeepaliveSpec::with_timeout(Duration::from_secs(2)))
        .await;
    assert!(ping.is_ok(), "{ping:?}");
    c.stop().await;
    let conn = server.recorder().snapshot().connection(2).cloned().unwrap();
    assert_eq!((conn.pings, conn.pings_answered), (1, 1));
}

#[tokio::test]
async fn ignored_pings_make_a_dead_link() {
    let server = server(Plan::always(Scenario::new([
        Step::Login,
        Step::IgnorePings,
    ])))
    .await;
    let mut c = paired_client(&server, PHONE).await;
    c.start();
    c.until(|e| *e == Ev::Connected).await;
    server
        .recorder()
        .wait_for(
            LIMIT,
            |r| matches!(&r.event, ServerEvent::Step { step, .. } if step == "ignore_pings"),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let ping = c
            .client
            .execute(KeepaliveSpec::with_timeout(Duration::from_millis(150)))
            .await;
        assert!(matches!(ping, Err(IqError::Timeout)), "{ping:?}");
    }
    assert!(c.running(), "a dead link does not end the run");
    assert_eq!(c.drain(), vec![]);
    c.stop().await;
    let s = server.recorder().snapshot();
    assert_eq!(s.pings(PHONE), 2);
    assert_eq!(s.connection(2).unwrap().pings_answered, 0);
}

#[tokio::test]
async fn refused_connections_emit_nothing() {
    // A listener timeline from the config: refuse for 300 ms, then serve.
    let script = Script::default().with_registration(pairing(PHONE));
    let refuse = |ms| ListenerPhase {
        mode: ListenerMode::Refuse,
        duration: Some(Duration::from_millis(ms)),
    };
    let server = FakeServer::start(ServerConfig {
        listener: vec![refuse(300)],
        ..config(script)
    })
    .await
    .unwrap();
    let mut c = TestClient::new(&server.url()).await;
    let started = Instant::now();
    assert_eq!(c.run_to_end().await, vec![]);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "a refused dial fails fast"
    );
    assert_eq!(server.recorder().snapshot().connections().len(), 0);

    // After the refusal window the same port accepts again.
    server
        .wait_for_mode(ListenerMode::Normal, LIMIT)
        .await
        .unwrap();
    assert_eq!(
        c.run_to_end().await,
        vec![Ev::Qr { timeout_secs: 60 }, Ev::PairSuccess(jid(PHONE))]
    );

    // And refusing can be switched on at run time.
    server.refuse_for(Duration::from_secs(5)).await;
    assert_eq!(c.run_to_end().await, vec![]);
    assert_eq!(server.recorder().snapshot().connections().len(), 1);
}

#[tokio::test]
async fn whatsapp_qr_timings_send_all_refs_at_once() {
    // Default QR spec: 6 refs in one pair-device stanza, rotated by wa-rs itself.
    let plan = Plan::always(Scenario::pair_after(
        QrSpec::default(),
        Duration::from_millis(50),
        PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::phone(PHONE)
        },
    ));
    let server = FakeServer::start(config(Script::default().with_registration(plan)))
        .await
        .unwrap();
    let mut c = TestClient::new(&server.url()).await;
    assert_eq!(
        c.run_to_end().await,
        vec![Ev::Qr { timeout_secs: 60 }, Ev::PairSuccess(jid(PHONE))]
    );
    let s = server.recorder().snapshot();
    assert_eq!(
        s.count(|r| matches!(r.event, ServerEvent::QrRef { .. })),
        1,
        "paired while the first ref showed"
    );
    assert!(!s.any(|r| r.event == ServerEvent::QrExpired));
}

#[tokio::test]
async fn pair_code_requests_are_answered() {
    let qr = QrSpec::new(1, Duration::from_secs(30), Duration::from_secs(30));
    let script = Script::default().with_registration(Plan::always(Scenario::new([Step::Qr(qr)])));
    let server = FakeServer::start(config(script)).await.unwrap();
    let mut c = TestClient::new(&server.url()).await;
    c.start();
    c.client.wait_for_socket(LIMIT).await.unwrap();
    let options = wa_rs::pair_code::PairCodeOptions {
        phone_number: "+1 555 123 4567".into(),
        ..Default::default()
    };
    let code = c.client.pair_with_code(options).await.expect("pair code");
    let events = c.until(|e| matches!(e, Ev::PairingCode(_))).await;
    assert_eq!(
        events,
        vec![Ev::Qr { timeout_secs: 60 }, Ev::PairingCode(code)]
    );
    c.stop().await;
}

#[tokio::test]
async fn tcp_closed_before_upgrade_emits_nothing() {
    let server = server(Plan::always(Scenario::login())).await;
    server.set_mode(ListenerMode::CloseTcp).await;
    let mut c = TestClient::new(&server.url()).await;
    assert_eq!(c.run_to_end().await, vec![]);
    assert_eq!(last_close(&server).await, CloseKind::Dropped);
}

#[tokio::test]
async fn silent_tcp_hits_the_connect_timeout() {
    let server = server(Plan::always(Scenario::login())).await;
    server.set_mode(ListenerMode::SilentTcp).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestClient::open(
        &server.url(),
        &dir.path().join("s.db"),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(c.run_to_end().await, vec![]);
    assert!(
        server
            .recorder()
            .snapshot()
            .any(|r| r.event == ServerEvent::Silent { upgraded: false })
    );
    assert_eq!(
        last_close(&server).await,
        CloseKind::Client,
        "the client gave up and closed"
    );
}

#[tokio::test]
async fn silent_websocket_leaves_the_client_in_its_handshake() {
    let server = server(Plan::always(Scenario::login())).await;
    server.set_mode(ListenerMode::SilentWebSocket).await;
    let mut c = TestClient::new(&server.url()).await;
    c.start();
    server
        .recorder()
        .wait_for(LIMIT, |r| r.event == ServerEvent::Silent { upgraded: true })
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await;
    // wa-rs would wait 20 s for the Noise hello; nothing reaches the application.
    assert!(c.running());
    assert_eq!(c.drain(), vec![]);
    c.stop().await;
}

#[tokio::test]
async fn stall_after_handshake_gets_no_answer() {
    let script = Script::default().with_registration(Plan::always(Scenario::new([Step::Stall])));
    let server = FakeServer::start(config(script)).await.unwrap();
    let mut c = TestClient::new(&server.url()).await;
    c.start();
    server
        .recorder()
        .wait_for(
            LIMIT,
            |r| matches!(&r.event, ServerEvent::Step { step, .. } if step == "stall"),
        )
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(c.running());
    assert_eq!(c.drain(), vec![], "no QR, no event: the session hangs");
    c.stop().await;
    assert_eq!(last_close(&server).await, CloseKind::Client);
}

#[tokio::test]
async fn stall_after_login_times_out_iqs() {
    let server = server(Plan::always(Scenario::new([Step::Login, Step::Stall]))).await;
    let mut c = paired_client(&server, PHONE).await;
    c.start();
    c.until(|e| *e == Ev::Connected).await;
    server
        .recorder()
        .wait_for(
            LIMIT,
            |r| matches!(&r.event, ServerEvent::Step { step, .. } if step == "stall"),
        )
        .await
        .unwrap();
    let ping = c
        .client
        .execute(KeepaliveSpec::with_timeout(Duration::from_millis(150)))
        .await;
    assert!(matches!(ping, Err(IqError::Timeout)), "{ping:?}");
    assert_eq!(
        server.recorder().snapshot().pings(PHONE),
        0,
        "a stalled server does not even read"
    );
    c.stop().await;
}

#[tokio::test]
async fn two_clients_with_one_account_are_caught() {
    let server = server(Plan::always(Scenario::login())).await;
    let mut first = paired_client(&server, PHONE).await;
    first.stop().await;
    wait_saved(first.db()).await;
    // Two clients on the same credentials, as a supervisor bug would run them.
    let mut a = TestClient::open(&server.url(), first.db(), Duration::from_secs(5)).await;
    let mut b = TestClient::open(&server.url(), first.db(), Duration::from_secs(5)).await;
    a.start();
    b.start();
    assert_eq!(a.until(|e| *e == Ev::Connected).await, connected());
    assert_eq!(b.until(|e| *e == Ev::Connected).await, connected());
    let rec = server.recorder();
    rec.wait_until(LIMIT, |s| s.open_connections() == 2)
        .await
        .unwrap();
    assert_eq!(rec.snapshot().max_concurrent(PHONE), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_replace_older_login_a_second_login_replaces_the_first() {
    let script = Script::default()
        .with_registration(pairing(PHONE))
        .with_account(PHONE, Plan::always(Scenario::login()));
    let server = FakeServer::start(ServerConfig {
        replace_older_login: true,
        ..config(script)
    })
    .await
    .unwrap();
    let mut first = paired_client(&server, PHONE).await;
    first.stop().await;
    wait_saved(first.db()).await;
    let mut a = TestClient::open(&server.url(), first.db(), Duration::from_secs(5)).await;
    let mut b = TestClient::open(&server.url(), first.db(), Duration::from_secs(5)).await;
    a.start();
    assert_eq!(a.until(|e| *e == Ev::Connected).await, connected());
    let rec = server.recorder();
    let a_conn = rec.inspect(|s| s.connections().len()) as u64;
    b.start();
    assert_eq!(b.until(|e| *e == Ev::Connected).await, connected());
    let b_conn = a_conn + 1;
    // WhatsApp ends the older session: the client is told it was replaced.
    assert_eq!(
        a.until(|e| *e == Ev::StreamReplaced).await,
        [Ev::StreamReplaced]
    );
    rec.wait_until(LIMIT, |s| {
        s.connection(a_conn).is_some_and(|c| c.closed.is_some())
    })
    .await
    .unwrap();
    let s = rec.snapshot();
    assert!(s.any(|r| r.conn == a_conn && r.event == ServerEvent::Replaced { by: b_conn }));
    let (older, newer) = (s.connection(a_conn).unwrap(), s.connection(b_conn).unwrap());
    assert!(older.retired.is_some(), "{older:?}");
    assert_eq!((newer.closed, newer.retired), (None, None), "{newer:?}");
    assert!(
        !s.any(|r| r.conn == b_conn && matches!(r.event, ServerEvent::Replaced { .. })),
        "the newer login stays"
    );
    // Both were live for a moment (from the second handshake to the first's replacement).
    assert_eq!(s.max_concurrent(PHONE), 2);
    assert_eq!(s.open_connections(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn concurrent_registrations_get_their_own_accounts() {
    // No phone in the pair step: each pairing takes the next number from the pool.
    let plan = Plan::always(Scenario::new([
        Step::Qr(QrSpec::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )),
        Step::wait(Duration::from_millis(30)),
        Step::Pair(PairSpec {
            restart_after: Duration::from_millis(20),
            ..PairSpec::default()
        }),
    ]));
    let server = FakeServer::start(ServerConfig {
        first_phone: 4900000001,
        ..config(Script::default().with_registration(plan))
    })
    .await
    .unwrap();
    let url = server.url();
    let (mut a, mut b) = tokio::join!(TestClient::new(&url), TestClient::new(&url));
    let (ea, eb) = tokio::join!(a.run_to_end(), b.run_to_end());
    let mut jids: Vec<_> = [ea, eb].into_iter().map(|e| e.last().cloned()).collect();
    jids.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        jids,
        vec![
            Some(Ev::PairSuccess(jid("4900000001"))),
            Some(Ev::PairSuccess(jid("4900000002")))
        ]
    );
    let s = server.recorder().snapshot();
    assert_eq!(
        s.max_concurrent_any(),
        1,
        "two accounts, one connection each"
    );
    assert_eq!(server.registry().devices().len(), 2);
}

#[tokio::test]
async fn binary_pairs_and_logs_in_standalone() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.toml");
    std::fs::write(
        &file,
        r#"
        [registration]
        default = [
          { qr = { refs = 2, first = "30s", then = "10s" } },
          { wait = "30ms" },
          { pair = { phone = "15557654321", restart_after = "20ms" } },
        ]
        [login]
        default = ["login"]
        "#,
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden-fakewa"))
        .args(["--listen", "127.0.0.1:0", "--scenario"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn warden-fakewa");
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        LIMIT,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("first line names the URL")
        .to_string();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/ws/chat"),
        "{url}"
    );

    let mut c = TestClient::new(&url).await;
    assert_eq!(
        c.run_to_end().await,
        vec![
            Ev::Qr { timeout_secs: 60 },
            Ev::PairSuccess(jid("15557654321"))
        ]
    );
    c.start();
    assert_eq!(c.until(|e| *e == Ev::Connected).await, connected());

    // With its defaults, any number is a contact, and what it decrypts is logged with its text.
    let to: wa_rs_binary::jid::Jid = "15550009999@s.whatsapp.net".parse().unwrap();
    let message = wa_rs_proto::whatsapp::Message {
        conversation: Some("hello, standalone".into()),
        ..Default::default()
    };
    c.client.send_message(to, message).await.expect("sent");
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("decrypted message: hello, standalone") {
                return;
            }
        }
        panic!("stderr ended");
    })
    .await
    .expect("the decrypted text is logged");
    c.stop().await;
    child.kill().await.unwrap();
}
