//! [`WaConnection`]: one connection attempt of one session, driven by its own task.
//!
//! The driver makes exactly one `client.run()` (wa-rs's auto-reconnect is off), forwards the
//! tapped events as lifecycle events, runs the liveness watchdog, requests a pair code when
//! asked, and, once the run is over, classifies why it ended and reports it. Stopping is
//! bounded: `disconnect()` with a timeout, then the run task is aborted (wa-rs cannot
//! interrupt its own dial or handshake), and the socket is released by the transport.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use wa_rs::Client;
use wa_rs::Jid;
use wa_rs::pair_code::PairCodeOptions;
use wa_rs::wa_rs_proto::whatsapp as wa;
use wa_rs_core::iq::keepalive::KeepaliveSpec;
use warden_core::link::SendFuture;
use warden_core::{
    Connection, DisconnectReason, LifecycleEvent, LifecycleSink, LinkError, OpenOptions, Outgoing,
    SendOutcome,
};

use crate::classify::{self, RunFacts, Seen};
use crate::client::{DISCONNECT_BOUND, Session};
use crate::transport::Probe;
use crate::watchdog::{Verdict, Watchdog};

/// Bound on waiting for an interrupted `run()` to return before aborting it.
const RUN_BOUND: Duration = Duration::from_secs(1);
/// Bound on saving the device state at the end of a connection.
const FLUSH_BOUND: Duration = Duration::from_secs(2);
/// Bound on waiting for a pairing's `PairSuccess`/`PairError` after its run has returned.
const PAIR_OUTCOME_BOUND: Duration = Duration::from_secs(2);

/// What the connection handle shares with its driver.
struct Control {
    stop: CancellationToken,
    /// The logged-in client, for sending.
    client: Mutex<Option<Arc<Client>>>,
    /// The task running `client.run()`.
    run: Mutex<Option<AbortHandle>>,
    probe: Arc<Probe>,
    /// How long a sent message's ack may take.
    ack_timeout: Duration,
}

/// One live connection; see the module docs. Dropping it stops the connection at once: the
/// socket is closed and the run aborted immediately, and the driver then lets go of the client
/// (within about 2 s); the session's next connection waits for that.
pub struct WaConnection {
    control: Arc<Control>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaConnection")
            .field("stopped", &self.control.stop.is_cancelled())
            .finish()
    }
}

/// The knobs a driver needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriveConfig {
    pub watchdog: Watchdog,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
}

impl WaConnection {
    /// Starts driving one connection of `session`.
    pub(crate) fn start(
        session: Arc<Session>,
        options: OpenOptions,
        sink: LifecycleSink,
        config: DriveConfig,
    ) -> Self {
        let control = Arc::new(Control {
            stop: CancellationToken::new(),
            client: Mutex::new(None),
            run: Mutex::new(None),
            ack_timeout: config.ack_timeout,
            probe: session.factory.probe(),
        });
        let driver = crate::tasks::spawn(drive(session, options, sink, control.clone(), config));
        Self {
            control,
            driver: Some(driver),
        }
    }
}

impl Drop for WaConnection {
    fn drop(&mut self) {
        self.control.stop.cancel();
        self.control.probe.close_current();
        if let Some(run) = lock(&self.control.run).take() {
            run.abort();
        }
    }
}

#[async_trait::async_trait]
impl Connection for WaConnection {
    async fn close(&mut self) {
        self.control.stop.cancel();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }

    fn send(&self, message: Outgoing) -> SendFuture<Result<SendOutcome, LinkError>> {
        let recipient = parse_recipient(&message.to);
        let client = lock(&self.control.client).clone();
        let ack_timeout = self.control.ack_timeout;
        let stop = self.control.stop.clone();
        Box::pin(async move {
            let jid = recipient?;
            let client = client.ok_or(LinkError::NotConnected)?;
            let body = wa::Message {
                conversation: Some(message.text),
                ..Default::default()
            };
            let ack = client
                .send_message_with_id_acked(jid, body, message.id, ack_timeout)
                .await
                .map_err(|e| {
                    // A socket that went away is a lost connection, not a failed send: the
                    // message waits for the next connection without counting an attempt.
                    if stop.is_cancelled() || !client.is_connected() {
                        LinkError::NotConnected
                    } else {
                        LinkError::Send(e.to_string())
                    }
                })?;
            Ok(classify::send_outcome(&ack))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A phone number (digits with country code; `+`, spaces, dashes and parentheses allowed) or
/// a user or group JID, checked by warden-core's [`input::recipient`] (the outbox already
/// stored it in that form), as a wa-rs [`Jid`].
///
/// [`input::recipient`]: warden_core::outbox::input::recipient
pub fn parse_recipient(to: &str) -> Result<Jid, LinkError> {
    let invalid = || LinkError::InvalidRecipient(to.to_owned());
    let jid = warden_core::outbox::input::recipient(to).map_err(|_| invalid())?;
    jid.parse().map_err(|_| invalid())
}

/// The connection's task; see the module docs.
async fn drive(
    session: Arc<Session>,
    options: OpenOptions,
    sink: LifecycleSink,
    control: Arc<Control>,
    config: DriveConfig,
) {
    let token = session.token.clone();
    // The previous connection of this session may still be letting go of the client.
    let mut slot = tokio::select! {
        slot = session.slot.clone().lock_owned() => slot,
        () = control.stop.cancelled() => {
            sink.disconnected(DisconnectReason::Stopped);
            return;
        }
    };
    let incarnation = session.incarnation(&mut slot).await;
    let client = incarnation.client.clone();
    // Lifecycle events dispatched between connections (by wa-rs tasks that outlived a run)
    // are stale; messages decrypted after the previous connection's last look are not.
    while let Ok(event) = incarnation.events.try_recv() {
        if let Some(item) = event.inbound() {
            sink.inbound(item);
        }
    }
    if control.stop.is_cancelled() {
        drop(slot);
        sink.disconnected(DisconnectReason::Stopped);
        return;
    }
    let paired_before = session.is_paired().await;
    let probe = control.probe.clone();
    probe.begin();

    let run_client = client.clone();
    let mut run = crate::tasks::spawn(async move { run_client.run().await });
    *lock(&control.run) = Some(run.abort_handle());
    tracing::debug!(token = %token, "connecting");

    let mut pair_code = None;
    if let Some(phone) = options.pair_phone.clone()
        && !paired_before
    {
        pair_code = Some(crate::tasks::spawn(request_pair_code(
            client.clone(),
            phone,
            config.connect_timeout,
            token.clone(),
        )));
    }
    let watchdog = config.watchdog;
    let mut tick = tokio::time::interval(watchdog.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping: Option<JoinHandle<()>> = None;

    let mut seen = Vec::new();
    let mut facts = RunFacts::default();
    let mut run_over = false;
    let mut forward = Forward {
        session: &session,
        token: &token,
        sink: &sink,
        control: &control,
        client: &client,
        seen: &mut seen,
    };
    loop {
        tokio::select! {
            biased;
            () = control.stop.cancelled() => {
                facts.stopped = true;
                break;
            }
            event = incarnation.events.recv() => match event {
                Some(event) => forward.on(event).await,
                None => break,
            },
            _ = &mut run => {
                run_over = true;
                break;
            }
            _ = tick.tick() => match watchdog.judge(probe.silent_for()) {
                Verdict::Alive => {}
                Verdict::Ping => {
                    if ping.as_ref().is_none_or(|p| p.is_finished()) && client.is_connected() {
                        let c = client.clone();
                        let wait = watchdog.ping_after;
                        ping = Some(crate::tasks::spawn(async move {
                            let _ = c.execute(KeepaliveSpec::with_timeout(wait)).await;
                        }));
                    }
                }
                Verdict::Dead => {
                    tracing::warn!(token = %token, timeout = ?watchdog.timeout, "nothing received for too long; closing the connection");
                    facts.liveness_expired = true;
                    break;
                }
            },
        }
    }

    // Stop whatever is left of the run. `disconnect()` always: it clears wa-rs's running flag
    // and releases the tasks that wait for its shutdown signal. It cannot interrupt a dial or a
    // handshake, so a run that has no socket yet is aborted at once (wa-rs resets its own
    // "connecting" flag when that future is dropped).
    let in_connect = !client.is_connected();
    let _ = tokio::time::timeout(DISCONNECT_BOUND, client.disconnect()).await;
    probe.close_current();
    if !run_over && (in_connect || tokio::time::timeout(RUN_BOUND, &mut run).await.is_err()) {
        run.abort();
        let _ = run.await;
        // The handshake may have completed between `disconnect()` and the abort: `connect()`
        // then stored a socket and started a keepalive task, and the next `run()` would fail
        // with `AlreadyConnected`. Let go of them too.
        let _ = tokio::time::timeout(DISCONNECT_BOUND, client.disconnect()).await;
        probe.close_current();
    }
    lock(&control.run).take();
    for task in [pair_code, ping].into_iter().flatten() {
        task.abort();
    }
    // wa-rs dispatches synchronously: what the run saw is already queued.
    while let Ok(event) = incarnation.events.try_recv() {
        forward.on(event).await;
    }
    let paired_now = session.is_paired().await;
    let pair_outcome_seen = |seen: &[Seen]| {
        seen.iter()
            .any(|s| matches!(s, Seen::PairSuccess { .. } | Seen::PairError { .. }))
    };
    if !facts.stopped && !paired_before && paired_now && !pair_outcome_seen(forward.seen) {
        // wa-rs stores the pairing, sends the signature, then dispatches `PairSuccess`, while
        // the server's 515 is handled inline: the run can be over before the event is.
        let outcome = tokio::time::timeout(PAIR_OUTCOME_BOUND, async {
            while let Some(event) = incarnation.events.recv().await {
                forward.on(event).await;
                if pair_outcome_seen(forward.seen) {
                    break;
                }
            }
        })
        .await;
        if outcome.is_err() {
            tracing::warn!(token = %token, "paired, but wa-rs did not report the pairing");
        }
    }
    *lock(&control.client) = None;
    // The connection is over: the per-chat workers end once they have processed what is
    // queued (their events reach the next connection of this session, as before), instead of
    // keeping the client alive for minutes through their queues (`crates/patches/README.md`).
    client.release_chat_workers();
    facts.transport = probe.facts();
    // The credentials say whether this run paired the device, even when wa-rs's `PairSuccess`
    // came too late: such a run wants the immediate restart, never `qr_expired`.
    facts.newly_paired = !paired_before && paired_now;
    let reason = classify::classify(&seen, &facts);
    // A run that was not logged in from stored credentials may have left a QR rotation task
    // behind: one that lost the race with the pairing's cancel (wa-rs sets the cancel only
    // after spawning it) would call `disconnect()` on the logged-in client 60 s later.
    incarnation.stale = !paired_before || !paired_now;
    if tokio::time::timeout(FLUSH_BOUND, session.flush())
        .await
        .is_err()
    {
        tracing::warn!(token = %token, "saving the device state timed out");
    }
    drop(slot);
    tracing::info!(token = %token, reason = %reason, "connection ended");
    sink.disconnected(reason);
}

/// Forwards tapped events to the sink and remembers those that decide the end.
struct Forward<'a> {
    session: &'a Session,
    token: &'a warden_core::Token,
    sink: &'a LifecycleSink,
    control: &'a Control,
    client: &'a Arc<Client>,
    seen: &'a mut Vec<Seen>,
}

impl Forward<'_> {
    async fn on(&mut self, event: Seen) {
        match &event {
            // Only while this run is logged in: a post-login task of an earlier run can
            // dispatch its `Connected` late (and nothing is connected once the run is over).
            Seen::Connected if !self.client.is_logged_in() => {
                tracing::debug!(token = %self.token, "ignoring a Connected of no live login");
                return;
            }
            Seen::Connected => {
                let jid = self
                    .client
                    .get_pn()
                    .await
                    .map(|j| j.to_string())
                    .unwrap_or_default();
                let name = Some(self.client.get_push_name().await).filter(|n| !n.is_empty());
                // What the login changed (push name, routing, version) is committed first.
                self.session.flush().await;
                *lock(&self.control.client) = Some(self.client.clone());
                tracing::info!(token = %self.token, jid = %jid, "connected");
                self.sink.emit(LifecycleEvent::Connected { jid, name });
            }
            other => {
                match other {
                    Seen::Qr { expires_in, .. } => {
                        tracing::info!(token = %self.token, expires_in = ?expires_in, "QR code issued")
                    }
                    Seen::PairCode { .. } => {
                        tracing::info!(token = %self.token, "pair code issued")
                    }
                    Seen::PairSuccess { jid } => {
                        // The new credentials are committed before anyone hears of the
                        // pairing: an acknowledged pairing survives a kill -9.
                        self.session.flush().await;
                        tracing::info!(token = %self.token, jid = %jid, "paired")
                    }
                    Seen::Message(_) | Seen::Receipt { .. } => {
                        if let Some(item) = other.inbound() {
                            self.sink.inbound(item);
                        }
                    }
                    ending => tracing::info!(token = %self.token, event = ?ending, "wa-rs event"),
                }
                if let Some(lifecycle) = classify::lifecycle(other) {
                    self.sink.emit(lifecycle);
                }
            }
        }
        if event.matters_for_the_end() {
            self.seen.push(event);
        }
    }
}

/// Asks for a pairing code once the socket is up; the code arrives as a tapped event.
async fn request_pair_code(
    client: Arc<Client>,
    phone: String,
    wait: Duration,
    token: warden_core::Token,
) {
    if client.wait_for_socket(wait).await.is_err() {
        return;
    }
    let options = PairCodeOptions {
        phone_number: phone,
        ..PairCodeOptions::default()
    };
    if let Err(e) = client.pair_with_code(options).await {
        tracing::warn!(token = %token, error = %e, "pair code request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_phone_numbers_or_jids() {
        let ok = |to: &str| parse_recipient(to).unwrap().to_string();
        assert_eq!(ok("15551234567"), "15551234567@s.whatsapp.net");
        assert_eq!(ok("+1 555-123-4567"), "15551234567@s.whatsapp.net");
        assert_eq!(
            ok("15551234567@s.whatsapp.net"),
            "15551234567@s.whatsapp.net"
        );
        assert_eq!(ok("120363000000000000@g.us"), "120363000000000000@g.us");
        for bad in [
            "",
            "+",
            "abc",
            "12345",
            "1234567890123456",
            "0155512345",
            "@s.whatsapp.net",
            "1555@",
        ] {
            assert_eq!(
                parse_recipient(bad),
                Err(LinkError::InvalidRecipient(bad.into())),
                "{bad:?}"
            );
        }
    }
}
