//! A small WebSocket transport for wa-rs over plain `ws://`.
//!
//! Unlike the stock one it bounds the connect (TCP + upgrade) with a timeout,
//! and stops its read pump on `disconnect()` and on drop, so no task or socket
//! outlives a test.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};
use wa_rs::transport::{Transport, TransportEvent, TransportFactory};

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Creates [`WsTransport`]s to one `ws://host:port/path` URL.
pub struct WsFactory {
    url: String,
    connect_timeout: Duration,
}

impl WsFactory {
    pub fn new(url: &str, connect_timeout: Duration) -> Self {
        Self {
            url: url.to_string(),
            connect_timeout,
        }
    }

    async fn connect(&self) -> anyhow::Result<WebSocketStream<TcpStream>> {
        let authority = self
            .url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow::anyhow!("not a ws:// URL: {}", self.url))?;
        let tcp = TcpStream::connect(authority).await?;
        let (ws, _) = ClientBuilder::new().uri(&self.url)?.connect_on(tcp).await?;
        Ok(ws)
    }
}

struct WsTransport {
    sink: Mutex<Option<Sink>>,
    stop: Arc<Notify>,
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn send(&self, data: Vec<u8>) -> anyhow::Result<()> {
        let mut sink = self.sink.lock().await;
        let sink = sink
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("socket is closed"))?;
        sink.send(Message::binary(data)).await?;
        Ok(())
    }

    async fn disconnect(&self) {
        if let Some(mut sink) = self.sink.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
        self.stop.notify_one();
    }
}

#[async_trait]
impl TransportFactory for WsFactory {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>)> {
        let ws = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {:?}", self.connect_timeout))??;
        let (sink, mut stream) = ws.split();
        let (tx, rx) = async_channel::unbounded();
        let _ = tx.send(TransportEvent::Connected).await;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopped.notified() => break,
                    m = stream.next() => match m {
                        Some(Ok(m)) if m.is_binary() => {
                            let bytes = Bytes::copy_from_slice(m.as_payload());
                            if tx.send(TransportEvent::DataReceived(bytes)).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(m)) if m.is_close() => break,
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
            let _ = tx.try_send(TransportEvent::Disconnected);
        });
        Ok((
            Arc::new(WsTransport {
                sink: Mutex::new(Some(sink)),
                stop,
            }),
            rx,
        ))
    }
}
