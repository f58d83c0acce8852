//! [`CappedListener`]: the gateway's TCP listener, holding at most `max_connections` open
//! connections. Past the cap, a new connection is closed at once (the client sees the
//! connection reset or closed before any answer) and counted, so that a flood of HTTP clients
//! can never take the descriptors the sessions and the control socket need. An open
//! connection on which neither side moves a byte for `idle_timeout` is closed
//! ([`CappedStream`]).

use std::future::Future;
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
    idle_timeout: Duration,
    /// Connections refused so far (logged, at most once per [`LOG_EVERY`]).
    refused: u64,
    last_log: Option<Instant>,
}

impl CappedListener {
    /// Wraps `inner`; at most `max_connections` (at least 1) are open at once, and each is
    /// closed after `idle_timeout` without a byte either way.
    pub fn new(inner: TcpListener, max_connections: usize, idle_timeout: Duration) -> Self {
        let max = max_connections.max(1);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            idle_timeout,
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
                    return (CappedStream::new(stream, permit, self.idle_timeout), peer);
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

/// An accepted connection; its slot is freed when it is dropped. Reading or writing fails
/// with `TimedOut` once no byte moved either way for the idle timeout, which ends the
/// connection.
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl CappedStream {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            stream,
            _slot: slot,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Bytes moved: the idle clock starts again.
    fn active(&mut self) {
        let at = tokio::time::Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(at);
    }

    /// A write's outcome, with the idle clock restarted by bytes written, or the idle error
    /// when the write waits past the idle timeout.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    /// While waiting on the socket: whether the connection has now been idle too long.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle for too long")
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.after_write(cx, written)
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
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection accepted through a listener whose idle timeout is 60 s, and its client.
    async fn pair() -> (CappedStream, TcpStream) {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = CappedListener::new(inner, 4, Duration::from_secs(60));
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = Listener::accept(&mut listener).await;
        (server, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_timeout_is_ended_and_traffic_keeps_it_open() {
        let (mut server, mut client) = pair().await;
        let started = tokio::time::Instant::now();
        // Traffic at 50 s and at 100 s keeps it open past 60 s.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
        }
        server.write_all(b"y").await.unwrap();
        // Then nothing: the next read fails 60 s after the last byte (the write at 100 s).
        let mut byte = [0u8; 1];
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 160);
    }
}
