//! Member processes: the test binary re-executes itself as a member.
#![allow(dead_code)]

use super::*;
use gantry_api::proto::{self, MembersRequest};
use gantry_control_plane::server::{run, Bootstrap, ServerConfig};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SPEC: &str = "GANTRY_TEST_MEMBER";

/// Runs a member when this process was started as one (`SPEC` set); otherwise returns.
pub fn member_main() {
    let Ok(spec) = std::env::var(SPEC) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [name, dir, addr, boot] = parts[..] else {
        panic!("bad {SPEC}: {spec}");
    };
    let bootstrap = match boot {
        "init" => Bootstrap::Init,
        "restart" => Bootstrap::Restart,
        join => Bootstrap::Join(join.to_string()),
    };
    // To stderr, which is the member's log file (the test writer would go to stdout).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    // One thread, as `gantry server` runs by default; `GANTRY_TEST_RUNTIME=multi` or
    // `multi:N` picks a multi-threaded runtime instead (A/B figures).
    let rt = match std::env::var("GANTRY_TEST_RUNTIME").as_deref() {
        Ok("multi") => tokio::runtime::Runtime::new().unwrap(),
        Ok(multi) if multi.starts_with("multi:") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(multi[6..].parse().unwrap())
            .enable_all()
            .build()
            .unwrap(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let mut config = ServerConfig::new(name, dir, bootstrap);
        // `GANTRY_TEST_ELECTION_MS=MIN-MAX` overrides the election timeout (A/B figures).
        if let Ok(range) = std::env::var("GANTRY_TEST_ELECTION_MS") {
            let (min, max) = range.split_once('-').expect("MIN-MAX");
            config.raft.election_min = Duration::from_millis(min.parse().unwrap());
            config.raft.election_max = Duration::from_millis(max.parse().unwrap());
        }
        // SIGTERM stops the member as `gantry server` does.
        let shutdown = tokio_util::sync::CancellationToken::new();
        let on_term = shutdown.clone();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::spawn(async move {
            term.recv().await;
            on_term.cancel();
        });
        run(config, listener, shutdown).await.unwrap();
    });
}

/// A member process, killed with SIGKILL when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub addr: String,
}

impl Proc {
    pub fn spawn(name: &str, root: &Path, addr: &str, boot: &str) -> Proc {
        // `GANTRY_TEST_LOG_DIR` keeps the members' logs (the root is a temporary directory);
        // `GANTRY_TEST_MEMBER_LOG` is their log filter.
        let logs = std::env::var_os("GANTRY_TEST_LOG_DIR").map_or(root.to_path_buf(), Into::into);
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).unwrap();
        let filter = std::env::var("GANTRY_TEST_MEMBER_LOG")
            .unwrap_or_else(|_| "info,openraft=error".into());
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "member_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                SPEC,
                format!("{name}|{}|{addr}|{boot}", root.join(name).display()),
            )
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            name: name.to_string(),
            addr: addr.to_string(),
        }
    }

    /// Sends SIGTERM (the member stops as `gantry server` does).
    pub fn send_term(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
    }

    /// Waits for the member to exit.
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub async fn try_client(addr: &str) -> Option<Client> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    Some(proto::object_service_client::ObjectServiceClient::new(ch))
}

pub async fn members_of(addr: &str) -> Option<proto::MembersResponse> {
    let mut c = try_client(addr).await?;
    c.members(MembersRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Starts a three-process cluster in `root` (s1 initialises, s2 and s3 join it at `addrs[0]`)
/// and waits until all three are voters.
pub async fn spawn_three(root: &Path, addrs: &[String]) -> Vec<Proc> {
    let mut procs = vec![Proc::spawn("s1", root, &addrs[0], "init")];
    wait_for("s1 to lead", || async {
        let m = members_of(&addrs[0]).await?;
        m.members.iter().any(|m| m.leader).then_some(())
    })
    .await;
    procs.push(Proc::spawn("s2", root, &addrs[1], &addrs[0]));
    procs.push(Proc::spawn("s3", root, &addrs[2], &addrs[0]));
    wait_for("three voters", || async {
        let m = members_of(&addrs[0]).await?;
        (m.members.iter().filter(|m| m.voter).count() == 3).then_some(())
    })
    .await;
    procs
}

/// The address of the leader, as the member at `addr` sees it.
pub async fn leader_addr(addr: &str) -> String {
    wait_for("a known leader", || async {
        members_of(addr)
            .await?
            .members
            .into_iter()
            .find(|m| m.leader)
            .map(|m| m.addr)
    })
    .await
}
