//! The client commands: each sends one request (or watches) and prints the answer.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use warden_control::protocol::{
    DeadLettersView, DeletedView, HealthView, HistoryView, ListView, OutboxView, OutgoingView,
    ReapView, RedeliveredView, ReplayingView, SessionView, WebhookRemovedView, WebhookTestView,
    WebhookView, WebhooksView,
};
use warden_control::{ClientError, ControlClient, ErrorCode, EventLine, Op};

use crate::cli::{Command, WebhookAction};
use crate::exit;
use crate::output;

/// Runs a client command against the daemon at `socket`.
pub async fn run(socket: &Path, command: Command, json: bool) -> ExitCode {
    let command = match read_proxy_from_stdin(command) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("warden: reading the proxy from stdin: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match dispatch(socket, command, json).await {
        Ok(code) => code,
        Err(e) => {
            if json {
                let body = match &e {
                    ClientError::Refused(body) => serde_json::to_value(body).unwrap_or_default(),
                    other => serde_json::json!({"code": "client", "message": other.to_string()}),
                };
                println!("{}", serde_json::json!({"ok": false, "error": body}));
            } else {
                eprintln!("warden: {e}");
                if matches!(&e, ClientError::Refused(body) if body.code == ErrorCode::Capacity) {
                    eprintln!(
                        "warden: the daemon is at capacity; stop or log out a session first \
                         (`warden sessions` lists them), or give the daemon more file \
                         descriptors (LimitNOFILE, ulimit -n) or a higher [daemon] max_sessions"
                    );
                }
            }
            exit::for_error(&e)
        }
    }
}

async fn dispatch(socket: &Path, command: Command, json: bool) -> Result<ExitCode, ClientError> {
    let mut client = ControlClient::connect(socket).await?;
    let token_op = |token: String, make: fn(String) -> Op| make(token);
    match command {
        Command::Serve { .. } => unreachable!("serve is not a client command"),
        Command::Create { name, token, proxy } => {
            let s: SessionView = client.call(&Op::Create { name, token, proxy }).await?;
            print(json, &s, || format!("created session {}\n", s.token));
        }
        Command::SetProxy {
            token,
            proxy,
            clear,
            reconnect,
        } => {
            let proxy = if clear { None } else { proxy };
            session(
                &mut client,
                json,
                Op::SetProxy {
                    token,
                    proxy,
                    reconnect,
                },
            )
            .await?
        }
        Command::Start {
            token,
            phone,
            no_wait,
        } => return start(socket, client, token, phone, no_wait, json).await,
        Command::Stop { token } => {
            session(
                &mut client,
                json,
                token_op(token, |token| Op::Stop { token }),
            )
            .await?
        }
        Command::Restart { token, force } => {
            session(&mut client, json, Op::Restart { token, force }).await?
        }
        Command::RefreshQr { token } => session(&mut client, json, Op::RefreshQr { token }).await?,
        Command::Logout { token } => session(&mut client, json, Op::Logout { token }).await?,
        Command::ForceCleanup { token } => {
            session(&mut client, json, Op::ForceCleanup { token }).await?
        }
        Command::ResetReconnect { token } => {
            session(&mut client, json, Op::ResetReconnect { token }).await?
        }
        Command::Status { token: Some(token) } => {
            session(&mut client, json, Op::Status { token }).await?
        }
        Command::Status { token: None } | Command::Sessions => {
            let list: ListView = client.call(&Op::List {}).await?;
            print(json, &list, || output::list(&list));
        }
        Command::Delete { token } => {
            let d: DeletedView = client.call(&Op::Delete { token }).await?;
            print(json, &d, || format!("deleted session {}\n", d.deleted));
        }
        Command::Send {
            token,
            to,
            text,
            key,
        } => {
            let sent: OutgoingView = client
                .call(&Op::SendText {
                    token,
                    to,
                    text,
                    key,
                })
                .await?;
            print(json, &sent, || output::outgoing(&sent));
        }
        Command::Message { token, id } => {
            let m: OutgoingView = client
                .call(&Op::MessageStatus { token, message: id })
                .await?;
            print(json, &m, || output::outgoing(&m));
        }
        Command::RetryMessage { token, id } => {
            let m: OutgoingView = client
                .call(&Op::RetryMessage { token, message: id })
                .await?;
            print(json, &m, || output::outgoing(&m));
        }
        Command::CancelMessage { token, id } => {
            let m: OutgoingView = client
                .call(&Op::CancelMessage { token, message: id })
                .await?;
            print(json, &m, || output::outgoing(&m));
        }
        Command::Outbox { token, limit } => {
            let o: OutboxView = client
                .call(&Op::Outbox {
                    token,
                    limit: Some(limit),
                })
                .await?;
            print(json, &o, || output::outbox(&o));
        }
        Command::Cleanup => {
            let reap: ReapView = client.call(&Op::Reap {}).await?;
            print(json, &reap, || {
                if reap.reaped.is_empty() {
                    return "nothing to clean up\n".into();
                }
                reap.reaped
                    .iter()
                    .map(|r| {
                        format!(
                            "Auto-cleanup: Removing {} ({} -> {}): {}\n",
                            r.token, r.was, r.now, r.reason
                        )
                    })
                    .collect()
            });
        }
        Command::Health => {
            let h: HealthView = client.call(&Op::Health {}).await?;
            print(json, &h, || {
                let counts: Vec<String> =
                    h.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                format!(
                    "{} (warden {}, up {} s): {} sessions{}{}\n",
                    h.status,
                    h.version,
                    h.uptime_secs,
                    h.sessions,
                    if counts.is_empty() { "" } else { ": " },
                    counts.join(", ")
                )
            });
        }
        Command::History {
            token,
            since,
            limit,
            follow,
        } => {
            let op = Op::History {
                token,
                since,
                limit: Some(limit),
                follow,
            };
            let h: HistoryView = client.call(&op).await?;
            print(json, &h, || output::history(&h));
            if follow {
                return stream(client, json).await;
            }
        }
        Command::Webhooks { action } => {
            return webhooks(&mut client, action.unwrap_or(WebhookAction::List), json).await;
        }
        Command::Watch { token } => return watch(client, token, json).await,
    }
    Ok(ExitCode::from(exit::OK))
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        print!("{}", human());
    }
}

async fn session(client: &mut ControlClient, json: bool, op: Op) -> Result<(), ClientError> {
    let s: SessionView = call(client, &op).await?;
    print(json, &s, || output::session(&s));
    Ok(())
}

async fn call<T: DeserializeOwned>(client: &mut ControlClient, op: &Op) -> Result<T, ClientError> {
    client.call(op).await
}

/// States in which a start has clearly not led to a connection.
const GAVE_UP: [&str; 6] = [
    "stopped",
    "failed",
    "logged_out",
    "replaced",
    "banned",
    "qr_expired",
];
/// States that show the start has taken effect.
const UNDER_WAY: [&str; 6] = [
    "queued",
    "connecting",
    "waiting_for_scan",
    "pairing",
    "backing_off",
    "connected",
];

/// `warden start`: starts the session and, unless `no_wait`, shows every QR code and state change
/// until it is connected (exit 0) or ends somewhere else (exit 6).
async fn start(
    socket: &Path,
    mut client: ControlClient,
    token: String,
    phone: Option<String>,
    no_wait: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    // Watch first, so nothing that follows the start is missed.
    let mut watcher = if no_wait {
        None
    } else {
        let mut watcher = ControlClient::connect(socket).await?;
        let _: serde_json::Value = watcher
            .call(&Op::Watch {
                token: Some(token.clone()),
            })
            .await?;
        Some(watcher)
    };
    let started: SessionView = client
        .call(&Op::Start {
            token: token.clone(),
            phone,
        })
        .await?;
    let Some(watcher) = watcher.as_mut() else {
        print(json, &started, || output::session(&started));
        return Ok(ExitCode::from(exit::OK));
    };
    if !json {
        println!("{token}: {}", started.state);
    }
    // The stream opens with the state from before the start (possibly `failed` or `stopped`):
    // only a state seen on the stream after it shows the start under way counts.
    let mut under_way = false;
    let mut last_state = String::new();
    let mut last_qr = String::new();
    while let Some(event) = watcher.next_event().await? {
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        }
        match &event {
            EventLine::Session { session } => {
                if let Some(qr) = session.qr.as_ref().filter(|qr| qr.code != last_qr) {
                    last_qr = qr.code.clone();
                    if !json {
                        println!(
                            "{}\nScan with WhatsApp > Linked devices > Link a device (valid until {})",
                            output::qr(&qr.code),
                            qr.expires_at
                        );
                    }
                }
                if session.state != last_state {
                    last_state = session.state.clone();
                    if !json {
                        let reason = session
                            .reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default();
                        println!("{token}: {}{reason}", session.state);
                    }
                }
                under_way |= UNDER_WAY.contains(&session.state.as_str());
                if session.state == "connected" {
                    if !json {
                        println!(
                            "{token} is connected as {}",
                            session.jid.as_deref().unwrap_or("?")
                        );
                    }
                    return Ok(ExitCode::from(exit::OK));
                }
                if under_way && GAVE_UP.contains(&session.state.as_str()) {
                    if !json {
                        eprintln!("warden: {token} did not connect: it is {}", session.state);
                    }
                    return Ok(ExitCode::from(exit::NOT_CONNECTED));
                }
            }
            EventLine::Qr {
                code,
                expires_in_secs,
                ..
            } if !json && *code != last_qr => {
                last_qr = code.clone();
                println!(
                    "{}\nScan with WhatsApp > Linked devices > Link a device (valid {expires_in_secs} s)",
                    output::qr(code)
                );
            }
            EventLine::PairCode { code, .. } if !json => {
                println!(
                    "Pairing code: {code}\nOn the phone: WhatsApp > Linked devices > Link with phone number"
                );
            }
            EventLine::Removed { .. } => {
                eprintln!("warden: {token} was deleted");
                return Ok(ExitCode::from(exit::NOT_CONNECTED));
            }
            EventLine::Closed { reason } => {
                eprintln!("warden: the daemon ended the stream: {reason}");
                return Ok(ExitCode::from(exit::NOT_RUNNING));
            }
            _ => {}
        }
    }
    eprintln!("warden: the daemon closed the connection");
    Ok(ExitCode::from(exit::NOT_RUNNING))
}

/// `warden watch`: prints every event until the daemon hangs up.
async fn watch(
    mut client: ControlClient,
    token: Option<String>,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let _: serde_json::Value = client
        .call(&Op::Watch {
            token: token.clone(),
        })
        .await?;
    while let Some(event) = client.next_event().await? {
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
            continue;
        }
        println!("{}", output::event(&event));
        if let (Some(_), EventLine::Qr { code, .. }) = (&token, &event) {
            println!("{}", output::qr(code));
        }
        if matches!(event, EventLine::Closed { .. }) {
            return Ok(ExitCode::from(exit::NOT_RUNNING));
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// `warden webhooks ...`.
async fn webhooks(
    client: &mut ControlClient,
    action: WebhookAction,
    json: bool,
) -> Result<ExitCode, ClientError> {
    match action {
        WebhookAction::List => {
            let v: WebhooksView = client.call(&Op::Webhooks {}).await?;
            print(json, &v, || output::webhooks(&v));
        }
        WebhookAction::Dead { hook, limit } => {
            let op = Op::WebhookDead {
                hook,
                limit: Some(limit),
            };
            let v: DeadLettersView = client.call(&op).await?;
            print(json, &v, || output::dead_letters(&v));
        }
        WebhookAction::Redeliver { hook, seq } => {
            let v: RedeliveredView = client.call(&Op::WebhookRedeliver { hook, seq }).await?;
            print(json, &v, || {
                let mut out = format!("{} delivered", v.delivered.len());
                for f in &v.failed {
                    out += &format!("\n{:>8} failed again: {}", f.seq, f.reason);
                }
                out + "\n"
            });
            if !v.failed.is_empty() {
                return Ok(ExitCode::from(exit::FAILED));
            }
        }
        WebhookAction::Replay { hook, from } => {
            let v: ReplayingView = client.call(&Op::WebhookReplay { hook, from }).await?;
            print(json, &v, || {
                format!(
                    "{}: sending every event from entry {} again\n",
                    v.hook, v.from
                )
            });
        }
        WebhookAction::Set {
            token,
            url,
            secret,
            unsigned,
            events,
            allow_private,
            name,
        } => {
            let secret = match secret.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(ClientError::from)?;
                    Some(line.trim().to_owned())
                }
                _ => secret,
            };
            let op = Op::WebhookSet {
                token,
                url,
                secret,
                unsigned,
                events: (!events.is_empty()).then_some(events),
                allow_private,
                name,
            };
            let v: WebhookView = client.call(&op).await?;
            print(json, &v, || {
                output::webhooks(&WebhooksView {
                    webhooks: vec![v.clone()],
                })
            });
        }
        WebhookAction::Remove { hook } => {
            let v: WebhookRemovedView = client.call(&Op::WebhookRemove { hook }).await?;
            print(json, &v, || format!("removed webhook {}\n", v.removed));
        }
        WebhookAction::Test { hook } => {
            let v: WebhookTestView = client.call(&Op::WebhookTest { hook }).await?;
            print(json, &v, || format!("{}: {}\n", v.hook, v.outcome));
            if !v.delivered {
                return Ok(ExitCode::from(exit::FAILED));
            }
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// After `history --follow`: prints each batch until the daemon hangs up.
async fn stream(mut client: ControlClient, json: bool) -> Result<ExitCode, ClientError> {
    while let Some(event) = client.next_event().await? {
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        } else {
            println!("{}", output::event(&event));
        }
        if matches!(event, EventLine::Closed { .. }) {
            return Ok(ExitCode::from(exit::NOT_RUNNING));
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// Replaces a proxy given as `-` by the first line of stdin (so the password stays out of
/// the process list and the shell history).
fn read_proxy_from_stdin(command: Command) -> std::io::Result<Command> {
    fn line() -> std::io::Result<String> {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }
    Ok(match command {
        Command::Create {
            name,
            token,
            proxy: Some(dash),
        } if dash == "-" => Command::Create {
            name,
            token,
            proxy: Some(line()?),
        },
        Command::SetProxy {
            token,
            proxy: Some(dash),
            clear,
            reconnect,
        } if dash == "-" => Command::SetProxy {
            token,
            proxy: Some(line()?),
            clear,
            reconnect,
        },
        other => other,
    })
}
