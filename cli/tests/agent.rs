//! The node agent against real containers and a real control plane: a `gantry server` and a
//! `gantry agent` process per test, replicas created directly through the client (bound to
//! the node by hand, so no controller is needed).
//!
//! Most tests run the agent in the host's network namespace with `--network none` (replicas
//! get `lo` only). The replica networking tests run it in a network namespace of their own
//! (`ip netns add gantry-test-…`, entered with `nsenter --net`, deleted by a drop guard),
//! reaching the in-process control plane through a proxy whose listening socket was made in
//! that namespace; they set the Node's subnet by hand, as the control plane's network
//! controller would.

mod common;

use common::{inspect, wait_for, Root, IMAGE};
use gantry_api::client::Client;
use gantry_api::model::{
    ContainerTemplate, EnvVar, ExecAction, HttpGetAction, NodeSpec, PortRef, Probe, ReplicaSpec,
    ReplicaStatus, RestartPolicy, TcpSocketAction,
};
use gantry_api::objects::{Kind, Object};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NODE: &str = "n1";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP proxy in front of the control plane: the agent talks through it, so cutting it
/// makes the control plane unreachable for the agent only.
struct Proxy {
    token: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

/// Binds `listen` inside the network namespace file `netns` from the calling thread, then
/// returns the thread to its own namespace (a socket stays in the namespace it was made in).
fn bind_in_netns(netns: &Path, listen: &str) -> std::net::TcpListener {
    use nix::sched::{setns, CloneFlags};
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let target = std::fs::File::open(netns).unwrap();
    setns(&target, CloneFlags::CLONE_NEWNET).unwrap();
    let bound = std::net::TcpListener::bind(listen);
    setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
    let l = bound.unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

impl Proxy {
    fn start(listen: String, target: String) -> Proxy {
        Proxy::start_in(None, listen, target)
    }

    /// A proxy listening in `netns` (when given) and connecting from this namespace.
    fn start_in(netns: Option<PathBuf>, listen: String, target: String) -> Proxy {
        let token = CancellationToken::new();
        let stop = token.clone();
        let thread = std::thread::spawn(move || {
            let pre_bound = netns.map(|ns| bind_in_netns(&ns, &listen));
            rt().block_on(async move {
                let listener = loop {
                    if let Some(l) = pre_bound {
                        break tokio::net::TcpListener::from_std(l).unwrap();
                    }
                    match tokio::net::TcpListener::bind(&listen).await {
                        Ok(l) => break l,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                loop {
                    let (mut inbound, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    };
                    let (stop, target) = (stop.clone(), target.clone());
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    });
                }
            });
        });
        Proxy { token, thread }
    }

    fn stop(self) {
        self.token.cancel();
        let _ = self.thread.join();
    }
}

/// A control plane, an agent and a runtime root; kills both processes (by pid) and removes
/// every container when dropped.
struct Cluster {
    root: Root,
    dir: tempfile::TempDir,
    addr: String,
    proxy_addr: String,
    proxy: Option<Proxy>,
    server: Option<(CancellationToken, std::thread::JoinHandle<()>)>,
    agent: Option<Child>,
    agents_started: u32,
    rt: tokio::runtime::Runtime,
    /// The agent's own network namespace (replica networking tests); `None`: the host's,
    /// with `--network none`.
    netns: Option<TestNetns>,
}

/// A network namespace made for one test (`ip netns add`), with `lo` up; deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> TestNetns {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = TestNetns {
            name: format!("gantry-test-{}-{n}", std::process::id()),
        };
        run_ok("ip", &["netns", "add", &ns.name]);
        run_ok("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command to success; returns its stdout.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn new(with_image: bool) -> Cluster {
        Cluster::build(with_image, false)
    }

    /// A cluster whose agent runs in its own network namespace with replica networking on.
    fn networked() -> Cluster {
        Cluster::build(true, true)
    }

    fn build(with_image: bool, networked: bool) -> Cluster {
        let root = if with_image {
            Root::with_sample()
        } else {
            Root::empty()
        };
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster {
            root,
            dir,
            addr,
            proxy_addr: format!("127.0.0.1:{}", free_port()),
            proxy: None,
            server: None,
            agent: None,
            agents_started: 0,
            rt: rt(),
            netns: networked.then(TestNetns::new),
        };
        c.start_server(true);
        c.proxy = Some(Proxy::start_in(
            c.netns.as_ref().map(TestNetns::path),
            c.proxy_addr.clone(),
            c.addr.clone(),
        ));
        c.start_agent(&[]);
        c.wait_node_ready();
        c
    }

    /// Runs a control-plane member in-process without leader controllers (so replicas made
    /// by hand are neither deleted as orphans nor rescheduled), on a thread of its own.
    fn start_server(&mut self, init: bool) {
        use gantry_control_plane::server::{Bootstrap, ServerConfig};
        let data = self.dir.path().join("s1");
        let bootstrap = if init {
            Bootstrap::Init
        } else {
            Bootstrap::Restart
        };
        let config = ServerConfig::new("s1".to_string(), data, bootstrap);
        let token = CancellationToken::new();
        let stop = token.clone();
        let addr = self.addr.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = loop {
                    match tokio::net::TcpListener::bind(&addr).await {
                        Ok(l) => break l,
                        // The previous member's socket may linger a moment.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                if let Err(e) = gantry_control_plane::server::run(config, listener, stop).await {
                    eprintln!("control plane failed: {e}");
                }
            });
        });
        self.server = Some((token, thread));
        let addr = self.addr.clone();
        wait_for(
            "the control plane to answer",
            Duration::from_secs(30),
            || {
                self.rt.block_on(async {
                    match Client::connect(std::slice::from_ref(&addr)).await {
                        Ok(mut c) => c.list(Kind::Node).await.is_ok(),
                        Err(_) => false,
                    }
                })
            },
        );
    }

    fn stop_server(&mut self) {
        if let Some((token, thread)) = self.server.take() {
            token.cancel();
            let deadline = Instant::now() + Duration::from_secs(1);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // A member that does not wind down in time is left to the process exit.
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    fn agent_command(&mut self, extra: &[&str]) -> Command {
        self.agents_started += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("agent-{}.log", self.agents_started)),
        )
        .unwrap();
        let mut cmd = match &self.netns {
            // nsenter execs the agent: the pid stays the one we kill.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path().display()))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_gantry"))
                    .arg("--root")
                    .arg(self.root.path());
                c
            }
            None => self.root.command(&[]),
        };
        cmd.args([
            "--server",
            &self.proxy_addr,
            "agent",
            "--name",
            NODE,
            "--heartbeat",
            "200ms",
            "--poll",
            "100ms",
            "--resync",
            "1s",
            "--backoff-base",
            "300ms",
            "--backoff-max",
            "5s",
            "--stop-grace",
            "1s",
        ]);
        if self.netns.is_none() {
            cmd.args(["--network", "none"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    fn start_agent(&mut self, extra: &[&str]) {
        let child = self
            .agent_command(extra)
            .spawn()
            .expect("spawn gantry agent");
        self.agent = Some(child);
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill(); // SIGKILL by pid
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        self.rt
            .block_on(Client::connect(std::slice::from_ref(&self.addr)))
            .expect("connect")
    }

    fn wait_node_ready(&self) {
        wait_for("the node to register", Duration::from_secs(30), || {
            let mut c = self.client();
            self.rt
                .block_on(c.get(Kind::Node, NODE))
                .ok()
                .flatten()
                .is_some()
        });
    }

    fn create_replica(&self, name: &str, template: ContainerTemplate) {
        let mut obj = Object::new(Kind::Replica, name);
        obj.set_spec(&ReplicaSpec {
            service: "svc".into(),
            node_name: Some(NODE.into()),
            template,
            template_hash: "h1".into(),
            node_selector: Default::default(),
        });
        let mut c = self.client();
        self.rt.block_on(c.create(&obj)).expect("create replica");
    }

    fn delete_replica(&self, name: &str) {
        let mut c = self.client();
        self.rt
            .block_on(c.delete(Kind::Replica, name, None))
            .expect("delete replica");
    }

    fn status(&self, name: &str) -> ReplicaStatus {
        let mut c = self.client();
        match self.rt.block_on(c.get(Kind::Replica, name)) {
            Ok(Some(o)) => o.status_as().unwrap_or_default(),
            _ => ReplicaStatus::default(),
        }
    }

    /// Waits until the replica's status satisfies `cond`; returns it.
    fn wait_status(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        cond: impl Fn(&ReplicaStatus) -> bool,
    ) -> ReplicaStatus {
        let start = Instant::now();
        loop {
            let s = self.status(name);
            if cond(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {name} to be {what}; last status {s:?}\nagent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agent_log(&self) -> String {
        let p = self
            .dir
            .path()
            .join(format!("agent-{}.log", self.agents_started));
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Containers of `replica` on the node (via `gantry ps -a -q` + inspect); one the agent
    /// removes between the two calls is skipped.
    fn containers(&self, replica: &str) -> Vec<serde_json::Value> {
        self.root
            .ok(&["ps", "-a", "-q"])
            .split_whitespace()
            .filter_map(|id| {
                let out = self.root.gantry(&["inspect", id]);
                out.status.success().then(|| {
                    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("inspect json")
                })
            })
            .filter(|j| j["spec"]["labels"]["gantry.io/replica"] == replica)
            .collect()
    }

    fn running(&self, replica: &str) -> Vec<serde_json::Value> {
        self.containers(replica)
            .into_iter()
            .filter(|j| j["status"] == "running")
            .collect()
    }
}

impl Cluster {
    /// Runs `gantry --server CONTROL-PLANE ARGS…` (the CLI side of logs and exec) to
    /// completion, at most 60 s.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        common::run_with_deadline(self.cli_command(args), Duration::from_secs(60))
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.root.command(&["--server", &self.addr]);
        cmd.args(args);
        cmd
    }

    /// Runs the CLI and asserts success; returns (stdout, stderr).
    fn cli_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.cli(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "gantry {args:?} failed with {:?}: {stdout}{stderr}\nagent log:\n{}",
            out.status.code(),
            self.agent_log()
        );
        (stdout, stderr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        Cluster::kill(&mut self.agent);
        if let Some(p) = self.proxy.take() {
            p.stop();
        }
        self.stop_server();
        if self.netns.is_some() {
            // Containers first (they hold the sandboxes), then the sandboxes' mounts, which
            // would keep the root from being removed; the namespace guard goes last.
            remove_all_containers(&self.root);
            if let Ok(entries) = std::fs::read_dir(self.root.path().join("netns")) {
                for e in entries.filter_map(Result::ok) {
                    let _ = Command::new("umount")
                        .arg(e.path())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // `self.root` removes every container when dropped; `self.netns` goes with the
        // agent's bridge and veths.
    }
}

fn remove_all_containers(root: &Root) {
    let out = root.command(&["ps", "-a", "-q"]).output();
    if let Ok(out) = out {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = root
                .command(&["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Extension: a root without the sample image.
trait EmptyRoot {
    fn empty() -> Root;
}

impl EmptyRoot for Root {
    fn empty() -> Root {
        common::require_root();
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-roots");
        std::fs::create_dir_all(&base).unwrap();
        Root {
            dir: tempfile::Builder::new()
                .prefix("gantry-agent-")
                .tempdir_in(base)
                .unwrap(),
        }
    }
}

fn serve() -> ContainerTemplate {
    ContainerTemplate {
        image: IMAGE.into(),
        ..Default::default()
    }
}

fn workload(args: &[&str]) -> ContainerTemplate {
    ContainerTemplate {
        image: IMAGE.into(),
        command: vec!["/app/gantry-workload".into()],
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn shell(script: &str) -> ContainerTemplate {
    ContainerTemplate {
        image: IMAGE.into(),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

fn probe() -> Probe {
    Probe {
        exec: None,
        http_get: None,
        tcp_socket: None,
        initial_delay_seconds: 0,
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: 2,
    }
}

fn kill_pid(pid: i64) {
    assert!(pid > 0, "no pid to kill");
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 {pid}");
}

#[test]
fn replica_runs_is_restarted_when_killed_and_removed_when_deleted() {
    let c = Cluster::new(true);

    // Bound to the node: the agent runs it and reports Running, ready, with its container.
    c.create_replica("web", serve());
    let s = c.wait_status("web", "running and ready", 30, |s| {
        s.phase == gantry_api::model::Phase::Running && s.ready && s.container_id.is_some()
    });
    let first = s.container_id.clone().unwrap();
    assert_eq!(s.restart_count, 0);
    assert!(s.start_time.is_some());

    // Its process killed: the agent restarts it (policy Always) and counts the restart.
    let pid = inspect(&c.root, &first)["state"]["pid"].as_i64().unwrap();
    kill_pid(pid);
    let s = c.wait_status("web", "restarted once", 30, |s| {
        s.restart_count == 1 && s.ready && s.container_id.as_deref() != Some(first.as_str())
    });
    assert_eq!(s.last_exit_code, Some(137));
    assert_eq!(c.running("web").len(), 1, "exactly one container runs");

    // Deleted: its containers are stopped and removed.
    c.delete_replica("web");
    wait_for(
        "the replica's containers to be removed",
        Duration::from_secs(30),
        || c.containers("web").is_empty(),
    );
}

#[test]
fn crashing_replica_backs_off_with_growing_delays() {
    let c = Cluster::new(true);
    c.create_replica("crash", workload(&["exit", "1"]));

    let s = c.wait_status("crash", "in CrashLoopBackOff", 30, |s| {
        s.reason.as_deref() == Some("CrashLoopBackOff") && s.last_exit_code == Some(1)
    });
    assert!(!s.ready);

    // Restarts keep coming, each after a longer wait (300ms, 600ms, 1.2s, 2.4s…).
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut last = c.status("crash").restart_count;
    while seen.len() < 3 {
        let s = c.wait_status("crash", "restarted again", 30, |s| s.restart_count > last);
        seen.push((s.restart_count, start.elapsed()));
        last = s.restart_count;
    }
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps[1] > gaps[0],
        "back-off should grow: restarts at {seen:?}"
    );
    assert!(c.running("crash").len() <= 1);
}

#[test]
fn probes_restart_unhealthy_and_gate_readiness() {
    let c = Cluster::new(true);

    // Liveness: /healthz fails (HEALTHZ_FAIL=1) → the container is killed and restarted.
    let mut live = serve();
    live.env = vec![EnvVar {
        name: "HEALTHZ_FAIL".into(),
        value: "1".into(),
    }];
    live.liveness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/healthz".into(),
            port: PortRef::Number(8080),
            host: None,
        }),
        ..probe()
    });
    c.create_replica("live", live);

    // Readiness on a port nothing listens on → never ready, with a reason.
    let mut notready = serve();
    notready.readiness_probe = Some(Probe {
        tcp_socket: Some(TcpSocketAction {
            port: PortRef::Number(9999),
            host: None,
        }),
        ..probe()
    });
    c.create_replica("notready", notready);

    // Exec readiness that passes (a command run inside the container) → ready.
    let mut exec = serve();
    exec.readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["/app/gantry-workload".into(), "exit".into(), "0".into()],
        }),
        ..probe()
    });
    c.create_replica("execok", exec);

    // Exec readiness that fails → not ready, the exit code in the message.
    let mut execbad = serve();
    execbad.readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["/app/gantry-workload".into(), "exit".into(), "3".into()],
        }),
        ..probe()
    });
    c.create_replica("execbad", execbad);

    c.wait_status("execok", "ready through its exec probe", 30, |s| s.ready);
    let s = c.wait_status("notready", "not ready with a reason", 30, |s| {
        s.phase == gantry_api::model::Phase::Running && s.message.is_some()
    });
    assert!(!s.ready);
    assert!(s.message.unwrap().contains("9999"));
    let s = c.wait_status("execbad", "not ready with a reason", 30, |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("exited with 3"))
    });
    assert!(!s.ready);
    c.wait_status("live", "restarted by its liveness probe", 40, |s| {
        s.restart_count >= 1
    });
}

#[test]
fn missing_image_is_reported_then_runs_after_import() {
    let c = Cluster::new(false);
    c.create_replica("img", serve());
    let s = c.wait_status("img", "ImageNotFound", 30, |s| {
        s.reason.as_deref() == Some("ImageNotFound")
    });
    assert!(s.message.unwrap().contains(IMAGE));

    c.root.ok(&[
        "image",
        "import",
        common::sample_archive().to_str().unwrap(),
    ]);
    c.wait_status("img", "running after the import", 30, |s| {
        s.phase == gantry_api::model::Phase::Running && s.ready
    });
}

#[test]
fn restarted_agent_readopts_its_containers() {
    let mut c = Cluster::new(true);
    c.create_replica("keep", serve());
    let mut never = workload(&["exit", "0"]);
    never.restart_policy = RestartPolicy::Never;
    c.create_replica("done", never);
    let before = c.wait_status("keep", "running", 30, |s| s.ready);
    c.wait_status("done", "Succeeded", 30, |s| {
        s.phase == gantry_api::model::Phase::Succeeded
    });

    // A second agent for the same node refuses while the first heartbeats.
    let out = common::run_with_deadline(c.agent_command(&[]), Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another live agent"), "{err}");

    // SIGKILL the agent; containers keep running under their shims.
    Cluster::kill(&mut c.agent);
    assert_eq!(c.running("keep").len(), 1);
    c.start_agent(&[]);

    // The new agent adopts the container: same id, no duplicate, no restart counted.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let s = c.status("keep");
        assert_eq!(s.container_id, before.container_id, "container replaced");
        assert_eq!(s.restart_count, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.running("keep").len(), 1);
    assert_eq!(c.containers("keep").len(), 1);
    let done = c.status("done");
    assert_eq!(done.phase, gantry_api::model::Phase::Succeeded);
    assert_eq!(done.restart_count, 0);
    assert!(
        c.agent_log().contains("node taken over"),
        "{}",
        c.agent_log()
    );

    // SIGTERM stops the agent cleanly and leaves the containers running.
    let mut agent = c.agent.take().expect("agent runs");
    let ok = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = agent.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "agent exited with {status:?}: {}",
        c.agent_log()
    );
    assert_eq!(c.running("keep").len(), 1);
}

#[test]
fn containers_survive_a_control_plane_outage_and_status_catches_up() {
    let mut c = Cluster::new(true);
    c.create_replica("calm", serve());
    let s = c.wait_status("calm", "running", 30, |s| s.ready);
    let first = s.container_id.unwrap();

    // Control plane down: the container keeps running and is still restarted when killed.
    c.proxy.take().expect("proxy runs").stop();
    let pid = inspect(&c.root, &first)["state"]["pid"].as_i64().unwrap();
    kill_pid(pid);
    wait_for("a replacement container", Duration::from_secs(30), || {
        c.running("calm")
            .iter()
            .any(|j| j["id"].as_str() != Some(first.as_str()))
    });

    // Back up: the status shows the restart.
    c.proxy = Some(Proxy::start(c.proxy_addr.clone(), c.addr.clone()));
    c.wait_status("calm", "caught up", 40, |s| {
        s.restart_count == 1 && s.ready && s.container_id.as_deref() != Some(first.as_str())
    });
}

#[test]
fn logs_and_exec_reach_a_replica_through_its_agent() {
    let c = Cluster::new(true);

    // A replica that prints three lines, then waits for /tmp/go (made through exec) before
    // printing one more and exiting; Never restarted, so the follow ends with it. The shim
    // reads stdout and stderr separately, so a pause orders the stderr line first in the log.
    let mut talk = shell(
        "echo oops >&2; sleep 1; echo one; echo two; \
         while [ ! -e /tmp/go ]; do sleep 1; done; echo after",
    );
    talk.restart_policy = RestartPolicy::Never;
    c.create_replica("talk", talk);
    c.wait_status("talk", "running", 30, |s| {
        s.phase == gantry_api::model::Phase::Running
    });
    wait_for("the replica's output", Duration::from_secs(30), || {
        c.cli_ok(&["logs", "talk"]).0 == "one\ntwo\n"
    });

    // Whole log: stdout to stdout, stderr to stderr; --tail 1 keeps only the last line.
    let (out, err) = c.cli_ok(&["logs", "talk"]);
    assert_eq!(out, "one\ntwo\n");
    assert_eq!(err, "oops\n");
    let (out, err) = c.cli_ok(&["logs", "--tail", "1", "talk"]);
    assert_eq!((out.as_str(), err.as_str()), ("two\n", ""));
    let (out, _) = c.cli_ok(&["logs", "--timestamps", "--tail", "1", "talk"]);
    assert!(out.ends_with("Z two\n"), "{out:?}");

    // Exec: the command's output and exit code become ours.
    let (out, _) = c.cli_ok(&["exec", "talk", "--", "/app/gantry-workload", "echo", "hi"]);
    assert_eq!(out, "hi\n");
    let st = c.cli(&["exec", "talk", "--", "/app/gantry-workload", "exit", "3"]);
    assert_eq!(st.status.code(), Some(3));
    let st = c.cli(&["exec", "talk", "--", "/no/such/program"]);
    assert_eq!(st.status.code(), Some(127));

    // Follow: a line written after `logs -f` started reaches it, and the follow ends when
    // the container exits.
    let mut follow = c
        .cli_command(&["logs", "-f", "talk"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry logs -f");
    let stdout = follow.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_line = |want: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("logs -f never printed {want:?}; got {seen:?}"),
            }
        }
    };
    wait_line("two", &mut seen);
    c.cli_ok(&["exec", "talk", "--", "mkdir", "-p", "/tmp/go"]);
    wait_line("after", &mut seen);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = follow.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = follow.kill();
            panic!("logs -f did not end when the container exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(seen, ["one", "two", "after"]);

    // Exec into an exited replica is refused with the reason.
    c.wait_status("talk", "Succeeded", 30, |s| {
        s.phase == gantry_api::model::Phase::Succeeded
    });
    let st = c.cli(&["exec", "talk", "--", "/app/gantry-workload", "echo", "hi"]);
    assert_eq!(st.status.code(), Some(1));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("replica talk is not running"), "{err}");

    // A replica that does not exist: one line, exit 1, for logs and exec alike.
    let st = c.cli(&["exec", "nope", "--", "true"]);
    assert_eq!(st.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&st.stderr),
        "gantry: replica \"nope\" not found\n"
    );
    let st = c.cli(&["logs", "nope"]);
    assert_eq!(st.status.code(), Some(1));
}

#[test]
fn previous_logs_show_the_container_before_the_restart() {
    let c = Cluster::new(true);

    // Each container prints a unique stamp (the time in nanoseconds) and stays up.
    c.create_replica("stamp", shell("/app/gantry-workload now; exec sleep 1000"));
    let s = c.wait_status("stamp", "running", 30, |s| s.ready);
    let first_id = s.container_id.unwrap();
    let mut first = String::new();
    wait_for("the first stamp", Duration::from_secs(30), || {
        first = c.cli_ok(&["logs", "stamp"]).0;
        !first.is_empty()
    });

    // No restart yet: there is no previous container.
    let st = c.cli(&["logs", "--previous", "stamp"]);
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("no previous container"));

    // Killed and restarted: the current log is the new container's, --previous the old one's.
    let pid = inspect(&c.root, &first_id)["state"]["pid"]
        .as_i64()
        .unwrap();
    kill_pid(pid);
    c.wait_status("stamp", "restarted", 30, |s| {
        s.restart_count == 1 && s.ready && s.container_id.as_deref() != Some(first_id.as_str())
    });
    let mut second = String::new();
    wait_for("the second stamp", Duration::from_secs(30), || {
        second = c.cli_ok(&["logs", "stamp"]).0;
        !second.is_empty()
    });
    assert_ne!(second, first);
    assert_eq!(c.cli_ok(&["logs", "--previous", "stamp"]).0, first);
}

#[test]
fn logs_of_an_unreachable_agent_name_the_node_and_address() {
    let mut c = Cluster::new(true);
    c.create_replica("lone", serve());
    c.wait_status("lone", "running", 30, |s| s.ready);

    // The agent is gone (its containers stay): the CLI says which node and address failed.
    Cluster::kill(&mut c.agent);
    let st = c.cli(&["logs", "lone"]);
    assert_eq!(st.status.code(), Some(1));
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("cannot reach the agent of node \"n1\" at 127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Replica networking: the agent in a network namespace of its own, replicas in sandboxes.

const SUBNET: &str = "10.214.7.0/24";

impl Cluster {
    /// Gives the node its replica subnet, as the control plane's network controller does.
    fn set_node_subnet(&self, cidr: &str) {
        let mut c = self.client();
        for _ in 0..50 {
            let mut node = self
                .rt
                .block_on(c.get(Kind::Node, NODE))
                .unwrap()
                .expect("node registered");
            let mut spec: NodeSpec = node.spec_as().unwrap();
            spec.replica_cidr = Some(cidr.into());
            spec.cluster_cidr = Some("10.214.0.0/16".into());
            spec.service_cidr = Some("10.215.0.0/16".into());
            node.set_spec(&spec);
            if self.rt.block_on(c.update(&node)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // a heartbeat won the race
        }
        panic!("could not set the node's subnet");
    }

    fn agent_netns(&self) -> PathBuf {
        self.netns.as_ref().expect("a networked cluster").path()
    }

    fn sandbox(&self, replica: &str) -> PathBuf {
        self.root.path().join("netns").join(replica)
    }

    fn ipam_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.path().join("network/ipam"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// Waits until the replica runs, ready, with an address; returns its status.
    fn wait_addressed(&self, name: &str) -> ReplicaStatus {
        self.wait_status(name, "running with an address", 60, |s| {
            s.ready && s.replica_ip.is_some() && s.container_id.is_some()
        })
    }

    fn pid_of(&self, container: &str) -> i64 {
        inspect(&self.root, container)["state"]["pid"]
            .as_i64()
            .expect("a running container has a pid")
    }
}

/// `ip ARGS` in the network namespace file `netns`.
fn ip_in(netns: &Path, args: &[&str]) -> String {
    let net = format!("--net={}", netns.display());
    let mut argv = vec![net.as_str(), "--", "ip"];
    argv.extend_from_slice(args);
    run_ok("nsenter", &argv)
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// An HTTP GET of `/` at `addr`, made from inside the network namespace file `netns` (on a
/// thread of its own, which alone changes namespace); returns the status line.
fn http_from(netns: &Path, addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let ns = std::fs::File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or_default().to_string()
    })
    .join()
    .unwrap()
}

#[test]
fn replica_gets_eth0_in_its_node_subnet_with_only_cluster_and_service_routes() {
    let c = Cluster::networked();

    // No subnet yet: the replica waits, saying why.
    c.create_replica("web", serve());
    let s = c.wait_status("web", "waiting for the network", 30, |s| {
        s.reason.as_deref() == Some("NetworkNotReady")
    });
    assert!(s.message.unwrap().contains("replicaCidr"));
    assert!(
        c.containers("web").is_empty(),
        "nothing starts without a network"
    );

    // The control plane gives the node its subnet: the replica runs with the first address.
    c.set_node_subnet(SUBNET);
    let s = c.wait_addressed("web");
    assert_eq!(s.replica_ip.as_deref(), Some("10.214.7.2"));
    let pid = c.pid_of(s.container_id.as_deref().unwrap());
    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    assert_eq!(
        inode(&ns),
        inode(&c.sandbox("web")),
        "the container is in its sandbox"
    );

    // Its namespace: eth0 with the address, lo up, routes for the cluster and service ranges
    // via the gateway, and no default route.
    let addrs = ip_in(&ns, &["-o", "-4", "addr", "show"]);
    assert!(addrs.contains("eth0    inet 10.214.7.2/24"), "{addrs}");
    assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
    let routes = ip_in(&ns, &["-4", "route", "show"]);
    let mut lines: Vec<&str> = routes.lines().map(str::trim).collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{routes}");
    assert!(
        lines[0].starts_with("10.214.0.0/16 via 10.214.7.1 dev eth0"),
        "{routes}"
    );
    assert!(lines[1].starts_with("10.214.7.0/24 dev eth0"), "{routes}");
    assert!(
        lines[2].starts_with("10.215.0.0/16 via 10.214.7.1 dev eth0"),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");

    // The node side: the bridge holds the gateway; forwarding is on in the agent's namespace
    // (and only there).
    let bridge = ip_in(
        &c.agent_netns(),
        &["-o", "-4", "addr", "show", "dev", "gantry0"],
    );
    assert!(bridge.contains("10.214.7.1/24"), "{bridge}");
    let forward = run_ok(
        "nsenter",
        &[
            &format!("--net={}", c.agent_netns().display()),
            "--",
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ],
    );
    assert_eq!(forward.trim(), "1");

    // DNS and hosts files, read-only, as the container sees them.
    let etc = PathBuf::from(format!("/proc/{pid}/root/etc"));
    assert_eq!(
        std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
        "nameserver 10.214.7.1\nsearch gantry.local\noptions ndots:1\n"
    );
    let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("10.214.7.2\tweb"), "{hosts}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let resolv = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/etc/resolv.conf"))
        .expect("resolv.conf is a mount");
    assert!(
        resolv.split(' ').nth(5).unwrap().starts_with("ro"),
        "{resolv}"
    );
}

#[test]
fn two_replicas_on_one_node_share_a_port_and_reach_each_other_by_address() {
    let c = Cluster::networked();
    c.set_node_subnet(SUBNET);
    // Both serve on 8080, each in its own namespace.
    c.create_replica("a", serve());
    c.create_replica("b", serve());
    let a = c.wait_addressed("a").replica_ip.unwrap();
    let b = c.wait_addressed("b").replica_ip.unwrap();
    assert_ne!(a, b);
    let a_addr: std::net::SocketAddr = format!("{a}:8080").parse().unwrap();
    let b_addr: std::net::SocketAddr = format!("{b}:8080").parse().unwrap();
    // Across the bridge, both ways.
    assert!(http_from(&c.sandbox("a"), b_addr).starts_with("HTTP/1."));
    assert!(http_from(&c.sandbox("b"), a_addr).starts_with("HTTP/1."));
}

#[test]
fn replica_address_survives_container_and_agent_restarts() {
    let mut c = Cluster::networked();
    c.set_node_subnet(SUBNET);
    c.create_replica("keep", serve());
    let first = c.wait_addressed("keep");
    let ip = first.replica_ip.clone().unwrap();
    let sandbox_ino = inode(&c.sandbox("keep"));

    // The container killed: restarted in the same sandbox, with the same address.
    let old = first.container_id.clone().unwrap();
    kill_pid(c.pid_of(&old));
    let s = c.wait_status("keep", "restarted", 60, |s| {
        s.restart_count == 1 && s.ready && s.container_id.as_deref() != Some(old.as_str())
    });
    assert_eq!(s.replica_ip.as_deref(), Some(ip.as_str()));
    let pid = c.pid_of(s.container_id.as_deref().unwrap());
    assert_eq!(
        inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        sandbox_ino
    );

    // The agent killed and restarted: it re-adopts container and sandbox, address unchanged.
    Cluster::kill(&mut c.agent);
    c.start_agent(&[]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let now = c.status("keep");
        assert_eq!(now.container_id, s.container_id, "container replaced");
        assert_eq!(now.replica_ip.as_deref(), Some(ip.as_str()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(inode(&c.sandbox("keep")), sandbox_ino, "sandbox rebuilt");

    // A new replica gets another address: no double allocation after the restart.
    c.create_replica("fresh", serve());
    let fresh = c.wait_addressed("fresh").replica_ip.unwrap();
    assert_ne!(fresh, ip);
    assert_eq!(c.ipam_files().len(), 2, "{:?}", c.ipam_files());
}

#[test]
fn deleted_replica_leaves_no_veth_mount_or_address() {
    let c = Cluster::networked();
    c.set_node_subnet(SUBNET);
    c.create_replica("gone", serve());
    let ip: std::net::Ipv4Addr = c
        .wait_addressed("gone")
        .replica_ip
        .unwrap()
        .parse()
        .unwrap();
    let veth = format!("gv{:08x}", u32::from(ip));
    ip_in(&c.agent_netns(), &["link", "show", "dev", &veth]);
    assert_eq!(c.ipam_files(), vec![ip.to_string()]);

    c.delete_replica("gone");
    wait_for("the sandbox to be removed", Duration::from_secs(30), || {
        c.containers("gone").is_empty() && !c.sandbox("gone").exists()
    });
    wait_for(
        "the address to be released",
        Duration::from_secs(10),
        || c.ipam_files().is_empty(),
    );
    let links = ip_in(&c.agent_netns(), &["-o", "link", "show"]);
    assert!(!links.contains(&veth), "veth left behind: {links}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sandbox = c.sandbox("gone").display().to_string();
    assert!(!mountinfo.contains(&sandbox), "netns mount left behind");
    assert!(!c.root.path().join("network/replicas/gone").exists());
}

#[test]
fn vanished_sandbox_is_rebuilt_and_the_container_restarted_in_it() {
    let c = Cluster::networked();
    c.set_node_subnet(SUBNET);
    c.create_replica("phoenix", serve());
    let s = c.wait_addressed("phoenix");
    let ip = s.replica_ip.clone().unwrap();
    let old = s.container_id.clone().unwrap();

    // Someone removes the sandbox under the agent's feet.
    run_ok("umount", &[c.sandbox("phoenix").to_str().unwrap()]);
    std::fs::remove_file(c.sandbox("phoenix")).unwrap();

    // The agent rebuilds it, with the same address, and restarts the container in it.
    let s = c.wait_status("phoenix", "restarted in a new sandbox", 60, |s| {
        s.ready && s.container_id.as_deref().is_some_and(|id| id != old)
    });
    assert_eq!(s.replica_ip.as_deref(), Some(ip.as_str()));
    let pid = c.pid_of(s.container_id.as_deref().unwrap());
    assert_eq!(
        inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        inode(&c.sandbox("phoenix"))
    );
    let addrs = ip_in(
        &c.sandbox("phoenix"),
        &["-o", "-4", "addr", "show", "dev", "eth0"],
    );
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");

    // And says so with a Warning event.
    let mut client = c.client();
    wait_for("a SandboxChanged event", Duration::from_secs(10), || {
        let (events, _) = c.rt.block_on(client.list(Kind::Event)).unwrap();
        events.iter().any(|e| {
            e.spec_as::<gantry_api::model::EventSpec>()
                .is_ok_and(|s| s.reason == "SandboxChanged" && s.involved_object.name == "phoenix")
        })
    });
}
