//! A small client of the daemon's protocol (used by `run` and `--doctor`).

use std::path::Path;

use cowork_protocol::frame;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("malformed reply from the daemon: {0}")]
    Malformed(String),
    #[error("{method} failed: {error}")]
    Method { method: String, error: String },
}

/// One connection; requests carry ids (persistent-pipe mode).
pub struct Connection {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    next_id: u64,
}

impl Connection {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            framed: Framed::new(stream, frame::codec()),
            next_id: 0,
        })
    }

    async fn send(&mut self, message: &Value) -> Result<(), ClientError> {
        let body =
            serde_json::to_vec(message).map_err(|e| ClientError::Malformed(e.to_string()))?;
        self.framed.send(bytes::Bytes::from(body)).await?;
        Ok(())
    }

    /// Reads the next frame as JSON.
    pub async fn next_frame(&mut self) -> Result<Value, ClientError> {
        let body = self.framed.next().await.ok_or(ClientError::Closed)??;
        serde_json::from_slice(&body).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    /// Calls `method` and returns its `result` (frames for other ids, such
    /// as events on a subscribed connection, are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"method": method, "params": params, "id": id}))
            .await?;
        loop {
            let reply = self.next_frame().await?;
            if reply.get("id") != Some(&json!(id)) {
                continue;
            }
            return match reply.get("success") {
                Some(Value::Bool(true)) => Ok(reply.get("result").cloned().unwrap_or(json!({}))),
                _ => Err(ClientError::Method {
                    method: method.to_string(),
                    error: reply
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("(no error message)")
                        .to_string(),
                }),
            };
        }
    }

    /// Subscribes this connection to events (returns after the ack).
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        self.send(&json!({"method": "subscribeEvents", "params": {}}))
            .await?;
        let ack = self.next_frame().await?;
        if ack.get("success") == Some(&Value::Bool(true)) {
            Ok(())
        } else {
            Err(ClientError::Malformed(format!("unexpected ack {ack}")))
        }
    }
}
