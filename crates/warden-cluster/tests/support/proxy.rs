//! A TCP proxy in front of the database that the test can cut: a partition between one node
//! and PostgreSQL only. Cut, it forwards nothing in either direction and holds every socket
//! open (statements hang, as on a dead network); new connections are accepted and never
//! answered. Healed, it drops what it held and forwards again.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy.
pub struct CutProxy {
    port: u16,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CutProxy {
    /// Listens on a free loopback port, forwarding to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = watch::channel(false);
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(pipe(client, upstream, cut_rx.clone()));
            }
        });
        Self { port, cut, task }
    }

    /// The port nodes connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding: the partition starts.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again; the connections held while cut are dropped.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        // Accepted, never answered, until healed.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.shutdown().await;
        return;
    };
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|c| *c) => true,
    };
    if was_cut {
        // Hold both sockets, silent, until healed.
        let _ = cut.wait_for(|c| !*c).await;
    }
}
