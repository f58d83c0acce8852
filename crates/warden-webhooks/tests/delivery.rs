//! Webhook delivery against real HTTP receivers on loopback: retries with one id, no retry on
//! 410, timeouts, a receiver down across a restart, the SSRF guard, per-session order, dead
//! letters and replay.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use warden_store::{Db, JournalChange, NewJournalEntry};
use warden_webhooks::receiver::{Answer, Receiver, status, verify};
use warden_webhooks::{WebhookConfig, Webhooks};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A database in a temp folder and the journal head the supervisor would announce.
struct Journal {
    db: Db,
    head: watch::Sender<i64>,
    _dir: tempfile::TempDir,
}

impl Journal {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        Self {
            db,
            head: watch::channel(0).0,
            _dir: dir,
        }
    }

    /// Appends one `session.status` entry per token in `tokens`, in order, and announces them.
    async fn append(&self, tokens: &[&str]) {
        let changes = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                JournalChange::Append(NewJournalEntry {
                    token: (*token).into(),
                    kind: "session.status".into(),
                    key: String::new(),
                    data: format!(r#"{{"from":"stopped","to":"queued","n":{i}}}"#),
                    at: 1_700_000_000_000,
                    keep: 10_000,
                })
            })
            .collect();
        let head = self.db.write_journal(changes).await.unwrap().unwrap();
        self.head.send_replace(head);
    }

    async fn start(&self, configs: &[WebhookConfig]) -> Webhooks {
        Webhooks::start(configs, self.db.clone(), self.head.subscribe())
            .await
            .unwrap()
    }
}

fn hook(receiver: &Receiver) -> WebhookConfig {
    WebhookConfig {
        secret: Some(SECRET.into()),
        allow_private: true,
        name: Some("r".into()),
        timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(40),
        max_attempts: 8,
        ..WebhookConfig::new(receiver.url("/hooks/whatsapp"))
    }
}

#[tokio::test]
async fn five_500s_then_a_200_deliver_once_with_one_id_and_a_valid_signature() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    receiver.answer([status(500); 5]);
    let webhooks = journal.start(&[hook(&receiver)]).await;
    journal.append(&["shop1"]).await;
    let got = receiver.until_delivered(1).await;
    assert_eq!(got.len(), 6, "five failures, then the delivery");
    let ids: HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one id across retries: {ids:?}");
    for r in &got {
        assert!(verify(SECRET, r), "signature of {r:?}");
        assert_eq!(r.body["type"], "session.status");
        assert_eq!(r.body["data"]["token"], "shop1");
        assert!(!String::from_utf8_lossy(&r.raw).contains("whsec_"));
    }
    // A tampered body fails the same check.
    let mut tampered = got[5].clone();
    tampered.raw.push(b' ');
    assert!(!verify(SECRET, &tampered));
    webhooks
        .done("r")
        .unwrap()
        .wait_for(|n| *n == 1)
        .await
        .unwrap();
    let list = webhooks.list();
    assert_eq!(
        (list[0].delivered, list[0].retried, list[0].dead),
        (1, 5, 0)
    );
    assert!(webhooks.dead_letters(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_410_is_not_retried_and_goes_to_the_dead_letters_from_which_it_is_redelivered() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    receiver.answer([status(410)]);
    let webhooks = journal.start(&[hook(&receiver)]).await;
    journal.append(&["shop1", "shop1"]).await;
    let got = receiver.until_delivered(1).await;
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [410, 200]);
    assert_eq!(got[1].body["data"]["n"], 1, "the next event went on");
    let dead = webhooks.dead_letters(Some("r"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("410"), "{}", dead[0].reason);
    assert_eq!(dead[0].attempts, 1);

    let report = webhooks.redeliver("r", None).await.unwrap();
    assert_eq!(report.delivered, vec![dead[0].seq]);
    let again = receiver.next().await;
    assert_eq!(again.id, got[0].id, "the same id as the first attempt");
    assert!(verify(SECRET, &again));
    assert!(webhooks.dead_letters(None, 10).await.unwrap().is_empty());
    assert!(webhooks.redeliver("nobody", None).await.is_err());
}

#[tokio::test]
async fn a_receiver_that_times_out_is_retried() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    receiver.answer([Answer {
        status: 200,
        delay: Duration::from_secs(5),
    }]);
    let mut config = hook(&receiver);
    config.timeout = Duration::from_millis(300);
    let webhooks = journal.start(&[config]).await;
    journal.append(&["shop1"]).await;
    let first = receiver.next().await; // answered late: the sender had given up
    let second = receiver.next().await;
    assert_eq!(first.id, second.id);
    assert_eq!(webhooks.list()[0].retried, 1);
}

#[tokio::test]
async fn a_receiver_down_across_a_restart_gets_everything_and_the_cursor_resumes() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    let config = hook(&receiver);
    let webhooks = journal.start(std::slice::from_ref(&config)).await;
    journal.append(&["a", "b"]).await;
    let before = receiver.until_delivered(2).await;
    webhooks
        .done("r")
        .unwrap()
        .wait_for(|n| *n == 2)
        .await
        .unwrap();
    receiver.stop();
    journal.append(&["a", "b", "c"]).await;
    // The daemon stops while the receiver is down, and more happens before it is back.
    drop(webhooks);
    journal.append(&["c"]).await;
    receiver.restart().await;
    let _webhooks = journal.start(std::slice::from_ref(&config)).await;
    let after = receiver.until_delivered(4).await;
    let ids_before: HashSet<String> = before.iter().map(|r| r.id.clone()).collect();
    let ids_after: HashSet<String> = after.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids_after.len(), 4, "every event written while down arrives");
    assert!(
        ids_before.is_disjoint(&ids_after),
        "nothing delivered before the restart is sent again"
    );
    let c: Vec<i64> = after
        .iter()
        .filter(|r| r.body["data"]["token"] == "c")
        .map(|r| r.body["data"]["seq"].as_i64().unwrap())
        .collect();
    assert!(c.windows(2).all(|w| w[0] < w[1]), "in order per session");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    let mut config = hook(&receiver);
    config.allow_private = false;
    let webhooks = journal.start(&[config]).await;
    journal.append(&["shop1"]).await;
    let mut done = webhooks.done("r").unwrap();
    done.wait_for(|n| *n == 1).await.unwrap();
    let dead = webhooks.dead_letters(None, 10).await.unwrap();
    assert!(
        dead[0].reason.contains("allow_private"),
        "{}",
        dead[0].reason
    );
    assert!(receiver.drain().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn a_slow_session_holds_back_only_itself_and_each_session_stays_in_order() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    receiver.answer_for(
        "slow",
        Answer {
            status: 200,
            delay: Duration::from_millis(1500),
        },
    );
    let _webhooks = journal.start(&[hook(&receiver)]).await;
    journal
        .append(&["slow", "slow", "fast", "fast", "fast"])
        .await;
    let got = receiver.until_delivered(5).await;
    let order: Vec<(String, i64)> = got
        .iter()
        .map(|r| {
            (
                r.body["data"]["token"].as_str().unwrap().to_owned(),
                r.body["data"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let of = |token: &str| -> Vec<i64> {
        order
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(of("fast"), [2, 3, 4], "in order: {order:?}");
    assert_eq!(of("slow"), [0, 1], "in order: {order:?}");
    assert_eq!(
        order.last(),
        Some(&("slow".to_string(), 1)),
        "the fast session did not wait for the slow one: {order:?}"
    );
}

#[tokio::test]
async fn a_replay_sends_again_from_an_entry_with_the_same_ids() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    let webhooks = journal.start(&[hook(&receiver)]).await;
    journal.append(&["a", "a", "a"]).await;
    let first = receiver.until_delivered(3).await;
    let from = first[1].body["data"]["seq"].as_i64().unwrap();
    webhooks.replay("r", from).await.unwrap();
    let again = receiver.until_delivered(2).await;
    assert_eq!(
        again.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        first[1..].iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    let test = webhooks.test("r").await.unwrap();
    assert_eq!(test.text(), "HTTP 200");
    assert_eq!(receiver.next().await.body["type"], "webhook.test");
}

#[tokio::test]
async fn a_session_webhook_gets_only_its_session_survives_a_restart_and_ends_with_it() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    let webhooks = journal.start(&[]).await;
    let mut config = hook(&receiver);
    config.name = Some("crm".into());
    let info = webhooks.set_for_session("mine", config).await.unwrap();
    assert_eq!(info.name, "mine:crm");
    assert_eq!(info.token.as_deref(), Some("mine"));
    journal.append(&["other", "mine", "other"]).await;
    let got = receiver.until_delivered(1).await;
    assert_eq!(got[0].body["data"]["token"], "mine");

    // Kept in the database: a restart starts it again, where it got to.
    webhooks
        .done("mine:crm")
        .unwrap()
        .wait_for(|n| *n == 1)
        .await
        .unwrap();
    drop(webhooks);
    let webhooks = journal.start(&[]).await;
    assert_eq!(webhooks.list().len(), 1);
    journal.append(&["mine"]).await;
    let again = receiver.until_delivered(1).await;
    assert_ne!(again[0].id, got[0].id, "the first event is not sent again");

    // The session is deleted: its deletion is sent, then the webhook is gone.
    let deleted = NewJournalEntry {
        token: "mine".into(),
        kind: "session.status".into(),
        key: String::new(),
        data: r#"{"from":null,"to":"deleted"}"#.into(),
        at: 1_700_000_000_000,
        keep: 100,
    };
    let head = journal
        .db
        .commit(
            vec![warden_store::RecordChange::Remove {
                token: "mine".into(),
            }],
            vec![JournalChange::Append(deleted)],
        )
        .await
        .unwrap()
        .unwrap();
    journal.head.send_replace(head);
    let last = receiver.until_delivered(1).await;
    assert_eq!(last[0].body["data"]["to"], "deleted");
    assert!(receiver.drain().is_empty());
    // It ends by itself, and is gone from the database too.
    let mut left = webhooks.list();
    while !left.is_empty() {
        tokio::task::yield_now().await;
        left = webhooks.list();
    }
    drop(webhooks);
    assert!(journal.start(&[]).await.list().is_empty());
    assert!(matches!(
        journal
            .start(&[])
            .await
            .remove_for_session("mine:crm")
            .await,
        Err(warden_webhooks::WebhookError::Unknown(_))
    ));
}

#[tokio::test]
async fn connections_are_kept_for_the_next_event() {
    let journal = Journal::new();
    let mut receiver = Receiver::start().await;
    let webhooks = journal.start(&[hook(&receiver)]).await;
    journal.append(&["a"; 20]).await;
    receiver.until_delivered(20).await;
    webhooks
        .done("r")
        .unwrap()
        .wait_for(|n| *n == 20)
        .await
        .unwrap();
    assert_eq!(
        receiver.connections(),
        1,
        "one session's events, one connection"
    );
    // A receiver that closed it: the next event goes on a new one.
    receiver.restart().await;
    journal.append(&["a"]).await;
    receiver.until_delivered(1).await;
    assert_eq!(receiver.connections(), 2);
}
