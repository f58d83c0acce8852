//! kill -9 while 500 messages are queued, against the real `warden` binary and the fake
//! WhatsApp server, driven only through the control socket.
//!
//! What it proves, at the fake contact's phone (what a recipient reads):
//! - every message whose `send_text` was answered is delivered after the restart, none lost;
//! - each is read exactly once: a message cut short by the kill is sent again under its
//!   stored id, and the recipient drops the second copy, as WhatsApp's recipients do;
//! - the daemon's outbox is empty afterwards, and every message is `sent` or further.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use warden_fakewa::{FakeServer, ServerEvent};

use common::{Daemon, fake_whatsapp, workspace};

const MESSAGES: usize = 500;
const CONTACT: &str = "15557654321";
const LIMIT: Duration = Duration::from_secs(120);

/// Per message id: its text, how many copies the contact's phone decrypted, and how many of
/// them were first reads (the rest are resends it drops).
fn reads(server: &FakeServer) -> BTreeMap<String, (String, usize, usize)> {
    let phone = format!("{CONTACT}@s.whatsapp.net");
    let mut out: BTreeMap<String, (String, usize, usize)> = BTreeMap::new();
    server.recorder().inspect(|s| {
        for r in s.records() {
            if let ServerEvent::ClientMessage {
                id,
                device,
                plaintext: Ok(p),
                duplicate,
                ..
            } = &r.event
                && *device == phone
            {
                let entry = out
                    .entry(id.clone())
                    .or_insert_with(|| (p.text.clone().unwrap_or_default(), 0, 0));
                entry.1 += 1;
                if !duplicate {
                    entry.2 += 1;
                }
            }
        }
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_500_queued_messages_loses_none_and_duplicates_none() {
    let whatsapp = fake_whatsapp().await;
    let dir = workspace(&whatsapp.url());
    // Slow sends (10 a second) so that most messages are still queued at the kill.
    let daemon = Daemon::start_with(dir.path(), &[("WARDEN_OUTBOX_PER_MINUTE", "600")]).await;
    daemon.json(&["create", "--token", "shop1"]).await;
    let (code, out, err) = daemon.cli(&["start", "shop1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");

    // 500 sends on one connection, pipelined; every `ok` reply is a committed row.
    let (read, mut write) = UnixStream::connect(&daemon.socket)
        .await
        .unwrap()
        .into_split();
    let mut lines = BufReader::new(read).lines();
    let writer = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let request = json!({
                "id": n, "op": "send_text", "token": "shop1", "to": CONTACT,
                "text": format!("message {n}"), "key": format!("k{n}"),
            });
            write
                .write_all(format!("{request}\n").as_bytes())
                .await
                .unwrap();
        }
        write
    });
    let mut accepted = HashSet::new();
    while accepted.len() < MESSAGES {
        let line = lines.next_line().await.unwrap().expect("a reply");
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], json!(true), "{reply}");
        accepted.insert(reply["result"]["message_id"].as_str().unwrap().to_owned());
    }
    let _write = writer.await.unwrap();

    // kill -9 at once: most are still queued, one may be in flight.
    let mut child = daemon.child;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let before = reads(&whatsapp).len();
    assert!(
        before < MESSAGES,
        "the kill came while messages were queued ({before} read before it)"
    );

    // The next daemon (fast now) restores the session and drains what is left.
    let daemon = Daemon::start_with(dir.path(), &[("WARDEN_OUTBOX_PER_MINUTE", "60000")]).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let got = reads(&whatsapp);
        if got.len() == MESSAGES {
            break;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!remaining.is_zero(), "{} of {MESSAGES} read", got.len());
        // Wakes on the server's next record.
        let n = whatsapp.recorder().inspect(|s| s.records().len());
        let _ = whatsapp
            .recorder()
            .wait_until(remaining, |s| s.records().len() > n)
            .await;
    }
    let got = reads(&whatsapp);
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        accepted,
        "every acknowledged message, and only those"
    );
    // Read exactly once: every text arrived under one id only (a resend under a new id would
    // be a second read the recipient cannot tell), and a second copy of an id is at most the
    // one that was in flight at the kill (which the recipient drops as a duplicate).
    let texts: HashSet<&str> = got.values().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(texts.len(), MESSAGES, "each text under one id");
    let resends: usize = got.values().map(|(_, copies, _)| copies - 1).sum();
    assert!(
        resends <= 1,
        "at most the one in flight is sent again: {resends}"
    );

    let outbox = daemon.json(&["outbox", "shop1"]).await;
    assert_eq!(outbox["messages"], json!([]), "{outbox}");
    for n in [0, MESSAGES / 2, MESSAGES - 1] {
        let status = daemon.json(&["message", "shop1", &format!("k{n}")]).await;
        assert!(
            ["sent", "delivered", "read"].contains(&status["status"].as_str().unwrap()),
            "{status}"
        );
    }
}
