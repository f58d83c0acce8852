//! The control plane across a cluster's nodes, through its database
//! ([`warden_cluster::requests`]): an operation on a session another node runs is written as a
//! request, that node carries it out and writes the answer, and the asker replies with it.
//! `list` and `health` ask every live node for its own part.
//!
//! Bounds: an operation waits at most [`CARRY_WITHIN`] for its answer (long enough to outlast
//! a failover, when its session is between nodes); `list` and `health` wait at most
//! [`GATHER_WITHIN`] per node. A node carries out at most [`IN_FLIGHT`] requests at once;
//! more wait in the table, untaken, and their askers give up in time saying that nothing was
//! done. A request expires at its asker's deadline (then no node takes it), and is deleted
//! [`FORGET_AFTER`] later if its asker did not delete it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warden_cluster::requests::{ANSWERED, ASKED, Addressee, Withdrawn};
use warden_cluster::{ClusterError, Gate, Notice, Pg, PgTls};
use warden_control::peers::Answer;
use warden_control::peers::{LIST, Look};
use warden_control::{ErrorBody, ErrorCode, Gathered, LocalAnswers, Op, Peers, Reply};
use warden_http::{Elsewhere, HttpAnswer, HttpAsk, LocalHttp};

/// How long an operation carried to another node waits for its answer.
pub const CARRY_WITHIN: Duration = Duration::from_secs(30);
/// How long an HTTP request carried to another node waits for its response: longer than an
/// operation, as `POST /session/start/{token}` itself waits up to 30 s for a QR code.
pub const CARRY_HTTP_WITHIN: Duration = Duration::from_secs(45);
/// How long `list` and `health` wait for each other node.
pub const GATHER_WITHIN: Duration = Duration::from_secs(5);
/// How many requests a node carries out at once.
pub const IN_FLIGHT: usize = 32;
/// How often the tables are looked at when no notification came (one may be lost while the
/// connection is made again).
const POLL: Duration = Duration::from_secs(1);
/// How many waiting requests a node reads at a time.
const BATCH: usize = 256;
/// Requests expired for this long are deleted: their askers are gone.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// A look at the cluster ([`Peers::look`]) this recent is shared: the node's watchers (every
/// socket `watch` and `GET /events`, each looking once a second) cost one gathering a
/// second together.
const LOOK_FRESH: Duration = Duration::from_millis(900);

/// The last look at the cluster, and when it was made.
type LastLook = Option<(Instant, Result<Arc<Look>, ErrorBody>)>;

/// One connection to the cluster's database for requests, listening on both channels, made
/// again when it breaks.
pub struct RequestLink {
    url: String,
    timeout: Duration,
    tls: Option<PgTls>,
    conn: Mutex<Option<Arc<Pg>>>,
}

impl RequestLink {
    /// A link to `url` (over `tls` when given); every statement answers within `timeout`.
    /// Nothing connects yet.
    pub fn new(url: &str, timeout: Duration, tls: Option<PgTls>) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            tls,
            conn: Mutex::new(None),
        }
    }

    /// The connection, made (again) if it is missing or broken.
    async fn get(&self) -> Result<Arc<Pg>, ClusterError> {
        let mut conn = self.conn.lock().await;
        if let Some(pg) = conn.as_ref().filter(|pg| !pg.is_broken()) {
            return Ok(pg.clone());
        }
        *conn = None;
        let pg = Pg::connect_with(&self.url, self.timeout, self.tls.as_ref()).await?;
        pg.listen(ASKED).await?;
        pg.listen(ANSWERED).await?;
        let pg = Arc::new(pg);
        *conn = Some(pg.clone());
        Ok(pg)
    }
}

/// The other nodes, reached through the database: what the control socket carries operations
/// with.
#[derive(Clone)]
pub struct ClusterPeers {
    link: Arc<RequestLink>,
    me: String,
    /// Shared by every watcher; held while a look is made, so that looks of about the same
    /// time wait for it rather than make their own.
    last_look: Arc<Mutex<LastLook>>,
}

impl ClusterPeers {
    /// This node (`me`) over `link`.
    pub fn new(link: Arc<RequestLink>, me: &str) -> Self {
        Self {
            link,
            me: me.to_owned(),
            last_look: Arc::new(Mutex::new(None)),
        }
    }

    /// Asks `to` for `op` and waits until `within` for the answer: `None` when `to` is a
    /// session the cluster does not have; `Err` with a message when no answer came.
    async fn ask(
        &self,
        to: Addressee<'_>,
        op: &Carried,
        within: Duration,
    ) -> Option<Result<String, String>> {
        let text = match serde_json::to_string(op) {
            Ok(text) => text,
            Err(e) => return Some(Err(format!("cannot encode the operation: {e}"))),
        };
        let pg = match self.link.get().await {
            Ok(pg) => pg,
            Err(e) => {
                return Some(Err(format!(
                    "the cluster's database is unreachable ({e}); nothing was done"
                )));
            }
        };
        let mut notices = pg.notices();
        let id = match pg.ask(to, &text, within).await {
            Ok(Some(id)) => id,
            Ok(None) => return None,
            Err(e) => {
                return Some(Err(format!(
                    "the cluster's database refused the request ({e}); nothing was done"
                )));
            }
        };
        let deadline = Instant::now() + within;
        loop {
            match pg.answer_to(id).await {
                Ok(Some(answer)) => {
                    let _ = pg.withdraw(id).await;
                    return Some(Ok(answer));
                }
                Ok(None) => {}
                Err(e) => {
                    return Some(Err(format!(
                        "the cluster's database failed while the answer was awaited ({e}); \
                         the operation may have been carried out: check the session's status"
                    )));
                }
            }
            if !answered_or_tick(&mut notices, id, deadline).await {
                break;
            }
        }
        Some(match pg.withdraw(id).await {
            Ok(Withdrawn::Answered(answer)) => Ok(answer),
            Ok(Withdrawn::Untaken) => Err(match to {
                Addressee::Session(token) => format!(
                    "no node runs session {token} right now (it is moving between nodes); \
                     nothing was done, try again"
                ),
                Addressee::Node(node) => format!("node {node} did not answer; nothing was done"),
            }),
            Ok(Withdrawn::Taken(node)) => Err(format!(
                "node {node} took the operation but did not answer within {} s; it may have \
                 been carried out: check the session's status",
                within.as_secs()
            )),
            Ok(Withdrawn::Gone) | Err(_) => Err(
                "the answer was lost; the operation may have been carried out: check the \
                 session's status"
                    .to_owned(),
            ),
        })
    }

    /// Asks every other live node `carried`, each within [`GATHER_WITHIN`]: each node's
    /// answer, or why it gave none; `Err` when the database cannot say which nodes live.
    async fn every_node(
        &self,
        carried: &Carried,
    ) -> Result<Vec<(String, Result<String, String>)>, String> {
        let pg = self.link.get().await.map_err(unreachable)?;
        let nodes = pg.live_nodes().await.map_err(unreachable)?;
        let asked = nodes
            .iter()
            .filter(|n| **n != self.me)
            .map(|node| async move {
                let answer = self
                    .ask(Addressee::Node(node), carried, GATHER_WITHIN)
                    .await
                    .unwrap_or_else(|| Err(format!("node {node} did not answer")));
                (node.clone(), answer)
            });
        Ok(futures_util::future::join_all(asked).await)
    }

    /// A control operation asked of `to`: its reply.
    async fn control(&self, to: Addressee<'_>, op: &Op, within: Duration) -> Option<Reply> {
        let carried = Carried::Control(op.clone());
        Some(match self.ask(to, &carried, within).await? {
            Ok(answer) => serde_json::from_str(&answer).unwrap_or_else(|e| {
                unavailable(format!("the other node's answer did not parse: {e}"))
            }),
            Err(message) => unavailable(message),
        })
    }
}

/// What a request carries: a control operation, or an HTTP request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Carried {
    /// A control operation (answered with its [`Reply`]).
    Control(Op),
    /// An HTTP request (answered with an [`HttpAnswer`]).
    Http {
        /// The request.
        http: HttpAsk,
    },
}

impl Elsewhere for ClusterPeers {
    fn me(&self) -> &str {
        &self.me
    }

    fn on_every_node(&self, ask: HttpAsk) -> warden_http::elsewhere::FromEveryNode<'_> {
        Box::pin(async move {
            let answers = self.every_node(&Carried::Http { http: ask }).await?;
            Ok(answers
                .into_iter()
                .map(|(node, answer)| {
                    let answer = answer.and_then(|a| {
                        serde_json::from_str::<HttpAnswer>(&a)
                            .map_err(|e| format!("node {node}'s answer did not parse: {e}"))
                    });
                    (node, answer)
                })
                .collect())
        })
    }

    fn as_peers(&self) -> Arc<dyn Peers> {
        Arc::new(self.clone())
    }

    fn on_session<'a>(
        &'a self,
        token: &'a str,
        ask: HttpAsk,
    ) -> warden_http::elsewhere::Carried<'a> {
        Box::pin(async move {
            let carried = Carried::Http { http: ask };
            let to = Addressee::Session(token);
            Some(match self.ask(to, &carried, CARRY_HTTP_WITHIN).await? {
                Ok(answer) => serde_json::from_str::<HttpAnswer>(&answer)
                    .map_err(|e| format!("the other node's answer did not parse: {e}")),
                Err(message) => Err(message),
            })
        })
    }
}

impl Peers for ClusterPeers {
    fn me(&self) -> &str {
        &self.me
    }

    fn on_session<'a>(&'a self, token: &'a str, op: &'a Op) -> Answer<'a, Option<Reply>> {
        Box::pin(self.control(Addressee::Session(token), op, CARRY_WITHIN))
    }

    fn on_every_node<'a>(&'a self, op: &'a Op) -> Answer<'a, Result<Gathered, ErrorBody>> {
        Box::pin(async move {
            let unavailable_body = |e: String| ErrorBody::new(ErrorCode::Unavailable, e);
            let carried = Carried::Control(op.clone());
            let answers = self.every_node(&carried).await.map_err(unavailable_body)?;
            // Read after the answers: a session deleted meanwhile is in neither, never in the
            // placements alone (which would make it look as if it moved between nodes).
            let pg = self
                .link
                .get()
                .await
                .map_err(|e| unavailable_body(unreachable(e)))?;
            let placements = pg
                .placements()
                .await
                .map_err(|e| unavailable_body(unreachable(e)))?;
            let replies = answers
                .into_iter()
                .map(|(node, answer)| {
                    let reply = answer
                        .and_then(|a| {
                            serde_json::from_str::<Reply>(&a)
                                .map_err(|e| format!("node {node}'s answer did not parse: {e}"))
                        })
                        .unwrap_or_else(unavailable);
                    (node, reply)
                })
                .collect();
            Ok(Gathered {
                replies,
                placements,
            })
        })
    }

    fn look(&self) -> Answer<'_, Result<Arc<Look>, ErrorBody>> {
        Box::pin(async move {
            // One look at a time: callers of about the same time wait for it and share it.
            let turn = self.last_look.clone().lock_owned().await;
            if let Some((at, looked)) = turn.as_ref()
                && at.elapsed() < LOOK_FRESH
            {
                return looked.clone();
            }
            // Made apart, holding the turn: a caller that goes away (its stream closed) leaves
            // the look to finish for the others, and its requests answered and withdrawn.
            let peers = self.clone();
            let looking = tokio::spawn(async move {
                let mut turn = turn;
                let started = Instant::now();
                let looked = Peers::on_every_node(&peers, &LIST)
                    .await
                    .map(|gathered| Arc::new(Look::of(&gathered, started)));
                *turn = Some((Instant::now(), looked.clone()));
                looked
            });
            looking.await.unwrap_or_else(|e| {
                Err(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("the look at the cluster failed: {e}"),
                ))
            })
        })
    }
}

/// Waits for the notice that request `id` was answered, or the next poll, whichever is first;
/// false once `deadline` passed.
async fn answered_or_tick(
    notices: &mut broadcast::Receiver<Notice>,
    id: i64,
    deadline: Instant,
) -> bool {
    let tick = (Instant::now() + POLL).min(deadline);
    let wanted = id.to_string();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(tick) => return Instant::now() < deadline,
            notice = notices.recv() => match notice {
                Ok(n) if n.channel == ANSWERED && n.payload == wanted => return true,
                Ok(_) => {}
                // Missed some: look at the table now.
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                // The connection is gone: the poll carries on.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(tick).await;
                    return Instant::now() < deadline;
                }
            },
        }
    }
}

fn unreachable(e: ClusterError) -> String {
    format!("the cluster's database is unreachable: {e}")
}

fn unavailable(message: String) -> Reply {
    Reply::err(Value::Null, ErrorBody::new(ErrorCode::Unavailable, message))
}

/// Carries out, until `stop`, the requests other nodes write for this node (`me`): those
/// addressed to it, and those about the sessions it runs.
pub async fn answer_requests(
    link: Arc<RequestLink>,
    answers: LocalAnswers,
    http_answers: LocalHttp,
    gate: Gate,
    stop: CancellationToken,
) {
    let me = gate.name().to_owned();
    // Runs `token` here now: the supervisor has it, and this node holds its lease (a node
    // whose lease lapsed takes nothing, even before it closed its sessions).
    let runs = move |answers: &LocalAnswers, token: &str| {
        answers.runs(token) && gate.held(token).is_some()
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut last_forget: Option<Instant> = None;
    let mut warned = false;
    loop {
        let pg = match link.get().await {
            Ok(pg) => {
                warned = false;
                pg
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("cannot reach the cluster's database for requests: {e}");
                    warned = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(POLL) => continue,
                }
            }
        };
        let mut notices = pg.notices();
        if last_forget.is_none_or(|at| at.elapsed() >= FORGET_AFTER / 10) {
            last_forget = Some(Instant::now());
            if let Err(e) = pg.forget_requests(FORGET_AFTER).await {
                tracing::debug!("forgetting old requests failed: {e}");
            }
        }
        match pg.asked_of(&me, BATCH).await {
            Ok(asked) => {
                for request in asked {
                    // One this node does not run yet (just claimed, being adopted) waits for
                    // the next look.
                    if request.token.as_deref().is_some_and(|t| !runs(&answers, t)) {
                        continue;
                    }
                    let slot = tokio::select! {
                        () = stop.cancelled() => return,
                        slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                    };
                    match pg.take(&me, request.id).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::debug!("taking a request failed: {e}");
                            break;
                        }
                    }
                    let (pg, answers, me) = (pg.clone(), answers.clone(), me.clone());
                    let (http_answers, runs) = (http_answers.clone(), runs.clone());
                    tokio::spawn(async move {
                        let _slot = slot;
                        // Moved away since it was taken: back for the session's next node.
                        if request.token.as_deref().is_some_and(|t| !runs(&answers, t)) {
                            if let Err(e) = pg.untake(&me, request.id).await {
                                tracing::debug!("giving a request back failed: {e}");
                            }
                            return;
                        }
                        let work = async {
                            match serde_json::from_str::<Carried>(&request.op) {
                                Ok(Carried::Control(op)) => {
                                    serde_json::to_string(&answers.answer(op).await)
                                }
                                Ok(Carried::Http { http }) => {
                                    serde_json::to_string(&http_answers.answer(http).await)
                                }
                                Err(e) => serde_json::to_string(&Reply::err(
                                    Value::Null,
                                    ErrorBody::bad_request(format!(
                                        "an operation that did not parse: {e}"
                                    )),
                                )),
                            }
                            .unwrap_or_default()
                        };
                        // Bounded by its asker's patience: past it, nobody reads the answer.
                        let Ok(text) = tokio::time::timeout(request.remaining, work).await else {
                            tracing::debug!(
                                request = request.id,
                                "a request outlasted its asker's deadline; its answer is not written"
                            );
                            return;
                        };
                        if let Err(e) = pg.answer(&me, request.id, &text).await {
                            tracing::warn!(
                                request = request.id,
                                "a request was carried out but its answer could not be written: {e}"
                            );
                        }
                    });
                }
            }
            Err(e) => tracing::debug!("reading requests failed: {e}"),
        }
        // Until something is asked, or the next look.
        let tick = Instant::now() + POLL;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(tick) => break,
                notice = notices.recv() => match notice {
                    Ok(n) if n.channel == ASKED => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(tick).await;
                        break;
                    }
                },
            }
        }
    }
}
