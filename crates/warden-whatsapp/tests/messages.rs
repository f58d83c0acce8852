//! Sending text through the real supervisor and the real `WaLink`: the fake server answers the
//! client's device lists and pre-key fetches, its fake contacts decrypt what arrives, and the
//! recorder says what each device read. Every wait is on an event.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use warden_core::{MessageStatus, SendRequest, SessionEvent, Supervisor};
use warden_fakewa::{
    FakeServer, MessageKind, MessageSpec, Plaintext, Plan, Recorder, RefuseSpec, Scenario, Script,
    ServerConfig, ServerEvent, Step,
};

/// One device's copy of a sent message, as the fake server recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copy {
    device: String,
    enc_type: String,
    plaintext: Result<Plaintext, String>,
}

/// Waits until `devices` copies of message `id` are recorded, and returns them by device.
async fn copies(recorder: &Recorder, id: &str, devices: usize) -> BTreeMap<String, Copy> {
    let of_id = |s: &warden_fakewa::Snapshot| {
        s.records()
            .iter()
            .filter_map(|r| match &r.event {
                ServerEvent::ClientMessage {
                    id: got,
                    device,
                    enc_type,
                    plaintext,
                    ..
                } if got == id => Some((
                    device.clone(),
                    Copy {
                        device: device.clone(),
                        enc_type: enc_type.clone(),
                        plaintext: plaintext.clone(),
                    },
                )),
                _ => None,
            })
            .collect::<BTreeMap<_, _>>()
    };
    recorder
        .wait_until(LIMIT, |s| of_id(s).len() >= devices)
        .await
        .unwrap_or_else(|_| panic!("{devices} copies of {id}: {:?}", recorder.inspect(of_id)));
    recorder.inspect(of_id)
}

fn text(copy: &Copy) -> Option<&str> {
    copy.plaintext.as_ref().ok()?.text.as_deref()
}

async fn server_with_contacts(phone: &str, login: Plan, contacts: &[(&str, &[u16])]) -> FakeServer {
    FakeServer::start(ServerConfig {
        online_timeout: Duration::from_secs(5),
        contact_devices: contacts
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect(),
        ..ServerConfig::with_script(
            Script::default()
                .with_registration(pairing(phone, Duration::from_millis(50)))
                .with_account(phone, login),
        )
    })
    .await
    .expect("fake server")
}

/// Waits for the incoming message `id` on `supervisor`'s events; returns its text.
async fn incoming(
    events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    id: &str,
) -> Option<String> {
    tokio::time::timeout(LIMIT, async {
        loop {
            if let SessionEvent::Message { message, .. } = events.recv().await.expect("events")
                && message.id == id
            {
                return message.text;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("message {id} arrives"))
}

/// How far towards the recipient a status is (a failure or cancel is an end too).
fn progress(status: MessageStatus) -> u8 {
    match status {
        MessageStatus::Queued => 0,
        MessageStatus::Sent => 1,
        MessageStatus::Delivered => 2,
        MessageStatus::Read => 3,
        MessageStatus::Failed | MessageStatus::Cancelled => 4,
    }
}

/// The statuses message `id` goes through, until `last` or one past it.
async fn statuses(
    events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    id: &str,
    last: MessageStatus,
) -> Vec<MessageStatus> {
    let mut seen = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while seen.last().is_none_or(|s| progress(*s) < progress(last)) {
            if let SessionEvent::MessageStatus(m) = events.recv().await.expect("events")
                && m.id == id
            {
                seen.push(m.status);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} reaches {last}: {seen:?}"));
    seen
}

fn subscribe(supervisor: &Supervisor) -> tokio::sync::broadcast::Receiver<SessionEvent> {
    supervisor.subscribe()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_reaches_every_device_of_the_contact_and_the_own_phone() {
    const PHONE: &str = "15550000301";
    const CONTACT: &str = "15557654321";
    let server = server_with_contacts(
        PHONE,
        Plan::always(Scenario::login()),
        &[(CONTACT, &[0, 3])],
    )
    .await;
    let mut h = Harness::new(server, |_| {}).await;
    h.paired("s", PHONE).await;

    let mut events = subscribe(&h.supervisor);
    let id = h
        .supervisor
        .send_text("s", "+1 555 765 4321", "hello there")
        .await
        .expect("sent");
    // queued → sent (the server's ack) → delivered (the contact's phone's receipt). The
    // receipt travels apart from the ack and may overtake it: then `sent` is skipped.
    let seen = statuses(&mut events, &id, MessageStatus::Delivered).await;
    assert!(
        seen == [
            MessageStatus::Queued,
            MessageStatus::Sent,
            MessageStatus::Delivered
        ] || seen == [MessageStatus::Queued, MessageStatus::Delivered],
        "{seen:?}"
    );
    let got = copies(h.recorder(), &id, 3).await;
    let contact_phone = format!("{CONTACT}@s.whatsapp.net");
    let contact_laptop = format!("{CONTACT}:3@s.whatsapp.net");
    let own_phone = format!("{PHONE}@s.whatsapp.net");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        {
            let mut want = vec![
                contact_phone.clone(),
                contact_laptop.clone(),
                own_phone.clone(),
            ];
            want.sort();
            want
        },
        "one copy per device of the contact, one for the account's phone, none for itself"
    );
    for device in [&contact_phone, &contact_laptop] {
        let copy = &got[device];
        assert_eq!(text(copy), Some("hello there"), "{copy:?}");
        assert_eq!(
            copy.enc_type, "pkmsg",
            "a fresh session starts with a pre-key message"
        );
        assert!(!copy.plaintext.as_ref().unwrap().device_sent);
    }
    let own = &got[&own_phone];
    assert_eq!(text(own), Some("hello there"), "{own:?}");
    assert!(
        own.plaintext.as_ref().unwrap().device_sent,
        "the own phone gets the copy for the sender's devices"
    );

    // The server acknowledged it, and the contact's phone sent a delivery receipt, which the
    // client acknowledged in turn.
    h.recorder()
        .wait_for(LIMIT, |r| {
            matches!(&r.event, ServerEvent::ClientAck { class, id: acked } if class == "receipt" && *acked == id)
        })
        .await
        .expect("the delivery receipt is acknowledged");

    // A second message goes to the same devices, on the sessions the first one started.
    let second = h
        .supervisor
        .send_text("s", &contact_phone, "and again")
        .await
        .expect("sent");
    assert_ne!(second, id);
    let got = copies(h.recorder(), &second, 3).await;
    for copy in got.values() {
        assert_eq!(text(copy), Some("and again"), "{copy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_both_ways_on_one_session() {
    const PHONE: &str = "15550000302";
    const CONTACT: &str = "15557650002@s.whatsapp.net";
    // The contact answers the client's first message, then the client writes again.
    let login = Plan::always(Scenario::new([
        Step::Login,
        Step::AwaitSent(1),
        Step::Message(MessageSpec::text(CONTACT, "reply-1", "got it")),
    ]));
    let server = server_with_contacts(PHONE, login, &[]).await;
    let mut h = Harness::new(server, |_| {}).await;
    h.paired("s", PHONE).await;
    let mut events = subscribe(&h.supervisor);

    let first = h
        .supervisor
        .send_text("s", CONTACT, "first")
        .await
        .expect("sent");
    let got = copies(h.recorder(), &first, 2).await;
    assert_eq!(got[CONTACT].enc_type, "pkmsg");
    assert_eq!(text(&got[CONTACT]), Some("first"));

    // The contact's reply goes on the session the client started: a plain `msg`.
    assert_eq!(
        incoming(&mut events, "reply-1").await.as_deref(),
        Some("got it")
    );
    assert!(
        h.recorder()
            .inspect(|s| s.records().iter().any(|r| matches!(
                &r.event,
                ServerEvent::MessageSent { id, .. } if id == "reply-1"
            )))
    );

    // Now that the contact has answered, the client's next message is a `msg` too.
    let second = h
        .supervisor
        .send_text("s", CONTACT, "second")
        .await
        .expect("sent");
    let got = copies(h.recorder(), &second, 1).await;
    assert_eq!(got[CONTACT].enc_type, "msg", "{got:?}");
    assert_eq!(text(&got[CONTACT]), Some("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_on_the_session_the_contact_started() {
    const PHONE: &str = "15550000303";
    const CONTACT: &str = "15557650003@s.whatsapp.net";
    let login = Plan::always(Scenario::new([
        Step::Login,
        Step::Message(MessageSpec::text(CONTACT, "hello-1", "are you there?")),
    ]));
    let server = server_with_contacts(PHONE, login, &[]).await;
    let mut h = Harness::new(server, |_| {}).await;
    let mut events = subscribe(&h.supervisor);
    h.paired("s", PHONE).await;
    assert_eq!(
        incoming(&mut events, "hello-1").await.as_deref(),
        Some("are you there?")
    );

    let id = h
        .supervisor
        .send_text("s", CONTACT, "yes")
        .await
        .expect("sent");
    let got = copies(h.recorder(), &id, 2).await;
    assert_eq!(
        got[CONTACT].enc_type, "msg",
        "the contact's session is reused: {got:?}"
    );
    assert_eq!(text(&got[CONTACT]), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_463_fails_the_message_and_pauses_new_chats_only() {
    const PHONE: &str = "15550000304";
    const KNOWN: &str = "15557650004@s.whatsapp.net";
    const NEW: &str = "15557650005@s.whatsapp.net";
    // The first message goes through; the server refuses the next one with 463.
    let login = Plan::always(Scenario::new([
        Step::Login,
        Step::AwaitSent(1),
        Step::RefuseNext(RefuseSpec::timelock(Some(Duration::from_secs(3600)))),
    ]));
    let server = server_with_contacts(PHONE, login, &[]).await;
    let mut h = Harness::new(server, |_| {}).await;
    h.paired("s", PHONE).await;
    let mut events = subscribe(&h.supervisor);

    let first = h.supervisor.send_text("s", KNOWN, "hello").await.unwrap();
    statuses(&mut events, &first, MessageStatus::Sent).await;
    let refused = h
        .supervisor
        .send_text("s", NEW, "hi, new here")
        .await
        .unwrap();
    statuses(&mut events, &refused, MessageStatus::Failed).await;
    let failed = h.supervisor.message_status("s", &refused).await.unwrap();
    assert_eq!(failed.code, Some(463), "{failed:?}");
    assert!(
        failed.reason.as_deref().unwrap().contains("463"),
        "{failed:?}"
    );
    let until = h
        .supervisor
        .new_chats_paused_until("s")
        .expect("new chats are paused");
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(3000),
        "the server's expiry: {left:?}"
    );
    assert!(h.recorder().inspect(|s| s.any(|r| matches!(
        &r.event,
        ServerEvent::MessageRefused { id, code: 463, .. } if *id == refused
    ))));

    // While paused, a message to a new chat waits; one to a chat the account has written to
    // goes, although it was queued after.
    let waiting = h.supervisor.send_text("s", NEW, "again").await.unwrap();
    let keyed = h
        .supervisor
        .send(
            "s",
            SendRequest {
                to: KNOWN.into(),
                text: "to a known chat".into(),
                key: Some("known-2".into()),
            },
        )
        .await
        .unwrap();
    statuses(&mut events, &keyed.id, MessageStatus::Sent).await;
    let still = h.supervisor.message_status("s", &waiting).await.unwrap();
    assert_eq!(still.status, MessageStatus::Queued, "{still:?}");
    let outbox = h.supervisor.outbox("s", 10).await.unwrap();
    assert_eq!(
        outbox
            .iter()
            .map(|m| (m.id.as_str(), m.status))
            .collect::<Vec<_>>(),
        [
            (refused.as_str(), MessageStatus::Failed),
            (waiting.as_str(), MessageStatus::Queued)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_text_messages_arrive_with_their_kind_and_caption() {
    const PHONE: &str = "15550000305";
    const CONTACT: &str = "15557650006@s.whatsapp.net";
    let login = Plan::always(Scenario::new([
        Step::Login,
        Step::Message(MessageSpec::of_kind(
            MessageKind::Image,
            CONTACT,
            "img-1",
            "a cat",
        )),
        Step::Message(MessageSpec::of_kind(
            MessageKind::Document,
            CONTACT,
            "doc-1",
            "invoice",
        )),
        Step::Message(MessageSpec::of_kind(
            MessageKind::Reaction,
            CONTACT,
            "re-1",
            "👍",
        )),
    ]));
    let server = server_with_contacts(PHONE, login, &[]).await;
    let mut h = Harness::new(server, |_| {}).await;
    let mut events = subscribe(&h.supervisor);
    h.paired("s", PHONE).await;
    let mut got = BTreeMap::new();
    tokio::time::timeout(LIMIT, async {
        while got.len() < 3 {
            if let SessionEvent::Message { message, .. } = events.recv().await.expect("events") {
                got.insert(
                    message.id.clone(),
                    (message.kind.clone(), message.text.clone()),
                );
            }
        }
    })
    .await
    .expect("three messages arrive");
    let want = |kind: &str, text: &str| (kind.to_owned(), Some(text.to_owned()));
    assert_eq!(got["img-1"], want("image", "a cat"));
    assert_eq!(got["doc-1"], want("document", "invoice"));
    assert_eq!(got["re-1"], want("reaction", "👍"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_keys_a_client_uploads_are_kept_and_used_by_a_contact() {
    const PHONE: &str = "15550000306";
    const CONTACT: &str = "15557650007@s.whatsapp.net";
    let login = Plan::always(Scenario::new([
        Step::Login,
        Step::AwaitUpload,
        Step::Message(MessageSpec::text(
            CONTACT,
            "pk-1",
            "with a one-time pre-key",
        )),
    ]));
    let server = FakeServer::start(ServerConfig {
        online_timeout: Duration::from_secs(5),
        // Fewer than the client wants: it uploads a batch after logging in.
        prekey_count: 0,
        ..ServerConfig::with_script(
            Script::default()
                .with_registration(pairing(PHONE, Duration::from_millis(50)))
                .with_account(PHONE, login),
        )
    })
    .await
    .expect("fake server");
    let mut h = Harness::new(server, |_| {}).await;
    let mut events = subscribe(&h.supervisor);
    h.paired("s", PHONE).await;
    assert_eq!(
        incoming(&mut events, "pk-1").await.as_deref(),
        Some("with a one-time pre-key")
    );
    let uploaded = h
        .recorder()
        .wait_for(LIMIT, |r| {
            matches!(r.event, ServerEvent::PreKeysUploaded { kept: true, .. })
        })
        .await
        .expect("an upload");
    let ServerEvent::PreKeysUploaded { count, .. } = uploaded.event else {
        unreachable!()
    };
    assert!(count > 0);
    let left = h
        .server
        .registry()
        .devices()
        .into_iter()
        .find(|d| d.phone == PHONE)
        .expect("paired")
        .pre_keys
        .len();
    assert_eq!(left, count - 1, "the contact's session took one of them");
}
