//! The live record of a container, `state.json`, written only by its shim (atomically:
//! temp file + rename), read by anyone.

use crate::cgroups::CgroupHandle;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The shim is setting the container up.
    Created,
    /// The container's process runs.
    Running,
    /// The container's process has exited (or never started, see `error`).
    Exited,
}

/// The shim's record of its container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    /// Where the container is in its life.
    pub status: Status,
    /// The shim's pid on the host.
    pub shim_pid: i32,
    /// The container's init pid on the host (0 before start).
    pub pid: i32,
    /// The container init's start time in clock ticks since boot (`/proc/PID/stat` field 22),
    /// so that a recycled pid is never mistaken for the container.
    #[serde(default)]
    pub pid_start_ticks: u64,
    /// The cgroup created for the container.
    pub cgroup: Option<CgroupHandle>,
    /// Unix milliseconds when the process started.
    pub started_ms: u64,
    /// Unix milliseconds when it exited.
    pub finished_ms: u64,
    /// Exit code, Docker style: the code, or 128+signal.
    pub exit_code: Option<i32>,
    /// Why it ended, when notable: `OOMKilled`, `Error`, `Killed`.
    pub reason: Option<String>,
    /// Why it could not start, when it could not.
    pub error: Option<String>,
}

impl ContainerState {
    /// The record of a container whose shim (`shim_pid`) is setting it up.
    pub fn new(shim_pid: i32) -> Self {
        Self {
            status: Status::Created,
            shim_pid,
            pid: 0,
            pid_start_ticks: 0,
            cgroup: None,
            started_ms: 0,
            finished_ms: 0,
            exit_code: None,
            reason: None,
            error: None,
        }
    }

    /// Reads a state file.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes the state atomically: readers see the old or the new record, never half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(
            path,
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }
}

/// Writes `bytes` to a temp file beside `path` and renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}
