//! [`serve`]: the gateway's accept loop. Each accepted connection is served by hyper's HTTP/1
//! server in its own task, with a header-read timeout: a client must send a request's whole
//! head within `header_read_timeout` or its connection is closed, so a slow-headers client
//! (slowloris) holds a connection slot that long at most. A client that shuts its writing
//! side after its request still gets the answer (half-close). On shutdown the loop stops
//! accepting, each connection finishes the request it is in (then closes), and [`serve`]
//! returns once every connection is gone.

use std::io;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::listener::CappedListener;

/// Serves `router` on `listener` until `stopping` is cancelled; see the module docs.
pub async fn serve(
    mut listener: CappedListener,
    router: Router,
    header_read_timeout: Duration,
    stopping: CancellationToken,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // A client may shut its writing side once its request is sent (`nc -N`, scripts):
            // it still gets its answer. Without this, hyper closes the connection unanswered
            // as soon as it reads that end while a handler is still at work.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .half_close(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stopping.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
