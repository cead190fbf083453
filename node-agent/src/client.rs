//! [`AgentClient`]: the caller's side of the agent's service ([`crate::server`]), used by
//! `gantry logs` and `gantry exec`. It hides tonic from callers: failures come back as
//! [`AgentCallError`], streams as plain `next()` calls.

use gantry_api::proto::agent_service_client::AgentServiceClient;
use gantry_api::proto::{ExecOutput, ExecRequest, LogChunk, LogsRequest};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest message accepted from an agent.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// The agent could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The agent runs no such replica (or no previous container of it).
    #[error("{0}")]
    NotFound(String),
    /// The replica's container does not run.
    #[error("{0}")]
    NotRunning(String),
    /// Anything else the agent answered.
    #[error("{0}")]
    Failed(String),
}

impl From<tonic::Status> for AgentCallError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match s.code() {
            Code::NotFound => AgentCallError::NotFound(message),
            Code::FailedPrecondition => AgentCallError::NotRunning(message),
            Code::Unavailable => AgentCallError::Unreachable(message),
            _ => AgentCallError::Failed(message),
        }
    }
}

/// A connection to one node agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: AgentServiceClient<Channel>,
}

/// A stream of messages from an agent.
pub struct AgentStream<T> {
    inner: tonic::Streaming<T>,
}

impl<T> AgentStream<T> {
    /// The next message; `None` at the end of the stream.
    ///
    /// # Errors
    /// The agent ended the stream with an error, or the connection broke.
    pub async fn next(&mut self) -> Result<Option<T>, AgentCallError> {
        Ok(self.inner.message().await?)
    }
}

impl AgentClient {
    /// Connects to the agent at `addr` (`host:port`).
    ///
    /// # Errors
    /// [`AgentCallError::Unreachable`] when the address is malformed or nothing answers.
    pub async fn connect(addr: &str) -> Result<AgentClient, AgentCallError> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| AgentCallError::Unreachable(format!("invalid address: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                AgentCallError::Unreachable(text)
            })?;
        let inner = AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(AgentClient { inner })
    }

    /// Starts streaming a replica's log.
    ///
    /// # Errors
    /// The agent refused the request (see [`AgentCallError`]).
    pub async fn logs(
        &mut self,
        request: LogsRequest,
    ) -> Result<AgentStream<LogChunk>, AgentCallError> {
        let inner = self.inner.logs(request).await?.into_inner();
        Ok(AgentStream { inner })
    }

    /// Starts a command in a replica's container.
    ///
    /// # Errors
    /// The agent refused the request (see [`AgentCallError`]).
    pub async fn exec(
        &mut self,
        request: ExecRequest,
    ) -> Result<AgentStream<ExecOutput>, AgentCallError> {
        let inner = self.inner.exec(request).await?.into_inner();
        Ok(AgentStream { inner })
    }
}
