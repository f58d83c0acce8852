//! The control socket server: binds the socket safely and serves a supervisor.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warden_core::{OpenOptions, OutgoingMessage, SendRequest, Supervisor};

use crate::history;
use crate::lines::{Line, LineReader};
use crate::peers::{Gathered, Peers, carried_for, merge_health, merge_lists};
use crate::protocol::{
    DeletedView, ErrorBody, ErrorCode, EventLine, HealthView, ListView, Op, OutboxView,
    OutgoingView, ReapView, ReapedView, Reply, Request, SessionView, WatchingView, counts,
};
use crate::watch_elsewhere::{ElsewhereFeed, Whereabouts, whereabouts};
use crate::webhooks;
use warden_webhooks::Webhooks;

/// How the control socket is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the socket lives.
    pub path: PathBuf,
    /// Its permission bits (e.g. `0o660`); never world-writable.
    pub mode: u32,
    /// The longest request line accepted, in bytes.
    pub max_line_bytes: usize,
    /// How many clients may be connected at once; one more is answered `unavailable` and
    /// closed at once, so the socket never holds more than this many descriptors (plus its
    /// listener).
    pub max_clients: usize,
    /// A client that does not take a reply (or an event) within this long is disconnected.
    pub write_timeout: Duration,
    /// A client that sends nothing for this long is disconnected (watchers excepted).
    pub idle_timeout: Duration,
}

impl ServerConfig {
    /// Defaults (mode 0660, 64 KiB lines, 256 clients, 10 s writes, 5 min idle) for a socket
    /// at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: 0o660,
            max_line_bytes: 64 * 1024,
            max_clients: 256,
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The configured mode would let anyone on the machine control the daemon.
    #[error("socket mode {0:04o} is world-writable; use 0660 or 0600")]
    WorldWritable(u32),
    /// Another daemon answers on the socket.
    #[error("another warden daemon is already running on {}; stop it first", .0.display())]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// An I/O error on the path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BindError + '_ {
    move |source| BindError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Called after every request with the op's name (`"bad_request"` for a line that did not
/// parse) and whether it succeeded: a hook for metrics.
pub type RequestObserver = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// The bound control socket. Dropping it removes the socket file.
pub struct ControlServer {
    listener: UnixListener,
    config: ServerConfig,
    started: Instant,
    observer: Option<RequestObserver>,
    webhooks: Option<Arc<Webhooks>>,
    peers: Option<Arc<dyn Peers>>,
}

impl ControlServer {
    /// Binds the socket: refuses a world-writable mode and a live daemon on the same path,
    /// removes a stale socket left by a dead one, and gives the socket its mode before it
    /// appears under its name (bound under a temporary name, then renamed).
    pub async fn bind(config: ServerConfig) -> Result<Self, BindError> {
        if config.mode & 0o002 != 0 {
            return Err(BindError::WorldWritable(config.mode));
        }
        let path = config.path.clone();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(&path).await {
                Ok(_) => return Err(BindError::AlreadyRunning(path)),
                // Only "nobody listens" proves the daemon is gone; a busy or unreadable
                // socket may belong to a live one and is never removed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing a stale socket left by a daemon that is gone");
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            },
            Ok(_) => return Err(BindError::NotASocket(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let temp = path.with_file_name(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "warden.sock".into()),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(io_err(&temp))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(config.mode))
            .map_err(io_err(&temp))?;
        std::fs::rename(&temp, &path).map_err(io_err(&path))?;
        Ok(Self {
            listener,
            config,
            started: Instant::now(),
            observer: None,
            webhooks: None,
            peers: None,
        })
    }

    /// Calls `observer` after every request (for metrics).
    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Answers the webhook ops from `webhooks` (without it, there are none).
    pub fn with_webhooks(mut self, webhooks: Arc<Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// In a cluster: carries operations on sessions other nodes run to them, and answers
    /// `list` and `health` for the whole cluster ([`Peers`]).
    pub fn with_peers(mut self, peers: Arc<dyn Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Serves clients until `shutdown` resolves, then tells watchers the daemon is stopping
    /// and waits (briefly) for every client task to finish.
    pub async fn run(
        self,
        supervisor: Supervisor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.max_clients));
        let context = Arc::new(Context {
            supervisor: supervisor.via("socket"),
            max_line_bytes: self.config.max_line_bytes,
            write_timeout: self.config.write_timeout,
            idle_timeout: self.config.idle_timeout,
            started: self.started,
            observer: self.observer.clone(),
            webhooks: self.webhooks.clone(),
            peers: self.peers.clone(),
        });
        tokio::pin!(shutdown);
        let mut trouble = AcceptTrouble::default();
        loop {
            // After a failed accept (out of descriptors, most likely), wait before the next try:
            // the pending connection is still there, so retrying at once would spin.
            if let Some(pause) = trouble.pause() {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => {
                            trouble.accepted();
                            stream
                        }
                        // One client gave up before it was accepted: nothing to wait for.
                        Err(e) if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                        ) => continue,
                        Err(e) => {
                            trouble.failed(&e);
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Answered in place and closed at once: a flood of clients beyond
                        // `max_clients` holds no descriptor longer than this.
                        refuse(&stream);
                        continue;
                    };
                    let context = context.clone();
                    let cancel = cancel.child_token();
                    tracker.spawn(async move {
                        serve_client(stream, context, cancel).await;
                        drop(permit);
                    });
                }
            }
        }
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(2), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some control clients did not finish in time");
        }
    }
}

/// The first pause after a failed accept.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(100);
/// The longest pause between accepts while they keep failing.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The accept loop's state while `accept` fails (typically `EMFILE`/`ENFILE`: the process or
/// the system is out of file descriptors). One warning when an episode begins, one line when
/// it ends, and a pause that doubles from 100 ms to 1 s in between: the loop never ends on an
/// error, never spins, and never floods the log.
#[derive(Debug, Default)]
struct AcceptTrouble {
    /// Failures in a row; 0 when accepting works.
    failures: u64,
    /// When the current episode began.
    since: Option<Instant>,
    /// The pause before the next try.
    pause: Option<Duration>,
}

impl AcceptTrouble {
    /// How long to wait before the next accept, if the last one failed.
    fn pause(&self) -> Option<Duration> {
        self.pause
    }

    /// An accept failed: warn if this begins an episode, and lengthen the pause.
    fn failed(&mut self, error: &std::io::Error) {
        self.failures += 1;
        if self.failures == 1 {
            self.since = Some(Instant::now());
            let hint = if is_out_of_descriptors(error) {
                " (out of file descriptors: the daemon is at its limit; it keeps serving the \
                 clients it has and accepts again when descriptors are freed)"
            } else {
                ""
            };
            tracing::warn!(error = %error, "control socket: cannot accept clients{hint}; retrying");
        }
        self.pause = Some(
            self.pause
                .map_or(ACCEPT_PAUSE_MIN, |p| (p * 2).min(ACCEPT_PAUSE_MAX)),
        );
    }

    /// An accept worked: end the episode, if there was one.
    fn accepted(&mut self) {
        if self.failures > 0 {
            let secs = self.since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            tracing::info!(
                failures = self.failures,
                "control socket: accepting clients again after {secs:.1} s"
            );
        }
        *self = Self::default();
    }
}

/// Whether `error` is `EMFILE` (the process's descriptor limit) or `ENFILE` (the system's).
fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    // Linux's numbers; other systems report the same condition through the message.
    matches!(error.raw_os_error(), Some(23 | 24))
        || error.to_string().contains("Too many open files")
}

/// Tells a client beyond `max_clients` to come back later, without waiting for it.
fn refuse(stream: &UnixStream) {
    let reply = Reply::err(
        Value::Null,
        ErrorBody::new(ErrorCode::Unavailable, "too many clients; try again later"),
    );
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        // A fresh socket's buffer takes this short line whole; if not, the client just sees
        // the connection close.
        let _ = stream.try_write(&line);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config.path);
    }
}

/// What every client task shares.
pub(crate) struct Context {
    pub(crate) supervisor: Supervisor,
    max_line_bytes: usize,
    pub(crate) write_timeout: Duration,
    idle_timeout: Duration,
    started: Instant,
    observer: Option<RequestObserver>,
    webhooks: Option<Arc<Webhooks>>,
    peers: Option<Arc<dyn Peers>>,
}

impl Context {
    /// For answering operations carried here by other nodes: no clients, no peers.
    pub(crate) fn here(supervisor: Supervisor, webhooks: Option<Arc<Webhooks>>) -> Self {
        let defaults = ServerConfig::new("");
        Self {
            supervisor,
            max_line_bytes: defaults.max_line_bytes,
            write_timeout: defaults.write_timeout,
            idle_timeout: defaults.idle_timeout,
            started: Instant::now(),
            observer: None,
            webhooks,
            peers: None,
        }
    }
}

/// Writes one JSON line, within `timeout`.
pub(crate) async fn write_line<W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &impl Serialize,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(timeout, writer.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client is not reading",
        )),
    }
}

async fn serve_client(stream: UnixStream, context: Arc<Context>, cancel: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut reader = LineReader::new(read, context.max_line_bytes);
    loop {
        let line = tokio::select! {
            () = cancel.cancelled() => return,
            line = tokio::time::timeout(context.idle_timeout, reader.next()) => match line {
                Ok(line) => line,
                Err(_) => return, // idle too long: make room for others
            },
        };
        let reply = match line {
            Ok(None) | Err(_) => return,
            Ok(Some(Line::TooLong)) => Reply::err(
                Value::Null,
                ErrorBody::bad_request(format!(
                    "request line longer than {} bytes; it was skipped",
                    context.max_line_bytes
                )),
            ),
            Ok(Some(Line::NotUtf8)) => Reply::err(
                Value::Null,
                ErrorBody::bad_request("request line is not UTF-8; it was skipped"),
            ),
            Ok(Some(Line::Text(text))) if text.trim().is_empty() => continue,
            Ok(Some(Line::Text(text))) => match Request::parse(&text) {
                Err((id, body)) => Reply::err(id, body),
                Ok(Request {
                    id,
                    op: Op::Watch { token },
                }) => {
                    if let Some(observe) = &context.observer {
                        observe("watch", true);
                    }
                    watch(&mut reader, &mut write, &context, &cancel, id, token).await;
                    return;
                }
                Ok(Request {
                    id,
                    op:
                        Op::History {
                            token,
                            since,
                            limit,
                            follow: true,
                        },
                }) => {
                    if let Some(observe) = &context.observer {
                        observe("history", true);
                    }
                    let ask = history::Ask {
                        token,
                        since,
                        limit,
                        look_every: context
                            .peers
                            .as_ref()
                            .map(|_| crate::watch_elsewhere::ASK_EVERY),
                    };
                    history::follow(
                        &context.supervisor,
                        &mut reader,
                        &mut write,
                        &cancel,
                        context.write_timeout,
                        id,
                        ask,
                    )
                    .await;
                    return;
                }
                Ok(Request { id, op }) => {
                    let name = op.name();
                    let reply = handle(&context, id, op).await;
                    if let Some(observe) = &context.observer {
                        observe(name, reply.ok);
                    }
                    reply
                }
            },
        };
        let unparsed = reply.id.is_null()
            && reply
                .error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::BadRequest);
        if unparsed && let Some(observe) = &context.observer {
            observe("bad_request", false);
        }
        if write_line(&mut write, &reply, context.write_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Runs one operation: here, or in a cluster on the node that runs its session (`list` and
/// `health` on every node).
async fn handle(context: &Context, id: Value, op: Op) -> Reply {
    let Some(peers) = &context.peers else {
        return handle_here(context, id, op).await;
    };
    if let Some(token) = carried_for(&op)
        && context.supervisor.status(token).is_err()
        && let Some(mut reply) = peers.on_session(token, &op).await
    {
        reply.id = id;
        return reply;
    }
    let gather = matches!(op, Op::List {} | Op::Health {});
    let gathered = if gather {
        Some(peers.on_every_node(&op).await)
    } else {
        None
    };
    let mine = handle_here(context, id.clone(), op.clone()).await;
    let Some(gathered) = gathered else {
        return mine;
    };
    // The database unreachable: this node's part, saying so.
    let (gathered, incomplete) = match gathered {
        Ok(gathered) => (gathered, None),
        Err(e) => (
            Gathered::default(),
            Some(format!("{}: only this node's sessions", e.message)),
        ),
    };
    let Some(result) = mine.result.clone() else {
        return mine;
    };
    match op {
        Op::List {} => match serde_json::from_value::<ListView>(result) {
            Ok(list) => {
                let mut merged = merge_lists(peers.me(), list, &gathered);
                merged.incomplete = incomplete;
                Reply::ok(id, merged)
            }
            Err(_) => mine,
        },
        Op::Health {} => match serde_json::from_value::<HealthView>(result) {
            Ok(health) => {
                let mut merged = merge_health(peers.me(), health, &gathered);
                merged.incomplete = incomplete;
                Reply::ok(id, merged)
            }
            Err(_) => mine,
        },
        _ => mine,
    }
}

/// Runs one operation against this node's supervisor.
pub(crate) async fn handle_here(context: &Context, id: Value, op: Op) -> Reply {
    let s = &context.supervisor;
    let session = |result: Result<warden_core::SessionInfo, warden_core::Error>| match result {
        Ok(info) => Reply::ok(id.clone(), SessionView::from(&info)),
        Err(e) => Reply::err(id.clone(), ErrorBody::from(&e)),
    };
    let outgoing = |result: Result<OutgoingMessage, warden_core::Error>| match result {
        Ok(message) => Reply::ok(id.clone(), OutgoingView::from(&message)),
        Err(e) => Reply::err(id.clone(), ErrorBody::from(&e)),
    };
    match op {
        Op::Create { name, token, proxy } => session(
            s.create_with_proxy(name, token.as_deref(), proxy.as_deref())
                .await,
        ),
        Op::SetProxy {
            token,
            proxy,
            reconnect,
        } => session(s.set_proxy(&token, proxy.as_deref(), reconnect).await),
        Op::Start { token, phone } => {
            let options = OpenOptions {
                pair_phone: phone,
                ..OpenOptions::default()
            };
            session(s.start_session(&token, options).await)
        }
        Op::Stop { token } => session(s.stop(&token).await),
        Op::Restart { token, force } => session(s.restart(&token, force).await),
        Op::RefreshQr { token } => session(s.refresh_qr(&token).await),
        Op::Logout { token } => session(s.logout(&token).await),
        Op::ForceCleanup { token } => session(s.force_cleanup(&token).await),
        Op::ResetReconnect { token } => session(s.reset_reconnect(&token).await),
        Op::Status { token } => match s.status(&token) {
            Ok(info) => Reply::ok(
                id,
                SessionView::from(&info).with_pause(s.new_chats_paused_until(&token)),
            ),
            Err(e) => Reply::err(id, ErrorBody::from(&e)),
        },
        Op::Delete { token } => match s.delete(&token).await {
            Ok(()) => Reply::ok(id, DeletedView { deleted: token }),
            Err(e) => Reply::err(id, ErrorBody::from(&e)),
        },
        Op::List {} => Reply::ok(id, ListView::from(&s.list())),
        Op::SendText {
            token,
            to,
            text,
            key,
        } => outgoing(s.send(&token, SendRequest { to, text, key }).await),
        Op::MessageStatus { token, message } => outgoing(s.message_status(&token, &message).await),
        Op::RetryMessage { token, message } => outgoing(s.retry_message(&token, &message).await),
        Op::CancelMessage { token, message } => outgoing(s.cancel_message(&token, &message).await),
        Op::Outbox { token, limit } => match s.outbox(&token, limit.unwrap_or(100)).await {
            Ok(messages) => Reply::ok(
                id,
                OutboxView::new(&token, &messages, s.new_chats_paused_until(&token)),
            ),
            Err(e) => Reply::err(id, ErrorBody::from(&e)),
        },
        Op::Reap {} => match s.reap_now().await {
            Ok(reaped) => Reply::ok(
                id,
                ReapView {
                    reaped: reaped.iter().map(ReapedView::from).collect(),
                },
            ),
            Err(e) => Reply::err(id, ErrorBody::from(&e)),
        },
        Op::Health {} => match s.ping().await {
            Ok(()) => {
                let list = s.list();
                Reply::ok(
                    id,
                    HealthView {
                        status: "ok".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        uptime_secs: context.started.elapsed().as_secs(),
                        sessions: list.sessions.len(),
                        counts: counts(&list),
                        nodes: Default::default(),
                        incomplete: None,
                    },
                )
            }
            Err(e) => Reply::err(id, ErrorBody::from(&e)),
        },
        Op::History {
            token,
            since,
            limit,
            follow: _,
        } => {
            let ask = history::Ask {
                token,
                since,
                limit,
                look_every: None,
            };
            history::once(s, id, ask).await
        }
        op @ (Op::Webhooks {}
        | Op::WebhookDead { .. }
        | Op::WebhookRedeliver { .. }
        | Op::WebhookReplay { .. }
        | Op::WebhookTest { .. }
        | Op::WebhookSet { .. }
        | Op::WebhookRemove { .. }) => webhooks::handle(s, context.webhooks.as_deref(), id, &op)
            .await
            .expect("a webhook op"),
        Op::Watch { .. } => Reply::err(id, ErrorBody::bad_request("watch is handled apart")),
    }
}

/// Why a stream to a client ends from outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The daemon is stopping.
    Stopping,
    /// The client hung up.
    HungUp,
}

/// Waits until a stream to a client must end: the daemon stops or the client hangs up. A
/// streaming client only listens: anything it sends meanwhile is ignored.
pub(crate) async fn stream_ends<R>(
    reader: &mut LineReader<R>,
    cancel: &CancellationToken,
) -> StreamEnd
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        tokio::select! {
            () = cancel.cancelled() => return StreamEnd::Stopping,
            line = reader.next() => {
                if matches!(line, Ok(None) | Err(_)) {
                    return StreamEnd::HungUp;
                }
            }
        }
    }
}

/// Ends a stream: a client still there is told that the daemon is stopping.
pub(crate) async fn end_stream<W: AsyncWrite + Unpin>(
    writer: &mut W,
    end: StreamEnd,
    timeout: Duration,
) {
    if end == StreamEnd::Stopping {
        let closed = EventLine::Closed {
            reason: "the daemon is stopping".into(),
        };
        let _ = write_line(writer, &closed, timeout).await;
    }
}

/// Streams events to a client: the current state of every watched session first, then every
/// change. A client that falls behind is told why and disconnected.
async fn watch<R, W>(
    reader: &mut LineReader<R>,
    writer: &mut W,
    context: &Context,
    cancel: &CancellationToken,
    id: Value,
    token: Option<String>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let supervisor = &context.supervisor;
    let timeout = context.write_timeout;
    // A session this node does not run: its view elsewhere, if a node runs it (`None`: it is
    // moving between nodes).
    let mut elsewhere_first = None;
    if let Some(token) = &token
        && let Err(e) = supervisor.status(token)
    {
        // Not here: in a cluster it may run elsewhere (a malformed token runs nowhere).
        let (Some(peers), warden_core::Error::NotFound(_)) = (&context.peers, &e) else {
            let _ = write_line(writer, &Reply::err(id, ErrorBody::from(&e)), timeout).await;
            return;
        };
        match whereabouts(peers.as_ref(), token).await {
            Ok(Whereabouts::Listed(view)) => elsewhere_first = Some(*view),
            Ok(Whereabouts::Between) => {}
            Ok(Whereabouts::Missing) => {
                let _ = write_line(writer, &Reply::err(id, ErrorBody::from(&e)), timeout).await;
                return;
            }
            Err(why) => {
                let _ = write_line(writer, &Reply::err(id, why), timeout).await;
                return;
            }
        }
    }
    // Subscribe before reading the snapshot, so no change falls between the two (and a
    // session watched elsewhere that comes here is seen from its first event here).
    let mut events = supervisor.subscribe();
    let watching = Reply::ok(
        id,
        WatchingView {
            watching: token.clone(),
        },
    );
    if write_line(writer, &watching, timeout).await.is_err() {
        return;
    }
    let wanted = |t: &str| token.as_deref().is_none_or(|w| w == t);
    for info in supervisor.list().sessions {
        if wanted(info.token.as_str()) {
            // Came here meanwhile: this view is newer than the one from elsewhere.
            elsewhere_first = None;
            let line = EventLine::Session {
                session: Box::new(SessionView::from(&info)),
            };
            if write_line(writer, &line, timeout).await.is_err() {
                return;
            }
        }
    }
    if let Some(view) = &elsewhere_first {
        let line = EventLine::Session {
            session: Box::new(view.clone()),
        };
        if write_line(writer, &line, timeout).await.is_err() {
            return;
        }
    }
    // In a cluster, watching everything covers the other nodes' sessions too, and a watched
    // session is followed to whichever node it is handed to: gathered apart, so that this
    // node's events never wait for the other nodes.
    let mut gathering = context.peers.clone().map(|peers| match &token {
        None => ElsewhereFeed::every_session(supervisor.clone(), peers),
        Some(token) => {
            ElsewhereFeed::one_session(supervisor.clone(), peers, token.clone(), elsewhere_first)
        }
    });
    loop {
        tokio::select! {
            ended = stream_ends(reader, cancel) => {
                end_stream(writer, ended, timeout).await;
                return;
            }
            lines = next_from(&mut gathering) => {
                let Some(lines) = lines else {
                    if token.is_some() {
                        // The session followed is gone (its `removed` was sent): say so.
                        let closed = EventLine::Closed { reason: "the session was deleted".into() };
                        let _ = write_line(writer, &closed, timeout).await;
                        return;
                    }
                    // The gathering ended (it cannot, short of a panic): this node's own go on.
                    gathering = None;
                    continue;
                };
                for line in lines {
                    if write_line(writer, &line, timeout).await.is_err() {
                        return;
                    }
                }
            }
            event = events.recv() => match event {
                Ok(event) if wanted(event.token().as_str()) => {
                    if write_line(writer, &EventLine::from(&event), timeout).await.is_err() {
                        tracing::info!("disconnecting a watch client that does not keep up");
                        return;
                    }
                    if token.is_some() && matches!(event, warden_core::SessionEvent::Removed { .. }) {
                        // The one session this stream follows is gone: say so and end.
                        let closed = EventLine::Closed { reason: "the session was deleted".into() };
                        let _ = write_line(writer, &closed, timeout).await;
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "disconnecting a watch client that fell behind");
                    let closed = EventLine::Closed {
                        reason: format!("too slow: {missed} events were missed; reconnect and watch again"),
                    };
                    let _ = write_line(writer, &closed, Duration::from_millis(100)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// The next lines of `feed`; never, when there is none.
async fn next_from(feed: &mut Option<ElsewhereFeed>) -> Option<Vec<EventLine>> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_from_100_ms_to_1_s_and_reset_once_one_works() {
        let mut trouble = AcceptTrouble::default();
        assert_eq!(trouble.pause(), None);
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(is_out_of_descriptors(&emfile));
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            23
        )));
        assert!(!is_out_of_descriptors(&std::io::Error::other("x")));
        let mut pauses = Vec::new();
        for _ in 0..7 {
            trouble.failed(&emfile);
            pauses.push(trouble.pause().unwrap().as_millis());
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000, 1000]);
        trouble.accepted();
        assert_eq!(trouble.pause(), None);
        trouble.failed(&emfile);
        assert_eq!(trouble.pause(), Some(ACCEPT_PAUSE_MIN));
    }
}
