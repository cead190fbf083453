//! Shared helpers for the `gantry` binary's integration tests: a scratch runtime root with the
//! sample image imported, and running `gantry` with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The sample image every test runs.
pub const IMAGE: &str = "gantry/sample:latest";

/// The sample image archive, built by `scripts/sample-image.sh` (the README's test command
/// builds it first). Missing means the tests cannot prove anything: fail loudly.
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

/// Fails unless this test can create containers (root, namespaces, overlayfs).
pub fn require_root() {
    assert!(
        nix_is_root(),
        "these tests create real containers and must run as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A scratch runtime root with the sample image imported; removes every container (killing
/// what still runs) and the root when dropped.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn with_sample() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("gantry-test-")
            .tempdir_in(scratch_base())
            .expect("temp root");
        let root = Root { dir };
        let out = root.gantry(&["image", "import", sample_archive().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        root
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `gantry --root ROOT ARGS…` to completion (at most 60 s).
    pub fn gantry(&self, args: &[&str]) -> Output {
        run_with_deadline(self.command(args), Duration::from_secs(60))
    }

    /// A `gantry --root ROOT ARGS…` command, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
        cmd.arg("--root").arg(self.path()).args(args);
        cmd
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.gantry(args);
        assert!(
            out.status.success(),
            "gantry {args:?} failed with {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let out = self.command(&["ps", "-a", "-q"]).output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .command(&["rm", "-f", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Where scratch roots go: on the same filesystem as the images, never tmpfs-limited.
fn scratch_base() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-roots");
        std::fs::create_dir_all(&base).expect("create target/test-roots");
        base
    })
    .clone()
}

/// Runs a command, killing it (by its pid) if it outlives the deadline.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for gantry"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command did not finish within {deadline:?}: {cmd:?}");
        }
    }
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's directory state as JSON (`gantry inspect`).
pub fn inspect(root: &Root, reference: &str) -> serde_json::Value {
    serde_json::from_str(&root.ok(&["inspect", reference])).expect("inspect prints JSON")
}
