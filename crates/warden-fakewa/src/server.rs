//! The listener: binds, accepts, hands each connection to its own task, and
//! can refuse or stall connections on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{ConfigError, ListenerPhase, ServerConfig};
use crate::conn::{self, ConnOptions, Shared};
use crate::record::{Recorder, WaitTimeout};
use crate::registry::Registry;
use crate::scenario::Script;

/// What the listener does with new connections. Connections already open are not affected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerMode {
    /// Upgrade, handshake, play the script.
    #[default]
    #[serde(rename = "normal")]
    Normal,
    /// Close the listening socket: connecting fails with "connection refused".
    #[serde(rename = "refuse")]
    Refuse,
    /// Accept TCP and close it at once, before any WebSocket upgrade.
    #[serde(rename = "close_tcp")]
    CloseTcp,
    /// Accept TCP and never answer the WebSocket upgrade.
    #[serde(rename = "silent_tcp")]
    SilentTcp,
    /// Complete the WebSocket upgrade and never answer the Noise hello.
    #[serde(rename = "silent_ws")]
    SilentWebSocket,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A running fake WhatsApp server. Dropping it stops the server and all its connections.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    mode: watch::Sender<ListenerMode>,
    applied: watch::Receiver<ListenerMode>,
    shutdown: watch::Sender<bool>,
    drops: watch::Sender<u64>,
    accept_task: Option<JoinHandle<()>>,
    timeline: Mutex<Option<JoinHandle<()>>>,
}

impl FakeServer {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (drops, drops_rx) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            recorder: Recorder::new(),
            registry: Registry::new(config.first_phone),
            contacts: crate::signal::Contacts::new(config.contact_devices.clone()),
            seen: Mutex::new(std::collections::HashSet::new()),
            script: RwLock::new(config.script),
            attempts: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            options: ConnOptions {
                accept_unknown_devices: config.accept_unknown_devices,
                prekey_count: config.prekey_count,
                handshake_timeout: config.handshake_timeout,
                online_timeout: config.online_timeout,
                receipts: config.receipts,
                replace_older_login: config.replace_older_login,
            },
            shutdown: shutdown_rx,
            drops: drops_rx,
        });
        let first_mode = config.listener.first().map(|p| p.mode).unwrap_or_default();
        let (mode, mode_rx) = watch::channel(first_mode);
        let (applied_tx, applied) = watch::channel(ListenerMode::Normal);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            addr,
            shared.clone(),
            mode_rx,
            applied_tx,
        ));
        let server = Self {
            addr,
            shared,
            mode,
            applied,
            shutdown,
            drops,
            accept_task: Some(accept_task),
            timeline: Mutex::new(None),
        };
        // Return only once the first mode applies, so a first `refuse` phase is in force.
        let mut applied = server.applied.clone();
        let _ = applied.wait_for(|m| *m == first_mode).await;
        if !config.listener.is_empty() {
            server.play_timeline(config.listener);
        }
        tracing::info!("listening on {}", server.url());
        Ok(server)
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL to give a client, `ws://ADDR/ws/chat` (any path is accepted).
    pub fn url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    /// The record of what clients did.
    pub fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }

    /// The devices paired so far.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Replaces the script for connections made from now on.
    pub fn set_script(&self, script: Script) {
        *self
            .shared
            .script
            .write()
            .unwrap_or_else(|p| p.into_inner()) = script;
    }

    /// Edits the script for connections made from now on.
    pub fn update_script(&self, edit: impl FnOnce(&mut Script)) {
        edit(
            &mut self
                .shared
                .script
                .write()
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    /// The listener's current mode.
    pub fn mode(&self) -> ListenerMode {
        *self.applied.borrow()
    }

    /// Waits until the listener is in `mode` (e.g. at the end of a timed refusal).
    pub async fn wait_for_mode(
        &self,
        mode: ListenerMode,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let mut applied = self.applied.clone();
        match tokio::time::timeout(timeout, applied.wait_for(|m| *m == mode)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WaitTimeout(timeout)),
        }
    }

    /// Switches the listener mode and returns once it applies (for `Refuse`: once the
    /// port is closed). Cancels a running listener timeline.
    pub async fn set_mode(&self, mode: ListenerMode) {
        self.cancel_timeline();
        self.switch(mode).await;
    }

    /// Refuses connections for `duration`, then goes back to normal. Returns once
    /// refusing has started.
    pub async fn refuse_for(&self, duration: Duration) {
        self.set_mode(ListenerMode::Refuse).await;
        self.play_timeline(vec![ListenerPhase {
            mode: ListenerMode::Refuse,
            duration: Some(duration),
        }]);
    }

    /// Drops every logged-in or pairing session's connection at once, without a close frame
    /// (a network outage, as the clients see it). The listener keeps accepting, so they may
    /// come back at once.
    pub fn drop_all(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Stops accepting, closes every connection, and waits for the listener to finish.
    pub async fn shutdown(mut self) {
        self.cancel_timeline();
        self.shutdown.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }

    async fn switch(&self, mode: ListenerMode) {
        self.mode.send_replace(mode);
        let mut applied = self.applied.clone();
        let _ = applied.wait_for(|m| *m == mode).await;
    }

    fn cancel_timeline(&self) {
        if let Some(t) = self
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }

    fn play_timeline(&self, phases: Vec<ListenerPhase>) {
        let mode = self.mode.clone();
        let task = tokio::spawn(async move {
            for phase in phases {
                mode.send_replace(phase.mode);
                match phase.duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return,
                }
            }
            mode.send_replace(ListenerMode::Normal);
        });
        if let Some(old) = self
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.cancel_timeline();
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut mode: watch::Receiver<ListenerMode>,
    applied: watch::Sender<ListenerMode>,
) {
    let mut listener = Some(listener);
    let mut shutdown = shared.shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        let current = *mode.borrow_and_update();
        if current == ListenerMode::Refuse {
            listener = None;
        } else if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => tracing::error!("cannot listen on {addr} again: {e}"),
            }
        }
        applied.send_replace(current);
        tokio::select! {
            () = conn::stopped(&mut shutdown) => break,
            changed = mode.changed() => if changed.is_err() { break },
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(conn::serve(shared.clone(), tcp, peer, current));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Connections see the shutdown flag and end; give them a moment, then abort the rest.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}
