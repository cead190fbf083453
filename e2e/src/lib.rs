//! Helpers for Gantry's end-to-end tests: a real local cluster brought up with the built
//! `gantry` binary (`gantry cluster up`, every member in its own network namespace), the
//! CLI run against it with a deadline, and a typed client of its control plane.
//!
//! Clusters are heavy (several daemons on a two-core machine), so tests take [`serial`] to run
//! one at a time.
//!
//! - [`linearizability`]: a checker of histories of register operations (Wing & Gong search
//!   with Lowe's memoization, one key at a time).
//! - [`nemesis`]: a seeded randomized run of clients against a cluster under faults, checked
//!   with it (`gantry-e2e linearizability`).
#![forbid(unsafe_code)]

pub mod linearizability;
pub mod nemesis;

use anyhow::{bail, Context};
use gantry_api::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the one-cluster-at-a-time lock (poison from an earlier failed test is ignored).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A multi-threaded tokio runtime with two workers, for a test's clients of its cluster.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The `gantry` binary next to the test executable (`target/<profile>/gantry`).
pub fn gantry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GANTRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/gantry
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("gantry"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p gantry`; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// The sample image archive built by `scripts/sample-image.sh`.
pub fn sample_archive() -> PathBuf {
    let path = std::env::var_os("GANTRY_SAMPLE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/sample-image/gantry-sample.oci.tar")
        });
    assert!(
        path.exists(),
        "sample image {} is missing: run scripts/sample-image.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The sample image's workload binary, unpacked next to the archive by
/// `scripts/sample-image.sh` (statically linked, so it runs on the host too).
pub fn sample_workload() -> PathBuf {
    let path = sample_archive()
        .parent()
        .map(|d| d.join("rootfs/app/gantry-workload"))
        .expect("sample image directory");
    assert!(
        path.exists(),
        "{} is missing: run scripts/sample-image.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs `cmd` to completion, killing it after `deadline`.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> anyhow::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot spawn {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            bail!("command did not finish within {deadline:?}: {cmd:?}")
        }
    }
}

/// Waits until `check` gives a value, trying every 20 ms, failing after `deadline`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local cluster brought up for one test; brought down (and purged) when dropped.
pub struct TestCluster {
    home: tempfile::TempDir,
    /// The cluster's name (unique per test run).
    pub name: String,
    /// Control-plane member addresses.
    pub servers: Vec<String>,
}

impl TestCluster {
    /// `gantry cluster up` with `servers` servers and `agents` agents, in network namespaces.
    pub fn up(servers: u8, agents: u8) -> anyhow::Result<TestCluster> {
        let home = tempfile::Builder::new()
            .prefix("gantry-e2e-")
            .tempdir_in("/var/tmp")
            .context("temp dir")?;
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("e2e{}x{n}", std::process::id() % 100_000);
        let mut c = TestCluster {
            home,
            name,
            servers: Vec::new(),
        };
        c.bring_up(servers, agents)?;
        Ok(c)
    }

    /// `gantry cluster up` of this cluster (again, after [`TestCluster::down`]).
    pub fn bring_up(&mut self, servers: u8, agents: u8) -> anyhow::Result<()> {
        let out = self.gantry(&[
            "cluster",
            "up",
            "--name",
            &self.name,
            "--dir",
            &self.dir().display().to_string(),
            "--servers",
            &servers.to_string(),
            "--agents",
            &agents.to_string(),
            "--image",
            &sample_archive().display().to_string(),
        ])?;
        if !out.status.success() {
            bail!(
                "cluster up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let state = self.state()?;
        self.servers = state["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "server")
            .filter_map(|m| m["addr"].as_str().map(str::to_string))
            .collect();
        Ok(())
    }

    /// What `cluster up` recorded: `DIR/cluster.json`.
    pub fn state(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.dir().join("cluster.json");
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `gantry cluster down --purge` of this cluster.
    pub fn down(&self) -> anyhow::Result<()> {
        let dir = self.dir().display().to_string();
        let out = self.gantry(&["cluster", "down", "--purge", "--dir", &dir])?;
        if !out.status.success() {
            bail!(
                "cluster down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The cluster's directory.
    pub fn dir(&self) -> PathBuf {
        self.home.path().join("cluster")
    }

    /// A `gantry` command with this cluster's home and config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(gantry_bin());
        cmd.args(args)
            .env("GANTRY_HOME", self.home.path())
            .env("GANTRY_CONFIG", self.home.path().join("config"))
            .env_remove("GANTRY_SERVER");
        cmd
    }

    /// Runs `gantry ARGS…` (at most 90 s).
    pub fn gantry(&self, args: &[&str]) -> anyhow::Result<Output> {
        run_with_deadline(self.command(args), Duration::from_secs(90))
    }

    /// Runs `gantry ARGS…` and fails unless it succeeds; returns its stdout.
    pub fn gantry_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.gantry(args)?;
        if !out.status.success() {
            bail!(
                "gantry {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `gantry cluster ACTION MEMBER --dir DIR`.
    pub fn member(&self, action: &str, member: &str) -> anyhow::Result<()> {
        let dir = self.dir().display().to_string();
        self.gantry_ok(&["cluster", action, member, "--dir", &dir])
            .map(|_| ())
    }

    /// A client failing over between every server.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.servers).await?)
    }

    /// The name of the current leader, once one is known by a member that answers.
    pub async fn leader(&self) -> anyhow::Result<String> {
        eventually("a leader", Duration::from_secs(10), || {
            let servers = self.servers.clone();
            async move {
                for s in servers {
                    let Ok(mut c) = Client::connect(std::slice::from_ref(&s)).await else {
                        continue;
                    };
                    if let Ok(m) = c.members().await {
                        if let Some(l) = m.members.iter().find(|m| m.leader) {
                            return Some(l.name.clone());
                        }
                    }
                }
                None
            }
        })
        .await
    }

    /// The address of server `name` (`s1`…).
    pub fn server_addr(&self, name: &str) -> anyhow::Result<String> {
        let i: usize = name
            .strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{name} is not a server"))?;
        self.servers
            .get(i - 1)
            .cloned()
            .with_context(|| format!("no server {name}"))
    }

    /// The network namespace file of member `member` (a server or an agent).
    pub fn netns_of(&self, member: &str) -> String {
        format!("/run/netns/gantry-{}-{member}", self.name)
    }

    /// `program args…` run inside member `member`'s network namespace (the host's filesystem).
    pub fn program_in(&self, member: &str, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_of(member)))
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// A `gantry` command run inside member `member`'s network namespace.
    pub fn command_in(&self, member: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_of(member)))
            .arg("--")
            .arg(gantry_bin())
            .args(args)
            .env("GANTRY_HOME", self.home.path())
            .env("GANTRY_CONFIG", self.home.path().join("config"))
            .env_remove("GANTRY_SERVER");
        cmd
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if !self.dir().join("cluster.json").exists() {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("{e:#}");
        }
    }
}
