//! Reconnect storms and single ownership (#13 item 5) at a size CI affords: 200 connected
//! sessions, then the fake server drops them all at once, three times, while operators
//! restart and force-clean random sessions. Admission control paces the reconnects: the
//! connections the fake server accepts in any second stay within `per_second + burst` (with a
//! slack for the delay between an admission and its accept, see below); every
//! session comes back; no account ever has two live connections.
//!
//! Full size (a benchmark, not CI): `WARDEN_STORM_SESSIONS=1000 cargo test --release -p
//! warden-whatsapp --test storms -- --nocapture` prints, per storm, the time until every
//! session is back; docs/reliability.md has the last figures.
//!
//! Alone in its test binary, so nothing else competes for the runtime.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use support::*;
use warden_core::scripted::EventWaiter;
use warden_core::{AdmissionConfig, SessionState, Supervisor};
use warden_fakewa::{Plan, Scenario, Script};

/// Sessions in the CI run; `WARDEN_STORM_SESSIONS` sets another number.
const SESSIONS: usize = 200;
const PER_SECOND: f64 = 40.0;
const BURST: u32 = 10;
const STORMS: usize = 3;
/// Operators' restarts and force-cleanups per storm.
const MEDDLED: usize = 10;

/// The most connections accepted in any window of one second.
fn busiest_second(opened: &mut [Duration]) -> usize {
    opened.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..opened.len() {
        while opened[end] - opened[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[test]
fn busiest_second_counts_a_sliding_window() {
    let ms = |v: &[u64]| -> Vec<Duration> { v.iter().map(|m| Duration::from_millis(*m)).collect() };
    assert_eq!(busiest_second(&mut ms(&[])), 0);
    assert_eq!(busiest_second(&mut ms(&[0, 999, 1000, 1001])), 3);
    assert_eq!(busiest_second(&mut ms(&[0, 500, 900, 999, 1000])), 4);
    assert_eq!(busiest_second(&mut ms(&[3000, 0, 10])), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_are_paced_by_admission_and_no_account_ever_has_two_connections() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let script = Script::default()
        .with_registration(pairing_any())
        .with_login(Plan::always(Scenario::login()));
    let server = server_with(script).await;
    let dir = tempfile::tempdir().unwrap();
    let mut wa = wa_config(&server.url());
    wa.connect_timeout = Duration::from_secs(30);
    wa.liveness_timeout = Duration::from_secs(60);
    let db = warden_store::Db::open_in(dir.path()).unwrap();
    let mut config = supervisor_config(dir.path(), &db);
    config.admission = AdmissionConfig {
        max_in_flight: 16,
        per_second: PER_SECOND,
        burst: BURST,
    };
    config.policy.max_attempts = 100;
    let (supervisor, _) = Supervisor::start(config, link(wa, &db)).await.unwrap();
    let mut events = EventWaiter::new(&supervisor, Duration::from_secs(120));

    let sessions: usize = std::env::var("WARDEN_STORM_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SESSIONS)
        .max(3 * 2 * MEDDLED);
    let tokens: Vec<String> = (0..sessions).map(|n| format!("storm{n:04}")).collect();
    for token in &tokens {
        supervisor.create(None, Some(token)).await.unwrap();
    }
    for started in join_all(
        tokens
            .iter()
            .map(|t| supervisor.start_session(t, Default::default())),
    )
    .await
    {
        started.unwrap();
    }
    let mut connects: HashMap<String, u64> = HashMap::new();
    for token in &tokens {
        let info = events
            .wait_status(&supervisor, token, |i| i.state == SessionState::Connected)
            .await;
        connects.insert(token.clone(), info.counters.connects);
    }

    let recorder = server.recorder().clone();
    for storm in 0..STORMS {
        let boundary = recorder.inspect(|s| s.connections().len());
        let dropped_at = std::time::Instant::now();
        server.drop_all();
        // Meanwhile operators restart some sessions and force-clean and start others.
        let offset = storm * 2 * MEDDLED;
        let restarted = &tokens[offset..offset + MEDDLED];
        let cleaned = &tokens[offset + MEDDLED..offset + 2 * MEDDLED];
        let supervisor_ref = &supervisor;
        let restarts = join_all(restarted.iter().map(|t| supervisor_ref.restart(t, true)));
        let cleanups = join_all(cleaned.iter().map(|t| async move {
            supervisor_ref.force_cleanup(t).await?;
            supervisor_ref.start_session(t, Default::default()).await
        }));
        let (restarts, cleanups) = tokio::join!(restarts, cleanups);
        for done in restarts.into_iter().chain(cleanups) {
            done.unwrap();
        }
        // Every session comes back: connected once more than before the storm.
        for token in &tokens {
            let before = connects[token];
            let info = events
                .wait_status(&supervisor, token, |i| {
                    i.state == SessionState::Connected && i.counters.connects > before
                })
                .await;
            connects.insert(token.clone(), info.counters.connects);
        }
        let all_back = dropped_at.elapsed();
        let mut opened: Vec<Duration> = recorder.inspect(|s| {
            s.connections()[boundary..]
                .iter()
                .map(|c| c.opened)
                .collect()
        });
        let reconnects = opened.len();
        let busiest = busiest_second(&mut opened);
        eprintln!(
            "storm {}: {sessions} sessions all back {all_back:.2?} after the drop (N / per_second \
             = {:.2} s); {reconnects} connections accepted, at most {busiest} in one second",
            storm + 1,
            sessions as f64 / PER_SECOND
        );
        assert!(reconnects >= sessions, "storm {storm}: {reconnects}");
        // Admission's token bucket admits at most `burst + per_second` in any second (that
        // rule is tested exactly, on the paused clock, in `admission.rs`). Here it is seen
        // from the fake server, whose accepts trail the admissions by a few milliseconds, more
        // when the machine is busy: a spread of up to half a second in those delays moves up
        // to `per_second / 2` admissions into a window, hence that slack. The pace over the
        // whole storm is checked without it: N accepts take at least (N - burst) / per_second,
        // less the spread of the first and last accepts alone.
        let limit = PER_SECOND as usize + BURST as usize + (PER_SECOND / 2.0) as usize;
        let span = opened.last().copied().unwrap_or_default()
            - opened.first().copied().unwrap_or_default();
        let least =
            Duration::from_secs_f64((reconnects - BURST as usize) as f64 / PER_SECOND - 0.5);
        assert!(
            span >= least,
            "storm {storm}: {reconnects} accepts within {span:?}, faster than admission allows"
        );
        assert!(
            busiest <= limit,
            "storm {storm}: {busiest} connections in one second, over {limit}"
        );
    }
    let most = recorder.inspect(|s| s.max_concurrent_any());
    assert_eq!(most, 1, "an account had {most} live connections at once");
    supervisor.shutdown().await.unwrap();
}
