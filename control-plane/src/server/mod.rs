//! The control-plane member: [`run`] opens the store, starts Raft, serves `RaftService` and
//! `ObjectService` on one listener, initialises or joins the cluster, runs the
//! [`LeaderTask`]s while leader, and shuts down cleanly when its token is cancelled.
//!
//! A data directory holds `identity.json` (member id, name, cluster id) and the sled database
//! `db/`. The identity is written once, before the member takes part in any cluster, so a
//! restart can never change which cluster a directory belongs to.

pub mod api;
pub mod batcher;
mod handover;
pub mod identity;
pub mod leader;

pub use api::{ApiError, ObjectApi};
pub use identity::Identity;
pub use leader::{LeaderContext, LeaderTask};

use self::handover::{Handover, Leadership, Tenure};
use crate::raft::{GrpcNetwork, RaftConfigError, RaftGrpc, RaftTuning, MAX_MESSAGE_BYTES};
use crate::store::sled_kv::CACHE_BYTES;
use crate::store::state_machine::TREES;
use crate::store::{Durability, KvBackend, LogStore, SledBackend, StateMachine, StoreError};
use crate::types::{MemberNode, Raft};
use gantry_api::proto::object_service_client::ObjectServiceClient;
use gantry_api::proto::object_service_server::ObjectServiceServer;
use gantry_api::proto::raft_service_server::RaftServiceServer;
use gantry_api::proto::{AddMemberRequest, MembersRequest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a member enters a cluster when its data directory is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Start a new single-member cluster.
    Init,
    /// Join the cluster of the member at this address (`host:port`).
    Join(String),
    /// Only restart from an existing data directory.
    Restart,
}

/// How long a stopping member waits for open calls before it drops their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Time a stopping leader gives each step of a handover (its writes in flight, a follower
/// catching up, the follower taking over); waiting out its leader lease comes on top.
const HANDOVER_STEP: Duration = Duration::from_secs(1);

/// Everything a member needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// The member's name (a DNS-1123 label).
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The address peers and clients reach it at; default: the listener's address.
    pub advertise: Option<String>,
    /// Init, join or restart.
    pub bootstrap: Bootstrap,
    /// Raft timing and compaction.
    pub raft: RaftTuning,
    /// Deadline of a write or linearizable read (no quorum → unavailable).
    pub request_timeout: Duration,
    /// Changes kept for watch resumption.
    pub watch_history: u64,
    /// Events buffered per watcher before it blocks; a watcher that falls further behind the
    /// shared ring is cut off.
    pub watch_buffer: usize,
    /// Live changes buffered for all watchers; a watcher further behind is cut off.
    pub watch_ring: usize,
    /// Work run only while this member leads.
    pub leader_tasks: Vec<Arc<dyn LeaderTask>>,
}

impl ServerConfig {
    /// A configuration with defaults: 5 s request deadline, 10,000 changes of history.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        bootstrap: Bootstrap,
    ) -> Self {
        ServerConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            advertise: None,
            bootstrap,
            raft: RaftTuning::default(),
            request_timeout: Duration::from_secs(5),
            watch_history: crate::store::state_machine::DEFAULT_HISTORY,
            watch_buffer: 256,
            watch_ring: crate::store::state_machine::DEFAULT_RING,
            leader_tasks: Vec::new(),
        }
    }
}

/// Page cache of the Raft log's database.
const LOG_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// The Raft log's store and the state machine's.
type Stores = (Arc<dyn KvBackend>, Arc<dyn KvBackend>);

/// Opens the Raft log's database (`<data>/db`) and the state machine's (`<data>/state`).
///
/// They are separate because sled writes out a database's buffers in order: in one database,
/// every log flush (on the commit path) waited for the state machine's buffer writes before it
/// (each applied batch then sealed sled's buffer and wrote it out; batches are now redo
/// records, see `store::sled_kv`), about doubling the disk time of a write. Nothing needs them
/// in step: the state machine records its own applied log id, and openraft re-applies the log
/// after it. A data dir from before the split keeps both in `db`.
///
/// The two share the page cache one database used to have: the log is read near its end, the
/// state machine everywhere.
fn open_stores(dir: &Path) -> Result<Stores, ServerError> {
    let log = SledBackend::open_with_cache(&dir.join("db"), LOG_CACHE_BYTES)?;
    let sm: Arc<dyn KvBackend> = if TREES.iter().any(|t| log.has_tree(t)) {
        Arc::new(log.clone())
    } else {
        let cache = CACHE_BYTES - LOG_CACHE_BYTES;
        Arc::new(SledBackend::open_with_cache(&dir.join("state"), cache)?)
    };
    Ok((Arc::new(log), sm))
}

/// Errors that stop a member.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The Raft configuration is invalid.
    #[error(transparent)]
    RaftConfig(#[from] RaftConfigError),
    /// The data directory cannot be used.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Joining failed.
    #[error("join {addr}: {message}")]
    Join {
        /// The address given to `--join`.
        addr: String,
        /// Why.
        message: String,
    },
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Socket error.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

async fn connect(addr: &str) -> Result<ObjectServiceClient<tonic::transport::Channel>, String> {
    let ch = crate::raft::network::channel(addr).map_err(|e| format!("invalid address: {e}"))?;
    Ok(ObjectServiceClient::new(ch))
}

/// Asks `addr` for its cluster id, proving it is a Gantry member.
async fn cluster_of(addr: &str) -> Result<String, ServerError> {
    let err = |message: String| ServerError::Join {
        addr: addr.to_string(),
        message,
    };
    let mut client = connect(addr).await.map_err(err)?;
    let call = client.members(MembersRequest {});
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => Err(err("no answer within 10s".into())),
        Ok(Err(s)) => Err(err(format!(
            "not a reachable gantry control-plane member ({}: {})",
            s.code(),
            s.message()
        ))),
        Ok(Ok(r)) => {
            let id = r.into_inner().cluster_id;
            if id.is_empty() {
                Err(err("the member there belongs to no cluster yet".into()))
            } else {
                Ok(id)
            }
        }
    }
}

/// Resolves this member's identity from its data dir and bootstrap mode. Returns it and
/// whether the directory was new.
async fn resolve_identity(config: &ServerConfig) -> Result<(Identity, bool), ServerError> {
    let existing = Identity::load(&config.data_dir)?;
    match (existing, &config.bootstrap) {
        (Some(id), Bootstrap::Join(addr)) => {
            let theirs = cluster_of(addr).await?;
            if theirs != id.cluster_id {
                return Err(ServerError::DataDir {
                    path: config.data_dir.display().to_string(),
                    message: format!(
                        "belongs to cluster {} but {addr} is a member of cluster {theirs}",
                        id.cluster_id
                    ),
                });
            }
            check_name(&id, config)?;
            Ok((id, false))
        }
        (Some(id), _) => {
            check_name(&id, config)?;
            Ok((id, false))
        }
        (None, Bootstrap::Restart) => Err(ServerError::DataDir {
            path: config.data_dir.display().to_string(),
            message: "holds no member: pass --init to start a cluster or --join ADDR".into(),
        }),
        (None, Bootstrap::Init) => {
            let id = Identity::fresh(&config.name, None);
            id.save(&config.data_dir)?;
            Ok((id, true))
        }
        (None, Bootstrap::Join(addr)) => {
            let cluster = cluster_of(addr).await?;
            let id = Identity::fresh(&config.name, Some(cluster));
            id.save(&config.data_dir)?;
            Ok((id, true))
        }
    }
}

fn check_name(id: &Identity, config: &ServerConfig) -> Result<(), ServerError> {
    if id.name != config.name {
        return Err(ServerError::DataDir {
            path: config.data_dir.display().to_string(),
            message: format!("belongs to member {:?}, not {:?}", id.name, config.name),
        });
    }
    Ok(())
}

/// A running member's handles, for embedding (tests, the CLI). The store keeps the sled
/// database open (and locked) until every clone is dropped.
#[derive(Clone)]
pub struct MemberHandle {
    /// The Raft handle.
    pub raft: Raft,
    /// The local object store.
    pub store: crate::store::ObjectStore,
    /// Identity.
    pub identity: Identity,
    /// The advertised address.
    pub addr: String,
}

/// Runs one member until `shutdown` is cancelled.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_with(config, listener, shutdown, |_| {}).await
}

/// [`run`], calling `started` with the member's handles once it serves.
pub async fn run_with(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    started: impl FnOnce(MemberHandle),
) -> Result<(), ServerError> {
    gantry_api::objects::validate_name(&config.name)
        .map_err(|e| ServerError::Config(format!("--name: {e}")))?;
    let addr = match &config.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir {
        path: config.data_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let (identity, _) = resolve_identity(&config).await?;
    let (log_kv, sm_kv) = open_stores(&config.data_dir)?;
    // The leader flushes its log in parallel with replicating it; the state machine and the
    // network hold back every use of a commit until that flush is done.
    let durability = Durability::new();
    let faults = durability.clone();
    let sm = StateMachine::open_with_ring(sm_kv.clone(), config.watch_history, config.watch_ring)?
        .with_durability(durability.clone());
    let store = sm.object_store();
    let raft_config = Arc::new(config.raft.to_config()?);
    let raft = Raft::new(
        identity.id,
        raft_config,
        GrpcNetwork::new(&identity.cluster_id).with_durability(durability.clone()),
        LogStore::with_early_leader_appends(log_kv.clone(), identity.id, durability),
        sm,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    // Pristine (no vote, no log) rather than "new directory": a member that crashed between
    // saving its identity and initialising or joining finishes that step on restart.
    let pristine = !raft
        .is_initialized()
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

    let api = ObjectApi::new(
        identity.id,
        raft.clone(),
        store.clone(),
        &identity.cluster_id,
        config.request_timeout,
        config.watch_buffer,
    );
    let batcher = api.batcher();
    let stop_serving = CancellationToken::new();
    let server = {
        let stop = stop_serving.clone();
        // `Server::tcp_nodelay` only applies to listeners tonic binds itself: set it on ours,
        // or Nagle holds back small replies (Raft acks, write answers) behind unacked data.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                RaftServiceServer::new(RaftGrpc::new(
                    raft.clone(),
                    &identity.cluster_id,
                    stop_serving.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ObjectServiceServer::new(api)
                    .max_decoding_message_size(api::MAX_API_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        })
    };
    tracing::info!(member = %config.name, id = identity.id, cluster = %identity.cluster_id,
        %addr, "listening");

    let ctx = LeaderContext {
        raft: raft.clone(),
        store: store.clone(),
        member: config.name.clone(),
    };
    let stop_leadership = shutdown.child_token();
    let tenure = Tenure::default();
    let leadership = tokio::spawn(leader::watch_leadership(
        identity.id,
        ctx,
        config.leader_tasks.clone(),
        tenure.clone(),
        stop_leadership.clone(),
    ));

    let node = MemberNode {
        name: config.name.clone(),
        addr: addr.clone(),
    };
    let joined = match (&config.bootstrap, pristine) {
        (Bootstrap::Init, true) => raft
            .initialize(BTreeMap::from([(identity.id, node)]))
            .await
            .map_err(|e| ServerError::Raft(format!("initialize: {e}"))),
        (Bootstrap::Join(join), true) => join_cluster(join, &identity, &node, &shutdown).await,
        _ => Ok(()),
    };
    let mut fatal: Option<String> = None;
    if joined.is_ok() {
        started(MemberHandle {
            raft: raft.clone(),
            store,
            identity: identity.clone(),
            addr: addr.clone(),
        });
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!(member = %config.name, "shutting down");
            }
            reason = raft_stopped(&raft) => {
                // The consensus core ended by itself (a storage failure such as a full or
                // read-only disk): a member that can no longer persist must not linger.
                // openraft may name a consequence (a closed channel); the store's first
                // error names the cause.
                let reason = match faults.first_fault() {
                    Some(cause) if !reason.contains(&cause) => format!("{cause} ({reason})"),
                    _ => reason,
                };
                tracing::error!(member = %config.name, %reason, "raft stopped; shutting down");
                fatal = Some(reason);
            }
        }
    }

    stop_leadership.cancel();
    let _ = leadership.await;
    if fatal.is_none() && joined.is_ok() {
        let handover = Leadership {
            raft: &raft,
            id: identity.id,
            cluster_id: &identity.cluster_id,
            batcher: &batcher,
            tenure: &tenure,
            lease: config.raft.election_max,
        };
        let started = Instant::now();
        match handover.hand_over(HANDOVER_STEP).await {
            Handover::HandedTo { id, name, term } => tracing::info!(member = %config.name,
                to = %name, to_id = id, term, elapsed = ?started.elapsed(),
                "handed leadership over"),
            Handover::Failed(why) => tracing::warn!(member = %config.name, %why,
                "leadership handover failed; the other members elect a leader after their \
                 election timeout"),
            Handover::NotLeader | Handover::Alone => {}
        }
    }
    // Raft stops last: the calls still open need it (writes held during a handover go on
    // now, refused here and forwarded to the new leader).
    stop_serving.cancel();
    // Graceful shutdown waits for open calls, and a watch never ends by itself: give calls a
    // moment to finish, then drop the connections.
    let mut server = server;
    let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(member = %config.name, "closing open watches and calls");
            server.abort();
            Ok(Ok(()))
        }
    };
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    // A full disk may refuse this flush too: the reason Raft stopped is the one to report.
    let flushed = match log_kv.flush().await {
        Ok(()) => sm_kv.flush().await,
        Err(e) => Err(e),
    };
    if let Some(reason) = fatal {
        return Err(ServerError::Raft(format!("stopped: {reason}")));
    }
    flushed?;
    joined?;
    match served {
        Ok(r) => r?,
        Err(e) => return Err(ServerError::Raft(format!("server task: {e}"))),
    }
    tracing::info!(member = %config.name, "stopped");
    Ok(())
}

/// Resolves when the Raft core has stopped on its own, with the reason it gives.
async fn raft_stopped(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    while metrics.changed().await.is_ok() {}
    match raft.ensure_linearizable().await {
        Err(openraft::error::RaftError::Fatal(f)) => f.to_string(),
        Err(e) => e.to_string(),
        Ok(_) => "the consensus core stopped".to_string(),
    }
}

/// Asks `join` to add this member, retrying while the cluster is busy.
async fn join_cluster(
    join: &str,
    identity: &Identity,
    node: &MemberNode,
    shutdown: &CancellationToken,
) -> Result<(), ServerError> {
    let err = |message: String| ServerError::Join {
        addr: join.to_string(),
        message,
    };
    let mut client = connect(join).await.map_err(err)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = AddMemberRequest {
            id: identity.id,
            name: node.name.clone(),
            addr: node.addr.clone(),
        };
        match client.add_member(req).await {
            Ok(r) => {
                let cluster = r.into_inner().cluster_id;
                if cluster != identity.cluster_id {
                    return Err(err(format!(
                        "joined cluster {cluster}, expected {}",
                        identity.cluster_id
                    )));
                }
                tracing::info!(member = %node.name, via = %join, "joined cluster");
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tracing::info!(member = %node.name, via = %join, reason = %s.message(),
                    "join not accepted yet, retrying");
            }
            Err(s) => return Err(err(format!("{}: {}", s.code(), s.message()))),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(err("shut down while joining".into())),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriteBatch;

    #[tokio::test]
    async fn log_and_state_get_their_own_databases_and_old_data_dirs_keep_one() {
        let new = tempfile::tempdir().unwrap();
        let (log, sm) = open_stores(new.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b"k".to_vec(), b"v".to_vec());
        sm.apply("sm_a", batch).unwrap();
        assert!(new.path().join("state").is_dir(), "state machine database");
        assert_eq!(
            log.get("sm_a", b"k").unwrap(),
            None,
            "not in the log's database"
        );
        drop((log, sm));

        // A data dir from before the split: the state machine's trees are in `db`.
        let old = tempfile::tempdir().unwrap();
        let db = SledBackend::open(&old.path().join("db")).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b"k".to_vec(), b"old".to_vec());
        db.apply("sm_a", batch).unwrap();
        db.flush().await.unwrap();
        drop(db);
        let (_log, sm) = open_stores(old.path()).unwrap();
        assert_eq!(sm.get("sm_a", b"k").unwrap(), Some(b"old".to_vec()));
        assert!(!old.path().join("state").exists(), "no second database");
    }
}
