//! Embedding the warden supervisor in another tokio application.
//!
//! Runs with a scripted link (a stand-in for WhatsApp that plays a lifecycle), so it needs no
//! network: one session shows a QR code, gets paired and logs in; another keeps losing its
//! connection, backs off, and is given up as `failed`. Every event is printed.
//!
//! ```text
//! cargo run -p warden-core --example embed
//! ```

use std::sync::Arc;
use std::time::Duration;

use warden_core::scripted::{Script, ScriptedLink};
use warden_core::{DisconnectReason, SessionEvent, SessionState, Supervisor, SupervisorConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("warden-embed-{}", std::process::id()));

    // What WhatsApp would do, scripted per session.
    let link = ScriptedLink::new(Script::new());
    let jid = "15551234567@s.whatsapp.net";
    link.script(
        "shop",
        [
            Script::new()
                .qr("2@scripted-qr-ref,scripted-keys", Duration::from_secs(60))
                .wait(Duration::from_millis(300))
                .paired(jid)
                .disconnect(DisconnectReason::RestartRequired),
            Script::login(jid),
        ],
    );
    let flaky = Script::new()
        .wait(Duration::from_millis(50))
        .disconnect(DisconnectReason::ConnectionLost);
    link.script("flaky", std::iter::repeat_n(flaky, 4));

    // Short backoffs so the demo takes a second, not 21.
    let mut config = SupervisorConfig::new(&dir);
    config.policy.backoff_base = Duration::from_millis(100);
    let (supervisor, _) = Supervisor::start(config, Arc::new(link)).await?;
    let mut events = supervisor.subscribe();

    for token in ["shop", "flaky"] {
        supervisor
            .create(Some(format!("{token} session")), Some(token))
            .await?;
        supervisor.start_session(token, Default::default()).await?;
    }

    let settled = |s: &Supervisor| {
        s.status("shop")
            .is_ok_and(|i| i.state == SessionState::Connected)
            && s.status("flaky")
                .is_ok_and(|i| i.state == SessionState::Failed)
    };
    while !settled(&supervisor) {
        match events.recv().await? {
            SessionEvent::Updated(info) => println!(
                "{:<6} {:<16} attempts={} {}",
                info.token,
                info.state,
                info.attempts,
                info.reason.as_deref().unwrap_or("")
            ),
            SessionEvent::Qr {
                token, expires_in, ..
            } => {
                println!("{token:<6} QR code to scan (valid {expires_in:?})")
            }
            other => println!("{other:?}"),
        }
    }

    let list = supervisor.list();
    println!("\nsessions per state: {:?}", list.counts);
    supervisor.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
