//! The machine's table: every phase × every event, with the phase that follows and the
//! effects in order. A row reads `phase event -> phase: effects`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::lifecycle::DisconnectReason;
use crate::policy::{self, PolicyConfig};
use tokio::time::Instant;

const COOLDOWN: Duration = Duration::from_secs(30);

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// The phases of the table, each with a view that fits it.
fn phases(t0: Instant) -> Vec<(&'static str, Phase, View)> {
    use Desired::{Running, Stopped};
    use SessionState as S;
    let view = |state, desired| View {
        last_start: Some(t0),
        ..View::new(state, desired)
    };
    let live = |admitted, closing| Phase::Live { admitted, closing };
    let cleaning = |kind, then| Phase::Cleaning { kind, then };
    vec![
        ("idle/stopped", Phase::Idle, view(S::Stopped, Stopped)),
        (
            "idle/backing_off",
            Phase::Idle,
            View {
                attempts: 2,
                retry_scheduled: true,
                ..view(S::BackingOff, Running)
            },
        ),
        (
            "idle/failed",
            Phase::Idle,
            View {
                attempts: 5,
                paired: true,
                ..view(S::Failed, Running)
            },
        ),
        ("idle/logged_out", Phase::Idle, view(S::LoggedOut, Stopped)),
        (
            "idle/banned",
            Phase::Idle,
            View {
                ban_left: Some(s(600)),
                retry_scheduled: true,
                paired: true,
                ..view(S::Banned, Running)
            },
        ),
        ("queued", Phase::Queued, view(S::Queued, Running)),
        (
            "live/handshake",
            live(true, None),
            view(S::Connecting, Running),
        ),
        (
            "live/connected",
            live(false, None),
            View {
                attempts: 1,
                paired: true,
                ..view(S::Connected, Running)
            },
        ),
        (
            "live/closing:stop",
            live(
                false,
                Some(Closing::Stop {
                    reason: "stopped by request".into(),
                }),
            ),
            view(S::Connected, Stopped),
        ),
        (
            "live/closing:reconnect",
            live(false, Some(Closing::Reconnect)),
            view(S::Connected, Running),
        ),
        (
            "live/closing:logout",
            live(false, Some(Closing::Logout { then: Then::Rest })),
            view(S::Connected, Stopped),
        ),
        (
            "live/closing:delete",
            live(false, Some(Closing::Delete)),
            view(S::Connected, Running),
        ),
        (
            "live/closing:reap",
            live(
                false,
                Some(Closing::Reap {
                    state: S::QrExpired,
                    reason: "reaped".into(),
                }),
            ),
            view(S::WaitingForScan, Running),
        ),
        (
            "live/closing:relinquish",
            live(true, Some(Closing::Relinquish)),
            view(S::Connecting, Running),
        ),
        (
            "cleaning:credentials",
            cleaning(CleanupKind::Credentials, Then::Rest),
            view(S::LoggedOut, Stopped),
        ),
        (
            "cleaning:credentials+connect",
            cleaning(CleanupKind::Credentials, Then::Connect),
            view(S::LoggedOut, Running),
        ),
        (
            "cleaning:credentials+delete",
            cleaning(CleanupKind::Credentials, Then::Delete),
            view(S::LoggedOut, Stopped),
        ),
        (
            "cleaning:credentials+release",
            cleaning(CleanupKind::Credentials, Then::Release),
            view(S::LoggedOut, Stopped),
        ),
        (
            "cleaning:everything+release",
            cleaning(CleanupKind::Everything, Then::Release),
            view(S::Stopped, Stopped),
        ),
        (
            "cleaning:everything",
            cleaning(CleanupKind::Everything, Then::Rest),
            view(S::Stopped, Stopped),
        ),
    ]
}

fn ended(reason: DisconnectReason, attempts: u32) -> Event {
    let config = PolicyConfig::default();
    let policy = policy::decide(&config, &reason, attempts, None, 0.5);
    Event::Ended { reason, policy }
}

/// The events of the table; `Ended` carries what the default policy answers.
fn events(view: &View) -> Vec<(&'static str, Event)> {
    vec![
        ("start", Event::Start),
        (
            "stop",
            Event::Stop {
                reason: "stopped by request".into(),
            },
        ),
        ("restart", Event::Restart { force: false }),
        ("restart-force", Event::Restart { force: true }),
        ("refresh-qr", Event::RefreshQr),
        ("logout", Event::Logout),
        ("delete", Event::Delete),
        (
            "reap",
            Event::Reap {
                state: SessionState::Failed,
                reason: "reaped".into(),
            },
        ),
        ("restore", Event::Restore),
        ("admitted", Event::Admitted),
        ("qr", Event::Progress(Progress::Qr)),
        ("paired", Event::Progress(Progress::Paired)),
        ("connected", Event::Progress(Progress::Connected)),
        ("stable", Event::Stable),
        (
            "ended:lost",
            ended(DisconnectReason::ConnectionLost, view.attempts),
        ),
        (
            "ended:restart-required",
            ended(DisconnectReason::RestartRequired, view.attempts),
        ),
        (
            "ended:logged-out",
            ended(DisconnectReason::LoggedOut, view.attempts),
        ),
        (
            "ended:banned",
            ended(
                DisconnectReason::TemporarilyBanned {
                    code: None,
                    expires_in: s(3600),
                },
                view.attempts,
            ),
        ),
        ("retry-due", Event::RetryDue),
        ("cleanup-ok", Event::CleanupDone { ok: true }),
        ("cleanup-failed", Event::CleanupDone { ok: false }),
        ("relinquish", Event::Relinquish),
    ]
}

fn phase_name(phase: &Phase) -> String {
    match phase {
        Phase::Idle => "idle".into(),
        Phase::Queued => "queued".into(),
        Phase::Live { admitted, closing } => {
            let closing = match closing {
                None if *admitted => "handshake".to_string(),
                None => "up".to_string(),
                Some(Closing::Stop { .. }) => "closing:stop".into(),
                Some(Closing::Reconnect) => "closing:reconnect".into(),
                Some(Closing::Logout { then }) => format!("closing:logout+{}", then_name(*then)),
                Some(Closing::Delete) => "closing:delete".into(),
                Some(Closing::Reap { state, .. }) => format!("closing:reap>{state}"),
                Some(Closing::Relinquish) => "closing:relinquish".into(),
            };
            let slot = if *admitted && closing != "handshake" {
                "(slot)"
            } else {
                ""
            };
            format!("live/{closing}{slot}")
        }
        Phase::Cleaning { kind, then } => {
            let kind = match kind {
                CleanupKind::Credentials => "credentials",
                CleanupKind::Everything => "everything",
            };
            format!("cleaning:{kind}+{}", then_name(*then))
        }
    }
}

fn then_name(then: Then) -> &'static str {
    match then {
        Then::Rest => "rest",
        Then::Connect => "connect",
        Then::Delete => "delete",
        Then::Release => "release",
    }
}

fn effect_name(effect: &Effect) -> String {
    match effect {
        Effect::SetDesired(Desired::Running) => "want-running".into(),
        Effect::SetDesired(Desired::Stopped) => "want-stopped".into(),
        Effect::SetState(state, reason) => format!("state={state}{}", reason_name(reason)),
        Effect::SetReason(reason) => format!("reason{}", reason_name(reason)),
        Effect::ResetAttempts => "attempts=0".into(),
        Effect::SetAttempts(n) => format!("attempts={n}"),
        Effect::CountRestart => "count-restart".into(),
        Effect::BanFor(d) => format!("ban={}s", d.as_secs()),
        Effect::ClearBan => "no-ban".into(),
        Effect::ClearAccount => "no-account".into(),
        Effect::UseOptions => "use-options".into(),
        Effect::DefaultOptions => "default-options".into(),
        Effect::MarkUnpark => "mark-unpark".into(),
        Effect::Enqueue { priority: true } => "enqueue-first".into(),
        Effect::Enqueue { priority: false } => "enqueue".into(),
        Effect::Dequeue => "dequeue".into(),
        Effect::Spawn => "SPAWN".into(),
        Effect::Close => "CLOSE".into(),
        Effect::ReleaseAdmission => "release-slot".into(),
        Effect::RecordProgress => "record".into(),
        Effect::StartStableTimer => "stable-timer".into(),
        Effect::ConnectionGone => "gone".into(),
        Effect::ScheduleRetry(d) => format!("retry-in={}s", d.as_secs()),
        Effect::CancelRetry => "cancel-retry".into(),
        Effect::DeleteCredentials => "DELETE-CREDENTIALS".into(),
        Effect::DeleteEverything => "DELETE-ALL".into(),
        Effect::Forget => "forget".into(),
        Effect::Release => "RELEASE".into(),
        Effect::Log(_) => String::new(),
        Effect::Reply => "reply".into(),
        Effect::Refuse(r) => format!("refuse:{}", refusal_name(r)),
        Effect::Wait => "wait".into(),
        Effect::AnswerWaiters => "answer-waiters".into(),
        Effect::AnswerInfoWaiters => "answer-info-waiters".into(),
        Effect::FailInfoWaiters => "fail-info-waiters".into(),
        Effect::FailWaiters => "fail-waiters".into(),
    }
}

fn reason_name(reason: &Reason) -> String {
    match reason {
        Reason::None => String::new(),
        Reason::Text(text) => format!("({text})"),
        Reason::Keep => "(kept)".into(),
        Reason::Capacity(n) => format!("(capacity {n})"),
        Reason::CredentialsDeleted => "(+credentials deleted)".into(),
        Reason::CleanupFailed(_) => "(cleanup failed)".into(),
    }
}

fn refusal_name(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NotFound => "not-found".into(),
        Refusal::BeingDeleted => "being-deleted".into(),
        Refusal::BannedStart { retry_scheduled } => format!("banned(retry={retry_scheduled})"),
        Refusal::BannedRestart => "banned".into(),
        Refusal::Capacity(n) => format!("capacity({n})"),
        Refusal::Cooldown(d) => format!("cooldown({}s)", d.as_secs()),
        Refusal::NoQrNow { paired } => format!("no-qr(paired={paired})"),
        Refusal::NotHeld => "not-held".into(),
    }
}

fn render(step: &Step) -> String {
    let effects: Vec<String> = step
        .effects
        .iter()
        .map(effect_name)
        .filter(|e| !e.is_empty())
        .collect();
    let effects = if effects.is_empty() {
        "-".to_string()
    } else {
        effects.join(" ")
    };
    format!("{}: {effects}", phase_name(&step.phase))
}

fn context(now: Instant) -> Context {
    Context {
        now,
        full: None,
        cooldown: COOLDOWN,
        capacity_wait: s(60),
        retry_failed_after: None,
    }
}

/// Every row of the machine, computed: `phase event -> phase: effects`. The last start was
/// 60 s ago (past the cooldown).
fn computed() -> Vec<String> {
    let t0 = Instant::now();
    let ctx = context(t0 + s(60));
    let mut rows = Vec::new();
    for (name, phase, view) in phases(t0) {
        for (event_name, event) in events(&view) {
            let step = next(&phase, &view, &ctx, event);
            rows.push(format!("{name} {event_name} -> {}", render(&step)));
        }
    }
    rows
}

const TABLE: &str = include_str!("table.txt");

#[test]
fn every_phase_and_event_is_in_the_table() {
    let expected: Vec<&str> = TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let computed = computed();
    if std::env::var_os("WARDEN_PRINT_MACHINE").is_some() {
        println!("{}", computed.join("\n"));
    }
    let keys: BTreeSet<&str> = expected
        .iter()
        .map(|row| row.split(" -> ").next().unwrap_or(row))
        .collect();
    assert_eq!(
        keys.len(),
        expected.len(),
        "a phase × event pair is in the table twice"
    );
    let mut wrong = Vec::new();
    for row in &computed {
        if !expected.contains(&row.as_str()) {
            let key = row.split(" -> ").next().unwrap_or(row);
            let want = expected
                .iter()
                .find(|e| e.split(" -> ").next() == Some(key))
                .copied()
                .unwrap_or("(missing)");
            wrong.push(format!("  got:  {row}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "rows differ:\n{}", wrong.join("\n"));
    assert_eq!(computed.len(), expected.len(), "the table has extra rows");
}

#[test]
fn capacity_full_refuses_a_start_and_parks_a_connect_as_backing_off() {
    let t0 = Instant::now();
    let ctx = Context {
        full: Some(4),
        ..context(t0 + s(60))
    };
    let stopped = View::new(SessionState::Stopped, Desired::Stopped);
    let step = next(&Phase::Idle, &stopped, &ctx, Event::Start);
    assert_eq!(step.effects, vec![Effect::Refuse(Refusal::Capacity(4))]);
    assert_eq!(step.phase, Phase::Idle);
    // A reconnect that finds no room keeps a way forward: backing off, with a retry.
    let live = Phase::Live {
        admitted: false,
        closing: Some(Closing::Reconnect),
    };
    let view = View::new(SessionState::Connected, Desired::Running);
    let step = next(
        &live,
        &view,
        &ctx,
        ended(DisconnectReason::ConnectionClosed, 0),
    );
    assert_eq!(step.phase, Phase::Idle);
    assert!(
        step.effects.contains(&Effect::SetState(
            SessionState::BackingOff,
            Reason::Capacity(4)
        )) && step.effects.contains(&Effect::ScheduleRetry(s(60))),
        "{:?}",
        step.effects
    );
}

#[test]
fn cooldowns_hold_within_their_time() {
    let t0 = Instant::now();
    let ctx = context(t0 + s(10));
    let view = View {
        last_start: Some(t0),
        ..View::new(SessionState::Connected, Desired::Running)
    };
    let live = Phase::Live {
        admitted: false,
        closing: None,
    };
    let step = next(&live, &view, &ctx, Event::Restart { force: false });
    assert_eq!(step.effects, vec![Effect::Refuse(Refusal::Cooldown(s(20)))]);
    let step = next(&live, &view, &ctx, Event::Restart { force: true });
    assert!(step.effects.contains(&Effect::Close));
    // Out of a parked state at most once per cooldown.
    let failed = View {
        last_unpark: Some(t0),
        ..View::new(SessionState::Failed, Desired::Running)
    };
    let step = next(&Phase::Idle, &failed, &ctx, Event::Start);
    assert_eq!(step.effects, vec![Effect::Refuse(Refusal::Cooldown(s(20)))]);
}

#[test]
fn a_ban_that_has_passed_no_longer_refuses_a_start() {
    let t0 = Instant::now();
    let ctx = context(t0 + s(60));
    let banned = View {
        ban_left: Some(Duration::ZERO),
        ..View::new(SessionState::Banned, Desired::Stopped)
    };
    let step = next(&Phase::Idle, &banned, &ctx, Event::Start);
    assert_eq!(step.phase, Phase::Queued, "{:?}", step.effects);
    assert!(step.effects.contains(&Effect::ClearBan));
}

#[test]
fn a_quarantine_schedules_the_retry_of_a_failed_session() {
    let t0 = Instant::now();
    let ctx = Context {
        retry_failed_after: Some(s(900)),
        ..context(t0)
    };
    let failed = View::new(SessionState::Failed, Desired::Running);
    let step = next(&Phase::Idle, &failed, &ctx, Event::Restore);
    assert_eq!(step.effects, vec![Effect::ScheduleRetry(s(900))]);
    let step = next(&Phase::Idle, &failed, &ctx, Event::RetryDue);
    assert_eq!(step.phase, Phase::Queued);
    assert!(step.effects.contains(&Effect::ResetAttempts));
}
