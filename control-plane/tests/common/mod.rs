//! Helpers for in-process clusters over loopback gRPC.
#![allow(dead_code)]

pub mod procs;

use gantry_api::model::{NodeStatus, ReplicaSpec, ReplicaStatus};
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::object_service_client::ObjectServiceClient;
use gantry_api::proto::{
    self, CreateRequest, DeleteRequest, GetRequest, ListRequest, MembersRequest, UpdateRequest,
};
use gantry_control_plane::controllers::{default_controllers, ControllerConfig};
use gantry_control_plane::raft::RaftTuning;
use gantry_control_plane::server::{
    run_with, Bootstrap, LeaderTask, MemberHandle, ServerConfig, ServerError,
};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Generous: tests run on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Client = ObjectServiceClient<Channel>;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `f` until it yields `Some`, or panics after [`DEADLINE`] naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn tuning() -> RaftTuning {
    RaftTuning::default()
}

pub struct Options {
    pub tuning: RaftTuning,
    pub history: u64,
    pub request_timeout: Duration,
    pub leader_tasks: Vec<Arc<dyn LeaderTask>>,
    pub watch_buffer: usize,
    pub watch_ring: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tuning: tuning(),
            history: 10_000,
            request_timeout: Duration::from_secs(5),
            leader_tasks: Vec::new(),
            watch_buffer: 256,
            watch_ring: 1024,
        }
    }
}

pub struct Member {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), ServerError>>>,
    pub handle: MemberHandle,
}

/// Starts a member on `addr` (or a fresh loopback port) and waits until it serves.
pub async fn start(
    name: &str,
    dir: PathBuf,
    addr: Option<&str>,
    bootstrap: Bootstrap,
    opts: &Options,
) -> Result<Member, ServerError> {
    let listener = TcpListener::bind(addr.unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?.to_string();
    let mut config = ServerConfig::new(name, dir.clone(), bootstrap);
    config.raft = opts.tuning.clone();
    config.watch_history = opts.history;
    config.request_timeout = opts.request_timeout;
    config.leader_tasks = opts.leader_tasks.clone();
    config.watch_buffer = opts.watch_buffer;
    config.watch_ring = opts.watch_ring;
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run_with(config, listener, shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    let handle = match tokio::time::timeout(DEADLINE * 3, rx).await {
        Ok(Ok(h)) => h,
        _ => {
            shutdown.cancel();
            return Err(task
                .await
                .expect("member task")
                .expect_err("member stopped early"));
        }
    };
    Ok(Member {
        name: name.to_string(),
        dir,
        addr,
        shutdown,
        task: Some(task),
        handle,
    })
}

impl Member {
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(DEADLINE, task).await;
            r.expect("member stops in time")
                .expect("member task")
                .expect("clean stop");
        }
    }

    pub async fn client(&self) -> Client {
        client(&self.addr).await
    }

    pub fn is_leader(&self) -> bool {
        let m = self.handle.raft.metrics().borrow().clone();
        m.current_leader == Some(self.handle.identity.id)
            && m.state == openraft::ServerState::Leader
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn client(addr: &str) -> Client {
    ObjectServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// Starts member `name` in `root/name`, joining the cluster through the member at `via`.
pub async fn join(
    name: &str,
    root: &std::path::Path,
    via: &str,
    opts: &Options,
) -> Result<Member, ServerError> {
    let bootstrap = Bootstrap::Join(via.to_string());
    start(name, root.join(name), None, bootstrap, opts).await
}

/// Starts a three-member cluster: s1 inits, s2 and s3 join through s1.
pub async fn cluster(root: &std::path::Path, opts: &Options) -> Vec<Member> {
    let s1 = start("s1", root.join("s1"), None, Bootstrap::Init, opts)
        .await
        .expect("s1");
    wait_for("s1 to lead", || async { s1.is_leader().then_some(()) }).await;
    let s2 = join("s2", root, &s1.addr, opts).await.expect("s2");
    let s3 = join("s3", root, &s1.addr, opts).await.expect("s3");
    let members = vec![s1, s2, s3];
    wait_for_voters(&members[0].addr, 3).await;
    members
}

pub async fn wait_for_voters(addr: &str, n: usize) {
    let mut c = client(addr).await;
    wait_for("voters", || {
        let mut c = c.clone();
        async move {
            let m = c.members(MembersRequest {}).await.ok()?.into_inner();
            (m.members.iter().filter(|m| m.voter).count() == n
                && m.members.iter().any(|m| m.leader))
            .then_some(())
        }
    })
    .await;
    let _ = &mut c;
}

pub async fn leader_index(members: &[Member]) -> usize {
    wait_for("a leader", || async {
        members.iter().position(|m| m.is_leader())
    })
    .await
}

pub fn node_json(name: &str, spec: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "Node",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("json")
}

pub async fn create_node(c: &mut Client, name: &str) -> proto::WriteResponse {
    c.create(CreateRequest {
        object: Some(proto::Object {
            kind: "Node".into(),
            name: name.into(),
            resource_version: 0,
            json: node_json(name, serde_json::json!({"n": 1})),
        }),
    })
    .await
    .expect("create")
    .into_inner()
}

pub async fn get_stale(c: &mut Client, name: &str) -> Option<proto::Object> {
    c.get(GetRequest {
        kind: "Node".into(),
        name: name.into(),
        consistency: proto::Consistency::Stale as i32,
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().object)
}

/// Starts a lone member s1 under `root` with `opts` and waits until it leads.
pub async fn one_member(root: &std::path::Path, opts: &Options) -> Member {
    let m = start("s1", root.join("s1"), None, Bootstrap::Init, opts)
        .await
        .expect("s1");
    wait_for("s1 to lead", || async { m.is_leader().then_some(()) }).await;
    m
}

/// Lists `kind`, retrying while the cluster elects a leader.
pub async fn list(c: &mut Client, kind: Kind) -> Vec<Object> {
    let start = std::time::Instant::now();
    loop {
        let r = c
            .list(ListRequest {
                kind: kind.to_string(),
                consistency: proto::Consistency::Linearizable as i32,
            })
            .await;
        match r {
            Ok(r) => {
                return r
                    .into_inner()
                    .items
                    .iter()
                    .map(|o| Object::from_json(&o.json).expect("object"))
                    .collect()
            }
            Err(e) => assert!(start.elapsed() < DEADLINE, "list {kind}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get(c: &mut Client, kind: Kind, name: &str) -> Option<Object> {
    list(c, kind)
        .await
        .into_iter()
        .find(|o| o.metadata.name == name)
}

pub fn envelope(o: &Object) -> Option<proto::Object> {
    Some(proto::Object {
        kind: o.kind.to_string(),
        name: o.metadata.name.clone(),
        resource_version: o.resource_version(),
        json: o.to_json(),
    })
}

pub async fn create(c: &mut Client, o: &Object) {
    c.create(CreateRequest {
        object: envelope(o),
    })
    .await
    .expect("create");
}

pub async fn delete(c: &mut Client, kind: Kind, name: &str) {
    c.delete(DeleteRequest {
        kind: kind.to_string(),
        name: name.into(),
        expected_resource_version: 0,
    })
    .await
    .expect("delete");
}

/// Read-modify-write with compare-and-swap, retrying on conflict.
pub async fn modify(c: &mut Client, kind: Kind, name: &str, f: impl Fn(&mut Object)) {
    for _ in 0..50 {
        let mut o = get(c, kind, name).await.expect("object exists");
        f(&mut o);
        if c.update(UpdateRequest {
            object: envelope(&o),
        })
        .await
        .is_ok()
        {
            return;
        }
    }
    panic!("could not update {kind}/{name}");
}

/// Waits until a replica of `service` is marked Unschedulable; answers the scheduler's message.
pub async fn unschedulable_message(c: &mut Client, service: &str) -> String {
    wait_for(&format!("{service} to be unschedulable"), || {
        let mut c = c.clone();
        async move {
            let r = list(&mut c, Kind::Replica).await.into_iter().find(|r| {
                r.spec_as::<ReplicaSpec>()
                    .is_ok_and(|s| s.service == service)
            })?;
            let st: ReplicaStatus = r.status_as().unwrap();
            // Lazily: a replica seen before the scheduler marked it has no message yet.
            (st.reason.as_deref() == Some("Unschedulable")).then(|| st.message.unwrap_or_default())
        }
    })
    .await
}

/// Options of a member running the default controllers with `cfg`.
pub fn with_controllers(cfg: ControllerConfig) -> Options {
    Options {
        leader_tasks: default_controllers(cfg),
        ..Options::default()
    }
}

/// A ready Node object with room for a few small replicas.
pub fn ready_node(name: &str) -> Object {
    let mut o = Object::new(Kind::Node, name);
    o.spec = serde_json::json!({"address": "127.0.0.1:1",
        "capacity": {"cpu": "2", "memory": "1Gi", "replicas": 20}});
    o.set_status(&NodeStatus {
        ready: true,
        last_heartbeat: Some(gantry_api::events::now_rfc3339_millis()),
        ..NodeStatus::default()
    });
    o
}
