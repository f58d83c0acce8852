//! One client connection: WebSocket upgrade, Noise handshake, then the
//! scenario's steps played while the client's stanzas are answered.
//!
//! The connection task owns the socket. It multiplexes three things: stanzas
//! from the client (answered inline), commands from the scenario [`Player`]
//! (sent in order), and the player itself, which is a future polled in the
//! same task. The player learns what the client did through a watch channel
//! (online or not) and a queue of IQ replies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};
use wa_rs_binary::node::Node;

use crate::chat;
use crate::client::{ClientInfo, ClientKind};
use crate::frame::FrameReader;
use crate::nodes::{self, attr};
use crate::noise::{ServerHandshake, Session};
use crate::player::{Command, Flags, Player, PlayerLink};
use crate::record::{CloseKind, ConnId, Recorder, ServerEvent};
use crate::registry::Registry;
use crate::scenario::{Scenario, Script};
use crate::server::ListenerMode;
use crate::signal::DeviceAddress;

type Ws = WebSocketStream<TcpStream>;

/// How long a clean close waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Settings every connection reads.
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
    pub accept_unknown_devices: bool,
    pub prekey_count: u32,
    pub handshake_timeout: Duration,
    pub online_timeout: Duration,
    pub receipts: crate::chat::Receipts,
    pub replace_older_login: bool,
}

/// The login in force for each device, `(phone, device)`: its connection and a way to send it
/// commands (for `replace_older_login`).
pub(crate) type Logins = Mutex<HashMap<(String, u16), (ConnId, mpsc::UnboundedSender<Command>)>>;

/// State shared by the listener and all connections.
pub(crate) struct Shared {
    pub recorder: Recorder,
    pub registry: Registry,
    pub contacts: crate::signal::Contacts,
    /// (sender device, recipient device, message id) of every copy decrypted, to tell resends.
    pub seen: Mutex<std::collections::HashSet<(String, String, String)>>,
    pub script: RwLock<Script>,
    pub attempts: Mutex<HashMap<String, u32>>,
    /// The latest login of each device (kept only with `replace_older_login`).
    pub logins: Logins,
    pub options: ConnOptions,
    pub shutdown: watch::Receiver<bool>,
    /// Bumped by [`crate::FakeServer::drop_all`]: every session then drops its connection.
    pub drops: watch::Receiver<u64>,
}

impl Shared {
    fn next_attempt(&self, key: String) -> u32 {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = attempts.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn scenario_for(&self, client: &ClientInfo, attempt: u32) -> Scenario {
        let script = self.script.read().unwrap_or_else(|p| p.into_inner());
        match &client.kind {
            ClientKind::Registration { .. } => script.registration.for_attempt(attempt).clone(),
            ClientKind::Login { phone, .. } => {
                script.login_plan(phone).for_attempt(attempt).clone()
            }
        }
    }
}

/// Serves one accepted TCP connection until it ends, recording everything.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
) {
    let rec = shared.recorder.clone();
    let conn = rec.open(peer);
    let kind = match mode {
        ListenerMode::CloseTcp | ListenerMode::Refuse => CloseKind::Dropped,
        ListenerMode::SilentTcp => {
            rec.event(conn, ServerEvent::Silent { upgraded: false });
            hold_tcp(tcp, shared.shutdown.clone()).await
        }
        ListenerMode::SilentWebSocket | ListenerMode::Normal => {
            let builder = ServerBuilder::new();
            match tokio::time::timeout(shared.options.handshake_timeout, builder.accept(tcp)).await
            {
                Ok(Ok((_request, ws))) if mode == ListenerMode::SilentWebSocket => {
                    rec.event(conn, ServerEvent::Silent { upgraded: true });
                    hold_ws(ws, shared.shutdown.clone()).await
                }
                Ok(Ok((_request, ws))) => session(&shared, conn, ws).await,
                Ok(Err(e)) => {
                    rec.event(
                        conn,
                        ServerEvent::HandshakeFailed(format!("websocket upgrade: {e}")),
                    );
                    CloseKind::Error
                }
                Err(_) => {
                    rec.event(
                        conn,
                        ServerEvent::HandshakeFailed("websocket upgrade timed out".into()),
                    );
                    CloseKind::Error
                }
            }
        }
    };
    rec.close(conn, kind);
}

/// Resolves once the server is shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accepts bytes and never answers, until the client leaves.
async fn hold_tcp(mut tcp: TcpStream, mut shutdown: watch::Receiver<bool>) -> CloseKind {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return CloseKind::Shutdown,
            n = tcp.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return CloseKind::Client },
        }
    }
}

/// Reads WebSocket messages and never answers, until the client leaves.
async fn hold_ws(mut ws: Ws, mut shutdown: watch::Receiver<bool>) -> CloseKind {
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return CloseKind::Shutdown,
            m = ws.next() => match m {
                Some(Ok(m)) if !m.is_close() => {}
                _ => return CloseKind::Client,
            },
        }
    }
}

/// Outcome of reading the next handshake frame.
enum Read {
    Frame(Vec<u8>),
    Closed,
    Bad(String),
}

async fn read_frame(ws: &mut Ws, reader: &mut FrameReader) -> Read {
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => return Read::Frame(f),
            Ok(None) => {}
            Err(e) => return Read::Bad(e.to_string()),
        }
        match ws.next().await {
            Some(Ok(m)) if m.is_binary() => reader.push(m.as_payload()),
            Some(Ok(m)) if m.is_close() => return Read::Closed,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Read::Closed,
        }
    }
}

/// Runs the Noise handshake; `Err` carries how the connection ended.
async fn handshake(
    ws: &mut Ws,
    reader: &mut FrameReader,
) -> Result<Session, Result<CloseKind, String>> {
    let hello = match read_frame(ws, reader).await {
        Read::Frame(f) => f,
        Read::Closed => return Err(Ok(CloseKind::Client)),
        Read::Bad(e) => return Err(Err(e)),
    };
    let (state, server_hello) = ServerHandshake::respond(&hello).map_err(|e| Err(e.to_string()))?;
    if ws.send(Message::binary(server_hello)).await.is_err() {
        return Err(Ok(CloseKind::Client));
    }
    let finish = match read_frame(ws, reader).await {
        Read::Frame(f) => f,
        Read::Closed => return Err(Ok(CloseKind::Client)),
        Read::Bad(e) => return Err(Err(e)),
    };
    state.finish(&finish).map_err(|e| Err(e.to_string()))
}

/// A WebSocket connection: handshake, identify, play.
async fn session(shared: &Arc<Shared>, conn: ConnId, mut ws: Ws) -> CloseKind {
    let rec = &shared.recorder;
    let mut reader = FrameReader::new();
    let mut shutdown = shared.shutdown.clone();
    let hs = tokio::select! {
        _ = stopped(&mut shutdown) => return CloseKind::Shutdown,
        r = tokio::time::timeout(shared.options.handshake_timeout, handshake(&mut ws, &mut reader)) => r,
    };
    let session = match hs {
        Ok(Ok(s)) => s,
        Ok(Err(Ok(kind))) => return kind,
        Ok(Err(Err(e))) => {
            rec.event(conn, ServerEvent::HandshakeFailed(e));
            return CloseKind::Error;
        }
        Err(_) => {
            rec.event(
                conn,
                ServerEvent::HandshakeFailed("noise handshake timed out".into()),
            );
            return CloseKind::Error;
        }
    };
    let client = match ClientInfo::from_payload(&session.payload, session.client_static) {
        Ok(c) => c,
        Err(e) => {
            rec.event(conn, ServerEvent::HandshakeFailed(e.to_string()));
            return CloseKind::Error;
        }
    };
    let (account, attempt_key) = match &client.kind {
        ClientKind::Login { phone, .. } => (phone.clone(), phone.clone()),
        ClientKind::Registration { .. } => {
            let id = client.client_id();
            let account = shared
                .registry
                .phone_of(&client.noise_key)
                .unwrap_or_else(|| format!("unpaired:{id}"));
            (account, format!("client:{id}"))
        }
    };
    let attempt = shared.next_attempt(attempt_key);
    let scenario = shared.scenario_for(&client, attempt);
    rec.identify(conn, client.clone(), account, attempt);
    let ended = SocketOwner::run(shared.clone(), conn, client, session, ws, reader, scenario).await;
    shared
        .logins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, (login, _)| *login != conn);
    ended
}
/// The socket owner's side of an established session.
struct SocketOwner {
    shared: Arc<Shared>,
    conn: ConnId,
    /// The logged-in device, for the messages it sends; `None` while registering.
    device: Option<DeviceAddress>,
    session: Session,
    flags: Arc<Flags>,
    online: watch::Sender<bool>,
    replies: mpsc::UnboundedSender<Node>,
}

impl SocketOwner {
    /// Plays `scenario` on the session and serves the socket until the connection ends.
    async fn run(
        shared: Arc<Shared>,
        conn: ConnId,
        client: ClientInfo,
        session: Session,
        ws: Ws,
        mut reader: FrameReader,
        scenario: Scenario,
    ) -> CloseKind {
        let device = match &client.kind {
            ClientKind::Login { phone, device } => Some(DeviceAddress::new(phone.clone(), *device)),
            ClientKind::Registration { .. } => None,
        };
        let (player, link) = Player::new(shared.clone(), conn, client);
        let PlayerLink {
            commands: mut cmd_rx,
            replies,
            online,
            flags,
        } = link;
        let mut this = Self {
            shared,
            conn,
            device,
            session,
            flags,
            online,
            replies,
        };
        let play = player.play(scenario);
        tokio::pin!(play);
        let mut play_done = false;
        let mut commands_open = true;
        let mut shutdown = this.shared.shutdown.clone();
        let mut drops = this.shared.drops.clone();
        drops.mark_unchanged();
        let (mut sink, mut stream) = ws.split();

        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return CloseKind::Shutdown,
                Ok(()) = drops.changed() => return CloseKind::Dropped,
                cmd = cmd_rx.recv(), if commands_open => match cmd {
                    Some(Command::Send(node)) => {
                        if let Err(kind) = this.send(&mut sink, &node).await {
                            return kind;
                        }
                    }
                    Some(Command::Close) => {
                        let _ = sink.close().await;
                        let _ = tokio::time::timeout(CLOSE_LINGER, async {
                            while let Some(Ok(_)) = stream.next().await {}
                        })
                        .await;
                        return CloseKind::Server;
                    }
                    Some(Command::Drop) => return CloseKind::Dropped,
                    None => commands_open = false,
                },
                msg = stream.next() => match msg {
                    Some(Ok(m)) if m.is_binary() => {
                        if this.flags.stalled.load(Ordering::Relaxed) {
                            continue;
                        }
                        reader.push(m.as_payload());
                        if let Err(kind) = this.drain_frames(&mut reader, &mut sink).await {
                            return kind;
                        }
                    }
                    Some(Ok(m)) if m.is_close() => return CloseKind::Client,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return CloseKind::Client,
                },
                () = &mut play, if !play_done => play_done = true,
            }
        }
    }

    async fn send<S>(&mut self, sink: &mut S, node: &Node) -> Result<(), CloseKind>
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        let bytes = match self.session.sealer.seal(node) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    conn = self.conn,
                    "cannot seal {}: {e}",
                    nodes::summary(node)
                );
                return Err(CloseKind::Error);
            }
        };
        tracing::debug!(conn = self.conn, "-> {}", nodes::summary(node));
        sink.send(Message::binary(bytes))
            .await
            .map_err(|_| CloseKind::Client)
    }

    async fn drain_frames<S>(
        &mut self,
        reader: &mut FrameReader,
        sink: &mut S,
    ) -> Result<(), CloseKind>
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(conn = self.conn, "bad frame: {e}");
                    return Err(CloseKind::Error);
                }
            };
            let node = match self.session.opener.open(&frame) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(conn = self.conn, "undecodable stanza: {e}");
                    return Err(CloseKind::Error);
                }
            };
            tracing::debug!(conn = self.conn, "<- {}", nodes::summary(&node));
            for reply in self.handle(&node).await {
                self.send(sink, &reply).await?;
            }
        }
    }

    /// Answers one client stanza; returns the stanzas to send back.
    async fn handle(&mut self, node: &Node) -> Vec<Node> {
        let rec = &self.shared.recorder;
        let id = || attr(node, "id").unwrap_or_default();
        let recorded = match node.tag.as_str() {
            "iq" => None,
            "message" => {
                let refusal = self
                    .flags
                    .refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                return chat::client_message(
                    &self.shared,
                    self.conn,
                    self.device.as_ref(),
                    node,
                    refusal,
                )
                .await;
            }
            "ack" => Some(ServerEvent::ClientAck {
                class: attr(node, "class").unwrap_or_default(),
                id: id(),
            }),
            "receipt" => Some(ServerEvent::ClientReceipt {
                kind: attr(node, "type").unwrap_or_default(),
                id: id(),
            }),
            _ => return Vec::new(),
        };
        if let Some(event) = recorded {
            rec.event(self.conn, event);
            return Vec::new();
        }
        let kind = attr(node, "type").unwrap_or_default();
        let xmlns = attr(node, "xmlns").unwrap_or_default();
        let id = attr(node, "id");
        if kind == "result" || kind == "error" {
            rec.event(
                self.conn,
                ServerEvent::Iq {
                    xmlns,
                    kind,
                    answered: false,
                },
            );
            let _ = self.replies.send(node.clone());
            return Vec::new();
        }
        let Some(id) = id.filter(|_| !self.flags.hold_iqs.load(Ordering::Relaxed)) else {
            rec.event(
                self.conn,
                ServerEvent::Iq {
                    xmlns,
                    kind,
                    answered: false,
                },
            );
            return Vec::new();
        };
        if xmlns == "w:p" {
            let answered = !self.flags.ignore_pings.load(Ordering::Relaxed);
            rec.event(self.conn, ServerEvent::Ping { answered });
            return if answered {
                vec![nodes::iq_result(&id)]
            } else {
                Vec::new()
            };
        }
        let chat_answer = match (xmlns.as_str(), kind.as_str()) {
            ("usync", "get") => chat::device_lists(&self.shared, node),
            ("encrypt", "get") => chat::pre_key_bundles(&self.shared, node).await,
            ("encrypt", "set") => {
                chat::pre_key_upload(&self.shared, self.conn, self.device.as_ref(), node)
            }
            _ => None,
        };
        let mut out = vec![if let Some(answer) = chat_answer {
            answer
        } else if node.get_optional_child("link_code_companion_reg").is_some() {
            nodes::link_code_reply(&id)
        } else if xmlns == "encrypt" && kind == "get" && node.get_optional_child("count").is_some()
        {
            nodes::iq_result_with(
                &id,
                vec![nodes::prekey_count(self.shared.options.prekey_count)],
            )
        } else {
            nodes::iq_result(&id)
        }];
        let logged_in = self.flags.logged_in.load(Ordering::Relaxed);
        if logged_in && xmlns == "passive" && node.get_optional_child("active").is_some() {
            out.push(nodes::offline_done(0));
        }
        let setup_done = matches!(xmlns.as_str(), "privacy" | "blocklist")
            || (xmlns == "w" && node.get_optional_child("props").is_some());
        rec.event(
            self.conn,
            ServerEvent::Iq {
                xmlns,
                kind,
                answered: true,
            },
        );
        if logged_in && setup_done && !*self.online.borrow() {
            rec.event(self.conn, ServerEvent::Online);
            self.online.send_replace(true);
        }
        out
    }
}
