//! The scenario player: runs a connection's steps in order, asking the socket
//! owner (in `conn`) to send stanzas, close or drop, and learning from it what
//! the client answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wa_rs_binary::node::Node;

use crate::client::{ClientInfo, ClientKind};
use crate::conn::Shared;
use crate::nodes::{self, PairTarget, attr};
use crate::record::{ConnId, Recorder, ServerEvent};
use crate::registry::{PairedDevice, lid_for};
use crate::scenario::{
    FailureSpec, MessageSpec, PairSpec, QrSpec, Scenario, Step, StreamErrorSpec,
};
use crate::scenario::{MessageKind, RefuseSpec};
use crate::signal::{DeviceAddress, Encrypted};

/// How long the pair step waits for the client's signature.
const PAIR_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the player asks the socket owner to do.
pub(crate) enum Command {
    /// Send this stanza.
    Send(Node),
    /// Close the WebSocket cleanly.
    Close,
    /// Drop the TCP connection.
    Drop,
}

/// Flags the player sets and the socket owner reads.
#[derive(Default)]
pub(crate) struct Flags {
    /// Leave keepalive pings unanswered.
    pub ignore_pings: AtomicBool,
    /// Leave every IQ unanswered.
    pub hold_iqs: AtomicBool,
    /// Ignore everything the client sends.
    pub stalled: AtomicBool,
    /// `<success>` was sent: deliver the offline backlog when the client goes active.
    pub logged_in: AtomicBool,
    /// How the next messages the client sends are refused, in order.
    pub refusals: std::sync::Mutex<std::collections::VecDeque<RefuseSpec>>,
}

/// Plays a scenario's steps; talks to the socket owner through channels.
pub(crate) struct Player {
    shared: Arc<Shared>,
    conn: ConnId,
    client: ClientInfo,
    flags: Arc<Flags>,
    cmd: mpsc::UnboundedSender<Command>,
    online: watch::Receiver<bool>,
    replies: mpsc::UnboundedReceiver<Node>,
    qr: Option<AbortOnDrop>,
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long an `await_sent` or `await_upload` step waits at most; in practice until the
/// connection ends.
const AWAIT_SENT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Whether the player goes on after a step.
enum Flow {
    Next,
    Stop,
}

/// The socket owner's ends of the channels to a [`Player`].
pub(crate) struct PlayerLink {
    /// Commands from the player, in order.
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// Where to forward the client's IQ results and errors.
    pub replies: mpsc::UnboundedSender<Node>,
    /// Set once the client is online after a login.
    pub online: watch::Sender<bool>,
    /// Flags shared with the player.
    pub flags: Arc<Flags>,
}

impl Player {
    /// A player for one connection, and the socket owner's ends of its channels.
    pub(crate) fn new(shared: Arc<Shared>, conn: ConnId, client: ClientInfo) -> (Self, PlayerLink) {
        let (cmd, commands) = mpsc::unbounded_channel();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let (online_tx, online) = watch::channel(false);
        let flags = Arc::new(Flags::default());
        let player = Self {
            shared,
            conn,
            client,
            flags: flags.clone(),
            cmd,
            online,
            replies,
            qr: None,
        };
        (
            player,
            PlayerLink {
                commands,
                replies: replies_tx,
                online: online_tx,
                flags,
            },
        )
    }

    /// Plays the steps in order, then lets a running QR sequence finish.
    pub(crate) async fn play(mut self, scenario: Scenario) {
        for (index, step) in scenario.0.into_iter().enumerate() {
            self.event(ServerEvent::Step {
                index,
                step: step.to_string(),
            });
            if let Flow::Stop = self.step(step).await {
                return;
            }
        }
        // Steps are over: let a running QR sequence finish.
        if let Some(AbortOnDrop(handle)) = self.qr.as_mut() {
            let _ = handle.await;
        }
    }

    fn event(&self, event: ServerEvent) {
        self.shared.recorder.event(self.conn, event);
    }

    fn send(&self, node: Node) {
        let _ = self.cmd.send(Command::Send(node));
    }

    async fn step(&mut self, step: Step) -> Flow {
        match step {
            Step::Qr(spec) => {
                self.qr = Some(AbortOnDrop(tokio::spawn(qr_sequence(
                    spec,
                    self.cmd.clone(),
                    self.shared.recorder.clone(),
                    self.conn,
                ))));
                Flow::Next
            }
            Step::Pair(spec) => self.pair(spec).await,
            Step::Login => self.login().await,
            Step::Wait(d) => {
                tokio::time::sleep(d).await;
                Flow::Next
            }
            Step::Drop => {
                self.qr = None;
                let _ = self.cmd.send(Command::Drop);
                Flow::Stop
            }
            Step::Close => {
                self.qr = None;
                let _ = self.cmd.send(Command::Close);
                Flow::Stop
            }
            Step::Stall => {
                self.qr = None;
                self.flags.stalled.store(true, Ordering::Relaxed);
                Flow::Stop
            }
            Step::IgnorePings => {
                self.flags.ignore_pings.store(true, Ordering::Relaxed);
                Flow::Next
            }
            Step::HoldIqs => {
                self.flags.hold_iqs.store(true, Ordering::Relaxed);
                Flow::Next
            }
            Step::Failure(spec) => {
                self.qr = None;
                self.failure(&spec);
                let _ = self.cmd.send(Command::Close);
                Flow::Stop
            }
            Step::StreamError(spec) => {
                let (node, label) = match &spec {
                    StreamErrorSpec::Code(c) => (nodes::stream_error_code(*c), c.to_string()),
                    StreamErrorSpec::Conflict(t) => {
                        (nodes::stream_error_conflict(t), format!("conflict {t}"))
                    }
                };
                self.send(node);
                self.event(ServerEvent::StreamErrorSent(label));
                if spec != StreamErrorSpec::Code(503) {
                    self.shared.recorder.retire(self.conn);
                }
                Flow::Next
            }
            Step::Message(spec) => {
                let encrypted = self.encrypt_for_client(&spec).await;
                let node = match encrypted {
                    Some(e) => {
                        nodes::encrypted_message(&spec.from, &spec.id, e.enc_type, e.payload)
                    }
                    None => nodes::message(&spec.from, &spec.id),
                };
                self.send(node);
                self.event(ServerEvent::MessageSent {
                    id: spec.id,
                    from: spec.from,
                });
                Flow::Next
            }
            Step::RefuseNext(spec) => {
                self.flags
                    .refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(spec);
                Flow::Next
            }
            Step::AwaitUpload => {
                let conn = self.conn;
                let _ = self
                    .shared
                    .recorder
                    .wait_for(AWAIT_SENT_LIMIT, |r| {
                        r.conn == conn && matches!(r.event, ServerEvent::PreKeysUploaded { .. })
                    })
                    .await;
                Flow::Next
            }
            Step::AwaitSent(n) => {
                let conn = self.conn;
                let _ = self
                    .shared
                    .recorder
                    .wait_until(AWAIT_SENT_LIMIT, |s| s.messages_sent_on(conn) >= n)
                    .await;
                Flow::Next
            }
            Step::StreamEnd => {
                self.send(nodes::stream_end());
                self.event(ServerEvent::StreamEndSent);
                self.shared.recorder.retire(self.conn);
                Flow::Next
            }
        }
    }

    /// The message's text encrypted for this connection's client, when it has a text and the
    /// client is a device this server paired (whose Signal keys it keeps).
    async fn encrypt_for_client(&self, spec: &MessageSpec) -> Option<Encrypted> {
        let text = spec.text.as_deref()?;
        let ClientKind::Login { phone, device } = &self.client.kind else {
            return None;
        };
        let Some(keys) = self.shared.registry.signal_keys(phone, *device) else {
            tracing::warn!(
                conn = self.conn,
                "no Signal keys for {phone}:{device} (not paired by this server): sending the message opaque"
            );
            return None;
        };
        let Some(contact) = DeviceAddress::parse(&spec.from) else {
            tracing::warn!(
                conn = self.conn,
                "{:?} is not a JID: sending the message opaque",
                spec.from
            );
            return None;
        };
        let client = DeviceAddress::new(phone.clone(), *device);
        let message = content(spec.kind, text);
        let registry = &self.shared.registry;
        let pre_key = || registry.take_pre_key(phone, *device);
        match self
            .shared
            .contacts
            .encrypt(&contact, &client, &keys, pre_key, &message)
            .await
        {
            Ok(encrypted) => Some(encrypted),
            Err(e) => {
                tracing::warn!(conn = self.conn, "{e}: sending the message opaque");
                None
            }
        }
    }

    fn failure(&self, spec: &FailureSpec) {
        self.send(nodes::failure(
            spec.reason,
            spec.code,
            spec.expire,
            spec.message.as_deref(),
        ));
        self.event(ServerEvent::FailureSent {
            reason: spec.reason,
        });
        self.shared.recorder.retire(self.conn);
    }

    async fn pair(&mut self, spec: PairSpec) -> Flow {
        self.qr = None;
        let ClientKind::Registration { identity_key } = self.client.kind else {
            self.event(ServerEvent::StepSkipped(
                "pair on a login: the client is already paired".into(),
            ));
            return Flow::Next;
        };
        let registry = &self.shared.registry;
        let (phone, device) = registry.allocate(spec.phone.as_deref(), spec.device);
        let lid = lid_for(&phone);
        let target = PairTarget {
            phone: &phone,
            device,
            lid: &lid,
            platform: &spec.platform,
            business_name: &spec.business_name,
        };
        let id = format!("pair-{}", self.conn);
        let node = match nodes::pair_success(&id, &identity_key, &target) {
            Ok(n) => n,
            Err(e) => {
                self.event(ServerEvent::PairFailed(e.to_string()));
                return Flow::Stop;
            }
        };
        let jid = format!("{phone}:{device}@s.whatsapp.net");
        self.send(node);
        self.event(ServerEvent::PairSent { jid: jid.clone() });

        let reply = tokio::time::timeout(PAIR_REPLY_TIMEOUT, async {
            while let Some(r) = self.replies.recv().await {
                if attr(&r, "id").as_deref() == Some(id.as_str()) {
                    return Some(r);
                }
            }
            None
        })
        .await;
        match reply {
            Ok(Some(r))
                if attr(&r, "type").as_deref() == Some("result") && nodes::is_pair_sign(&r) => {}
            Ok(Some(r)) => {
                self.event(ServerEvent::PairFailed(format!(
                    "client refused: {}",
                    nodes::summary(&r)
                )));
                return Flow::Stop;
            }
            Ok(None) | Err(_) => {
                self.event(ServerEvent::PairFailed("no answer from the client".into()));
                return Flow::Stop;
            }
        }
        registry.insert(PairedDevice {
            phone: phone.clone(),
            device,
            lid,
            noise_key: self.client.noise_key,
            identity_key,
            signal: self.client.signal.clone(),
            pre_keys: Vec::new(),
            paired_at: SystemTime::now(),
        });
        self.shared.recorder.set_account(self.conn, phone);
        self.event(ServerEvent::Paired { jid });
        if spec.restart {
            tokio::time::sleep(spec.restart_after).await;
            self.send(nodes::stream_error_code(515));
            self.event(ServerEvent::StreamErrorSent("515".into()));
            self.shared.recorder.retire(self.conn);
        }
        Flow::Next
    }

    async fn login(&mut self) -> Flow {
        let ClientKind::Login { phone, device } = &self.client.kind else {
            self.event(ServerEvent::StepSkipped(
                "login on a registration: no credentials to accept".into(),
            ));
            return Flow::Next;
        };
        let options = &self.shared.options;
        if !options.accept_unknown_devices
            && !self
                .shared
                .registry
                .is_known(phone, *device, &self.client.noise_key)
        {
            self.event(ServerEvent::UnknownDevice);
            self.failure(&FailureSpec::reason(401));
            let _ = self.cmd.send(Command::Close);
            return Flow::Stop;
        }
        if options.replace_older_login {
            self.replace_older(phone, *device);
        }
        self.flags.logged_in.store(true, Ordering::Relaxed);
        self.send(nodes::success(&format!("{}:{device}@lid", lid_for(phone))));
        self.event(ServerEvent::LoginAccepted);
        let timeout = options.online_timeout;
        let _ = tokio::time::timeout(timeout, self.online.wait_for(|o| *o)).await;
        Flow::Next
    }
}

impl Player {
    /// `replace_older_login`: this connection becomes the login in force of `phone:device`;
    /// an older one still live is sent `<stream:error><conflict type="replaced"/>`, stops
    /// counting as live, and is closed (as WhatsApp ends the older session of a device that
    /// logs in again).
    fn replace_older(&self, phone: &str, device: u16) {
        let older = self
            .shared
            .logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((phone.to_owned(), device), (self.conn, self.cmd.clone()));
        let Some((old, commands)) = older.filter(|(old, _)| *old != self.conn) else {
            return;
        };
        let rec = &self.shared.recorder;
        let live = rec.inspect(|s| {
            s.connection(old)
                .is_some_and(|c| c.closed.is_none() && c.retired.is_none())
        });
        if !live {
            return;
        }
        let _ = commands.send(Command::Send(nodes::stream_error_conflict("replaced")));
        rec.event(old, ServerEvent::Replaced { by: self.conn });
        rec.retire(old);
        let _ = commands.send(Command::Close);
    }
}

/// Issues QR refs on schedule (see [`QrSpec`]), then lets them expire.
async fn qr_sequence(
    spec: QrSpec,
    cmd: mpsc::UnboundedSender<Command>,
    rec: Recorder,
    conn: ConnId,
) {
    let refs: Vec<String> = (1..=spec.refs)
        .map(|n| format!("2@fakewa-{conn}-{n}"))
        .collect();
    let id = |n: u32| format!("qr-{conn}-{n}");
    if spec.is_batch() {
        let _ = cmd.send(Command::Send(nodes::pair_device(&id(1), &refs)));
    }
    for (i, r) in refs.iter().enumerate() {
        let n = i as u32 + 1;
        if !spec.is_batch() {
            let _ = cmd.send(Command::Send(nodes::pair_device(
                &id(n),
                std::slice::from_ref(r),
            )));
        }
        rec.event(conn, ServerEvent::QrRef { n });
        tokio::time::sleep(if n == 1 { spec.first } else { spec.then }).await;
    }
    if !spec.is_batch() {
        let _ = cmd.send(Command::Send(nodes::pair_device(&id(0), &[])));
    }
    rec.event(conn, ServerEvent::QrExpired);
}

/// The WhatsApp message a contact sends: `text` as a text, a caption or an emoji.
fn content(kind: MessageKind, text: &str) -> wa_rs_proto::whatsapp::Message {
    use wa_rs_proto::whatsapp::{self as wa, message as m};
    let text = Some(text.to_owned());
    match kind {
        MessageKind::Text => wa::Message {
            conversation: text,
            ..Default::default()
        },
        MessageKind::Image => wa::Message {
            image_message: Some(Box::new(m::ImageMessage {
                caption: text,
                mimetype: Some("image/jpeg".into()),
                ..Default::default()
            })),
            ..Default::default()
        },
        MessageKind::Document => wa::Message {
            document_message: Some(Box::new(m::DocumentMessage {
                caption: text,
                file_name: Some("document.pdf".into()),
                ..Default::default()
            })),
            ..Default::default()
        },
        MessageKind::Reaction => wa::Message {
            reaction_message: Some(m::ReactionMessage {
                text,
                key: Some(wa::MessageKey {
                    id: Some("m0".into()),
                    from_me: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}
