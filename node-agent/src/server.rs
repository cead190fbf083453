//! The agent's own gRPC service ([`AgentService`](gantry_api::proto::agent_service_server)):
//! the logs of the replicas it runs and commands run inside them.
//!
//! Invariants:
//! - Containers are found by their `gantry.io/replica` label, as the reconciler finds them:
//!   the current one has the highest `gantry.io/restart` label, the previous one the next
//!   highest. Nothing is remembered here.
//! - Every file and kernel interaction runs on a blocking thread; a follow or an exec ends as
//!   soon as the caller goes away (its receiver is dropped) or the agent shuts down.
//! - Exec output is streamed as the command writes it, in chunks of at most
//!   [`CHUNK_BYTES`]; the last message carries the exit code.

use crate::reconciler::{LABEL_NODE, LABEL_REPLICA, LABEL_RESTART};
use gantry_api::proto::agent_service_server::{AgentService, AgentServiceServer};
use gantry_api::proto::{ExecOutput, ExecRequest, LogChunk, LogsRequest};
use gantry_runtime::container::logs::{self, Stream};
use gantry_runtime::container::{exec, ContainerError, ContainerInfo, Runtime, LOG_FILE};
use std::io::{Read, Seek, SeekFrom};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The largest chunk of output sent in one message.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The largest request accepted (a command line).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The largest message sent (a chunk plus framing).
const MAX_RESPONSE_BYTES: usize = 4 * CHUNK_BYTES;
/// How long an exec may run when the request names no timeout.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a followed log is read again for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Messages buffered per stream before the reader waits for the caller.
const STREAM_BUFFER: usize = 16;

/// Serves the agent's gRPC service on `listener` until `shutdown`.
pub async fn serve(
    runtime: Runtime,
    node: String,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    let api = AgentApi {
        runtime,
        node: node.clone(),
        shutdown: shutdown.clone(),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tracing::info!(node = %node, addr = ?addr, "serving logs and exec");
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            AgentServiceServer::new(api)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(node = %node, error = %e, "agent service failed");
    }
}

/// The service: replica containers looked up in `runtime` on every call.
struct AgentApi {
    runtime: Runtime,
    node: String,
    shutdown: CancellationToken,
}

/// Why a call failed, mapped to a gRPC status in [`ServeError::into_status`] only.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("replica {replica} is not running on node {node}")]
    NoReplica { replica: String, node: String },
    #[error("replica {0} has no previous container")]
    NoPrevious(String),
    #[error("replica {replica} is not running ({why})")]
    NotRunning { replica: String, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error("command timed out after {0}s")]
    Timeout(u64),
    #[error(transparent)]
    Runtime(#[from] ContainerError),
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            ServeError::NoReplica { .. } | ServeError::NoPrevious(_) => Status::not_found(message),
            ServeError::NotRunning { .. } => Status::failed_precondition(message),
            ServeError::Invalid(_) => Status::invalid_argument(message),
            ServeError::Timeout(_) => Status::deadline_exceeded(message),
            ServeError::Runtime(ContainerError::Invalid { .. }) => {
                Status::invalid_argument(message)
            }
            ServeError::Runtime(_) | ServeError::Internal(_) => Status::internal(message),
        }
    }
}

/// The restart count a container was made for (`0` when the label is missing or malformed).
fn restart_of(c: &ContainerInfo) -> u32 {
    c.spec
        .labels
        .get(LABEL_RESTART)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The containers of `replica` made by the agent of `node`, newest (current) first.
fn replica_containers(
    runtime: &Runtime,
    node: &str,
    replica: &str,
) -> Result<Vec<ContainerInfo>, ContainerError> {
    let mut found: Vec<ContainerInfo> = runtime
        .list()?
        .into_iter()
        .filter(|c| c.spec.labels.get(LABEL_REPLICA).map(String::as_str) == Some(replica))
        .filter(|c| {
            c.spec
                .labels
                .get(LABEL_NODE)
                .is_none_or(|n| n.as_str() == node)
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse((restart_of(c), c.spec.created_ms)));
    Ok(found)
}

/// Picks the current container of `replica` (or the previous one).
fn pick_container(
    runtime: &Runtime,
    node: &str,
    replica: &str,
    previous: bool,
) -> Result<ContainerInfo, ServeError> {
    let mut found = replica_containers(runtime, node, replica)?;
    if found.is_empty() {
        return Err(ServeError::NoReplica {
            replica: replica.to_string(),
            node: node.to_string(),
        });
    }
    let index = usize::from(previous);
    if index >= found.len() {
        return Err(ServeError::NoPrevious(replica.to_string()));
    }
    Ok(found.swap_remove(index))
}

/// Why a container that does not run is not running, for messages.
fn not_running_reason(c: &ContainerInfo) -> String {
    match c.state.as_ref() {
        Some(s) if s.exit_code.is_some() => {
            let code = s.exit_code.unwrap_or(-1);
            match s.reason.as_deref() {
                Some(r) => format!("{r}, exit code {code}"),
                None => format!("exited with code {code}"),
            }
        }
        _ => c.status_word().to_string(),
    }
}

/// The index of the first record line to print so that only the last `n` complete lines
/// (with the partial records leading up to them) remain.
fn tail_start(lines: &[&[u8]], n: usize) -> usize {
    let mut full_seen = 0;
    for (i, line) in lines.iter().enumerate().rev() {
        if logs::parse_line(line).is_some_and(|r| r.full) {
            if full_seen == n {
                return i + 1;
            }
            full_seen += 1;
        }
    }
    0
}

/// Turns record lines into chunks: consecutive records of one stream are joined, up to
/// [`CHUNK_BYTES`] per chunk. Malformed lines are skipped.
fn chunks_of<'a>(lines: impl IntoIterator<Item = &'a [u8]>, timestamps: bool) -> Vec<LogChunk> {
    let mut out: Vec<LogChunk> = Vec::new();
    for line in lines {
        let Some(rec) = logs::parse_line(line) else {
            continue;
        };
        let stream = match rec.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let extra = rec.timestamp.len() + 2;
        let fits = out.last().is_some_and(|c| {
            c.stream == stream && c.data.len() + rec.content.len() + extra <= CHUNK_BYTES
        });
        if !fits {
            out.push(LogChunk {
                data: Vec::new(),
                stream: stream.to_string(),
            });
        }
        // Just pushed when it did not fit, so a last chunk exists.
        let Some(chunk) = out.last_mut() else {
            continue;
        };
        if timestamps {
            chunk.data.extend_from_slice(rec.timestamp.as_bytes());
            chunk.data.push(b' ');
        }
        chunk.data.extend_from_slice(rec.content);
        if rec.full {
            chunk.data.push(b'\n');
        }
    }
    out
}

/// What a log reader was asked for.
struct LogJob {
    runtime: Runtime,
    container: ContainerInfo,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
    shutdown: CancellationToken,
}

/// Reads the container's log and sends it to `tx`; with `follow`, keeps reading until the
/// container's shim is gone, the caller hangs up or the agent shuts down. Runs on a blocking
/// thread.
fn stream_log(job: LogJob, tx: &mpsc::Sender<Result<LogChunk, Status>>) -> Result<(), ServeError> {
    let send_all = |chunks: Vec<LogChunk>| -> bool {
        chunks.into_iter().all(|c| tx.blocking_send(Ok(c)).is_ok())
    };
    let path = job.container.dir.join(LOG_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ServeError::Internal(format!("{}: {e}", path.display()))),
    };
    tracing::debug!(container = %job.container.spec.id, follow = job.follow, "reading log");
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| ServeError::Internal(format!("{}: {e}", path.display())))?;
    let mut offset = data.len() as u64;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut carry = data.split_off(complete);
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let start = job.tail.map_or(0, |n| tail_start(&lines, n));
    if !send_all(chunks_of(lines[start..].iter().copied(), job.timestamps)) || !job.follow {
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut last_read_after_exit = false;
    loop {
        if tx.is_closed() || job.shutdown.is_cancelled() {
            return Ok(());
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| ServeError::Internal(format!("{}: {e}", path.display())))?;
        if n == 0 {
            if last_read_after_exit {
                return Ok(());
            }
            let alive = job
                .runtime
                .inspect(&job.container.spec.id)
                .map(|c| c.supervised)
                .unwrap_or(false);
            if !alive {
                // One more read: the shim may have written its last bytes just before exiting.
                last_read_after_exit = true;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| ServeError::Internal(format!("{}: {e}", path.display())))?;
                continue;
            }
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        offset += n as u64;
        carry.extend_from_slice(&buf[..n]);
        if let Some(end) = carry.iter().rposition(|&b| b == b'\n') {
            let rest = carry.split_off(end + 1);
            let lines = carry.split(|&b| b == b'\n').filter(|l| !l.is_empty());
            if !send_all(chunks_of(lines, job.timestamps)) {
                return Ok(());
            }
            carry = rest;
        }
    }
}

/// Sends `data` from one of the command's pipes in messages of at most [`CHUNK_BYTES`].
async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    stderr: bool,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = buf[..n].to_vec();
        let msg = if stderr {
            ExecOutput {
                stderr: data,
                ..Default::default()
            }
        } else {
            ExecOutput {
                stdout: data,
                ..Default::default()
            }
        };
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

/// Runs the command and streams its output, then its exit code, to `tx`.
async fn run_exec(
    container: ContainerInfo,
    command: Vec<String>,
    timeout: Duration,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let id = container.spec.id.clone();
    // Opening namespace and cgroup files touches the kernel: off the async threads.
    let prepared = tokio::task::spawn_blocking(move || exec::exec_command(&container, &command))
        .await
        .map_err(|e| ServeError::Internal(format!("exec preparation failed: {e}")))?;
    let std_cmd = match prepared {
        Ok(c) => c,
        Err(e @ (ContainerError::CommandNotFound(_) | ContainerError::CommandNotExecutable(_))) => {
            // Like a shell: the command's failure is an exit code, not a call failure.
            let _ = tx
                .send(Ok(ExecOutput {
                    stderr: format!("{e}\n").into_bytes(),
                    exited: true,
                    exit_code: e.exit_code(),
                    ..Default::default()
                }))
                .await;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        ServeError::Runtime(ContainerError::CommandNotExecutable(format!(
            "cannot run the command in container {id}: {e}"
        )))
    })?;
    let out = child
        .stdout
        .take()
        .map(|p| tokio::spawn(pump(p, tx.clone(), false)));
    let err = child
        .stderr
        .take()
        .map(|p| tokio::spawn(pump(p, tx.clone(), true)));
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| ServeError::Internal(format!("wait for exec: {e}")))?,
        _ = tokio::time::sleep(timeout) => {
            let _ = child.kill().await;
            return Err(ServeError::Timeout(timeout.as_secs()));
        }
        _ = tx.closed() => {
            tracing::debug!(container = %id, "exec caller went away; killing the command");
            let _ = child.kill().await;
            return Ok(());
        }
        _ = shutdown.cancelled() => {
            let _ = child.kill().await;
            return Err(ServeError::Internal("the agent is shutting down".into()));
        }
    };
    // The pipes reach end of file once every process holding them exited; a background
    // process the command left behind may keep them open, so wait only briefly.
    for pump in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
    }
    let exit_code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    let _ = tx
        .send(Ok(ExecOutput {
            exited: true,
            exit_code,
            ..Default::default()
        }))
        .await;
    Ok(())
}

impl AgentApi {
    /// Finds the container on a blocking thread.
    async fn find(&self, replica: &str, previous: bool) -> Result<ContainerInfo, ServeError> {
        if replica.is_empty() {
            return Err(ServeError::Invalid("no replica given".into()));
        }
        let (runtime, node, replica) =
            (self.runtime.clone(), self.node.clone(), replica.to_string());
        tokio::task::spawn_blocking(move || pick_container(&runtime, &node, &replica, previous))
            .await
            .map_err(|e| ServeError::Internal(format!("container lookup failed: {e}")))?
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type LogsStream = ReceiverStream<Result<LogChunk, Status>>;
    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let container = self
            .find(&req.replica, req.previous)
            .await
            .map_err(ServeError::into_status)?;
        tracing::debug!(replica = %req.replica, container = %container.spec.id, follow = req.follow,
            "logs requested");
        let job = LogJob {
            runtime: self.runtime.clone(),
            container,
            follow: req.follow,
            tail: usize::try_from(req.tail).ok(),
            timestamps: req.timestamps,
            shutdown: self.shutdown.clone(),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_log(job, &tx) {
                let _ = tx.blocking_send(Err(e.into_status()));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let req = request.into_inner();
        if req.command.is_empty() {
            return Err(ServeError::Invalid("no command given".into()).into_status());
        }
        let container = self
            .find(&req.replica, false)
            .await
            .map_err(ServeError::into_status)?;
        if !container.is_running() {
            return Err(ServeError::NotRunning {
                why: not_running_reason(&container),
                replica: req.replica,
            }
            .into_status());
        }
        let timeout = match req.timeout_seconds {
            0 => DEFAULT_EXEC_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        tracing::info!(replica = %req.replica, container = %container.spec.id, "exec");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = run_exec(container, req.command, timeout, tx.clone(), shutdown).await {
                let _ = tx.send(Err(e.into_status())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &str, full: bool, text: &str) -> Vec<u8> {
        let tag = if full { "F" } else { "P" };
        format!("2026-01-01T00:00:00.000000000Z {stream} {tag} {text}").into_bytes()
    }

    #[test]
    fn tail_keeps_the_last_complete_lines_with_their_partials() {
        let recs = [
            record("stdout", true, "one"),
            record("stdout", false, "tw"),
            record("stdout", true, "o"),
            record("stdout", true, "three"),
        ];
        let lines: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        assert_eq!(tail_start(&lines, 1), 3);
        assert_eq!(tail_start(&lines, 2), 1);
        assert_eq!(tail_start(&lines, 3), 0);
        assert_eq!(tail_start(&lines, 10), 0);
        assert_eq!(tail_start(&lines, 0), 4);
    }

    #[test]
    fn chunks_join_records_of_one_stream_and_split_on_stream_changes() {
        let recs = [
            record("stdout", true, "a"),
            record("stdout", false, "b"),
            record("stdout", true, "c"),
            record("stderr", true, "oops"),
            b"garbage".to_vec(),
        ];
        let chunks = chunks_of(recs.iter().map(Vec::as_slice), false);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].data, b"a\nbc\n");
        assert_eq!(chunks[0].stream, "stdout");
        assert_eq!(chunks[1].data, b"oops\n");
        assert_eq!(chunks[1].stream, "stderr");

        let stamped = chunks_of([recs[0].as_slice()], true);
        assert_eq!(stamped[0].data, b"2026-01-01T00:00:00.000000000Z a\n");
    }
}
