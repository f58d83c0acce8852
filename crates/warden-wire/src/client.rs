//! [`ControlClient`]: speaks the control protocol over the Unix socket.

use std::path::Path;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{ErrorBody, ErrorCode, EventLine, Op, Reply, RequestLine};

/// Why a request did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error("the warden daemon is not running (no answer on {path}): {source}")]
    NotRunning {
        /// The socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection before answering.
    #[error("the daemon closed the connection")]
    Closed,
    /// The daemon's answer was not understood.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
}

/// A connection to the daemon's control socket.
pub struct ControlClient {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.display().to_string(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            writer,
            next_id: 1,
        })
    }

    /// Sends `op` and returns the raw reply.
    pub async fn request(&mut self, op: &Op) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&RequestLine { id, op })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let text = self.lines.next_line().await?.ok_or(ClientError::Closed)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {text}")))
    }

    /// Sends `op` and decodes a successful result as `T`.
    pub async fn call<T: DeserializeOwned>(&mut self, op: &Op) -> Result<T, ClientError> {
        let reply = self.request(op).await?;
        if !reply.ok {
            return Err(ClientError::Refused(reply.error.unwrap_or_else(|| {
                ErrorBody::new(ErrorCode::Internal, "error without a body")
            })));
        }
        let result = reply.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(result).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// After a successful `watch`: the next event line, or `None` when the daemon hung up.
    pub async fn next_event(&mut self) -> Result<Option<EventLine>, ClientError> {
        match self.lines.next_line().await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("{e}: {text}"))),
        }
    }
}
