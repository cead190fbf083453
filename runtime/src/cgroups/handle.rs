//! [`CgroupHandle`]: one created cgroup, in every hierarchy it spans. It is plain data
//! (version + directories) so a container's state file can carry it and any later process
//! can reopen it by deserialising; every operation goes straight to the files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{fs, CgroupError, CgroupVersion};

/// Key of the single directory of a v2 handle in [`CgroupHandle::dir`].
pub const UNIFIED: &str = "unified";

/// How long [`CgroupHandle::kill_all`] waits for the cgroup to empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a v1 freeze may stay in `FREEZING` before we kill anyway.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// A created cgroup: its version and absolute directories (v1: one per controller, co-mounted
/// controllers sharing one; v2: one, under the key [`UNIFIED`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupHandle {
    version: CgroupVersion,
    dirs: BTreeMap<String, PathBuf>,
}

impl CgroupHandle {
    pub(crate) fn new(version: CgroupVersion, dirs: BTreeMap<String, PathBuf>) -> Self {
        CgroupHandle { version, dirs }
    }

    /// The cgroup version this handle belongs to.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory for a controller (v1: `memory`, `cpu`, `cpuacct`, `pids`, `devices`,
    /// `freezer`; v2: [`UNIFIED`]), if the handle spans it.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }

    /// Every distinct directory of this cgroup, in a stable order.
    pub fn dirs(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self.dirs.values().map(PathBuf::as_path).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Moves process `pid` (its whole thread group) into this cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for dir in self.dirs() {
            fs::write(&dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// The processes in this cgroup (the union over its hierarchies), sorted. A directory that
    /// no longer exists (the cgroup was destroyed) holds none.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for dir in self.dirs() {
            if !dir.exists() {
                continue;
            }
            all.extend(fs::read_pids(&dir.join("cgroup.procs"))?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Number of OOM kills in this cgroup. v1: the `oom_kill N` line of `memory.oom_control`;
    /// on kernels without that counter, 1 if `memory.failcnt` > 0 while `under_oom` is set,
    /// else 0. v2: `oom_kill` of `memory.events`.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match self.version {
            CgroupVersion::V1 => {
                let dir = self.require("memory")?;
                let path = dir.join("memory.oom_control");
                let text = fs::read(&path)?;
                if let Some(n) = fs::keyed_value(&text, "oom_kill") {
                    return Ok(n);
                }
                debug!(path = %path.display(), "no oom_kill counter, using failcnt heuristic");
                let under_oom = fs::keyed_value(&text, "under_oom").unwrap_or(0);
                let failcnt = parse_u64(&dir.join("memory.failcnt"))?;
                Ok(u64::from(failcnt > 0 && under_oom > 0))
            }
            CgroupVersion::V2 => {
                let path = self.require(UNIFIED)?.join("memory.events");
                let text = fs::read(&path)?;
                Ok(fs::keyed_value(&text, "oom_kill").unwrap_or(0))
            }
        }
    }

    /// Current memory use in bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn memory_usage(&self) -> Result<u64, CgroupError> {
        match self.version {
            CgroupVersion::V1 => parse_u64(&self.require("memory")?.join("memory.usage_in_bytes")),
            CgroupVersion::V2 => parse_u64(&self.require(UNIFIED)?.join("memory.current")),
        }
    }

    /// SIGKILLs every process in the cgroup and waits until it is empty.
    ///
    /// v2 writes `cgroup.kill` when the kernel has it, else freezes (`cgroup.freeze`), kills
    /// each listed process and thaws; v1 does the same with the freezer controller. Freezing
    /// first means no process can fork a child we would miss. Zombies do not count: they
    /// leave `cgroup.procs` when they exit, before being reaped.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        if self.version == CgroupVersion::V2 {
            let kill_file = self.require(UNIFIED)?.join("cgroup.kill");
            if fs::present(&kill_file) {
                fs::write(&kill_file, "1")?;
                if self.wait_empty(deadline)? {
                    return Ok(());
                }
            }
        }
        loop {
            if self.pids()?.is_empty() {
                return Ok(());
            }
            self.freeze_kill_thaw()?;
            if self.wait_empty((Instant::now() + Duration::from_millis(200)).min(deadline))? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let dir = self
                    .dirs()
                    .first()
                    .map(|d| d.to_path_buf())
                    .unwrap_or_default();
                return Err(CgroupError::NotEmpty {
                    path: dir,
                    pids: self.pids()?,
                    timeout: KILL_TIMEOUT,
                });
            }
        }
    }

    /// Removes the cgroup's directories once they are empty (retrying briefly while the
    /// kernel reports them busy). Removing an already removed cgroup succeeds.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            fs::remove_dir(dir)?;
        }
        Ok(())
    }

    fn require(&self, controller: &str) -> Result<&Path, CgroupError> {
        self.dir(controller)
            .ok_or_else(|| CgroupError::ControllerNotMounted {
                controller: controller.to_owned(),
                what: "the cgroup handle".to_owned(),
            })
    }

    /// Freezes, SIGKILLs everything listed, thaws; the thaw happens even if killing failed,
    /// since killed tasks only die once thawed.
    fn freeze_kill_thaw(&self) -> Result<(), CgroupError> {
        let (state_file, frozen, thawed) = match self.version {
            CgroupVersion::V1 => (
                self.dir("freezer").map(|d| d.join("freezer.state")),
                "FROZEN",
                "THAWED",
            ),
            CgroupVersion::V2 => (self.dir(UNIFIED).map(|d| d.join("cgroup.freeze")), "1", "0"),
        };
        let state_file = state_file.filter(|f| fs::present(f));
        if let Some(f) = &state_file {
            fs::write(f, frozen)?;
            if self.version == CgroupVersion::V1 {
                wait_frozen(f)?;
            }
        }
        let killed = self
            .pids()
            .and_then(|pids| pids.into_iter().try_for_each(sigkill));
        if let Some(f) = &state_file {
            fs::write(f, thawed)?;
        }
        killed
    }

    /// Polls until every directory is empty; `Ok(false)` if the deadline passed first.
    fn wait_empty(&self, deadline: Instant) -> Result<bool, CgroupError> {
        loop {
            if self.pids()?.is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn sigkill(pid: i32) -> Result<(), CgroupError> {
    debug!(pid, "SIGKILL");
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(CgroupError::Kill { pid, source: e }),
    }
}

/// Waits (bounded) for a v1 freezer to leave `FREEZING`; killing proceeds either way.
fn wait_frozen(state_file: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    while fs::read(state_file)?.trim() != "FROZEN" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn parse_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = fs::read(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        what: path.display().to_string(),
        reason: format!("{:?} is not a number", text.trim()),
    })
}
