//! [`CgroupError`], the one error type of the cgroups module. Every message names the file or
//! directory involved and, for writes, the value, so a failure can be reproduced by hand.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while detecting, creating, using or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A kernel (or scratch-tree) control file refused a value.
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        /// The control file.
        path: PathBuf,
        /// The value that was written.
        value: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A control file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The control file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A control file held something we could not understand.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// The file (or text) being parsed, e.g. `/proc/self/mountinfo` line 3.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The cgroup to create already exists (a leftover, or a name collision).
    #[error("cgroup directory {} already exists", path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// A handle lacks the directory an operation needs (a hand-edited or foreign state file).
    #[error("cgroup handle has no {controller} directory")]
    MissingDir {
        /// The controller (v1) or `unified` (v2).
        controller: String,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup directory {}: {source}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The requested cgroup name is not a plain relative path.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No usable cgroup filesystem appears in the mount table.
    #[error("no usable cgroup filesystem in {what} (need a v1 memory hierarchy or cgroup2)")]
    NoCgroupFs {
        /// The mount table that was searched.
        what: String,
    },
    /// A v1 controller Gantry needs is not mounted.
    #[error("cgroup v1 controller {controller} is not mounted (not found in {what})")]
    ControllerNotMounted {
        /// The controller, e.g. `pids`.
        controller: String,
        /// The mount table that was searched.
        what: String,
    },
    /// The process's own cgroup in a hierarchy could not be found.
    #[error("no {hierarchy} entry in {what}")]
    NotInCgroup {
        /// The hierarchy (a v1 controller name, or `unified`).
        hierarchy: String,
        /// The `/proc/self/cgroup` text that was searched.
        what: String,
    },
    /// A v2 controller is not offered by the parent cgroup.
    #[error("cgroup v2 controller {controller} is not available in {}", path.display())]
    ControllerUnavailable {
        /// The controller, e.g. `memory`.
        controller: String,
        /// The parent's `cgroup.controllers`.
        path: PathBuf,
    },
    /// cgroup v2's "no internal processes" rule blocks enabling controllers.
    #[error(
        "cannot enable controllers in {}: the cgroup holds processes {pids:?} and is not the \
         root (cgroup v2 no-internal-processes rule); run from a cgroup without processes, or \
         call cgroups::prepare_v2_delegation() first",
        path.display()
    )]
    InternalProcesses {
        /// The `cgroup.subtree_control` that could not be written.
        path: PathBuf,
        /// The processes found in the cgroup.
        pids: Vec<i32>,
    },
    /// Signalling a process failed for a reason other than it being gone.
    #[error("cannot send SIGKILL to pid {pid}: {source}")]
    Kill {
        /// The process.
        pid: i32,
        /// The underlying error.
        source: nix::Error,
    },
    /// A cgroup was not empty in time (after kill_all, or before rmdir).
    #[error("cgroup {} still holds processes {pids:?} after {timeout:?}", path.display())]
    NotEmpty {
        /// The cgroup directory.
        path: PathBuf,
        /// The processes still there.
        pids: Vec<i32>,
        /// How long we waited.
        timeout: Duration,
    },
}

impl CgroupError {
    pub(crate) fn write(path: impl Into<PathBuf>, value: &str, source: io::Error) -> Self {
        CgroupError::Write {
            path: path.into(),
            value: value.to_owned(),
            source,
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CgroupError::Read {
            path: path.into(),
            source,
        }
    }
}
