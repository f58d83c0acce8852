//! [`CappedListener`]: the gateway's TCP listener, holding at most `max_connections` open
//! connections. Past the cap, a new connection is closed at once (the client sees the
//! connection reset or closed before any answer) and counted, so that a flood of HTTP clients
//! can never take the descriptors the sessions and the control socket need.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often a refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A TCP listener that keeps at most a fixed number of connections open.
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    /// Connections refused so far (logged, at most once per [`LOG_EVERY`]).
    refused: u64,
    last_log: Option<Instant>,
}

impl CappedListener {
    /// Wraps `inner`; at most `max_connections` (at least 1) are open at once.
    pub fn new(inner: TcpListener, max_connections: usize) -> Self {
        let max = max_connections.max(1);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused: 0,
            last_log: None,
        }
    }

    fn note_refusal(&mut self, peer: SocketAddr) {
        self.refused += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            self.last_log = Some(now);
            tracing::warn!(
                %peer,
                max_connections = self.max,
                refused_so_far = self.refused,
                "HTTP connection refused: the gateway has as many open connections as [http] max_connections"
            );
        }
    }
}

impl Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = Listener::accept(&mut self.inner).await;
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (
                        CappedStream {
                            stream,
                            _slot: permit,
                        },
                        peer,
                    );
                }
                Err(_) => {
                    drop(stream);
                    self.note_refusal(peer);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; its slot is freed when it is dropped.
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
