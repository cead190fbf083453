//! [`V2Manager`]: the unified cgroup v2 hierarchy.
//!
//! Invariant enforced here: a controller is usable in a cgroup only if every ancestor below
//! the process's own cgroup enables it in `cgroup.subtree_control`, and (the "no internal
//! processes" rule) a non-root cgroup holding processes cannot enable any. So the own cgroup
//! must be free of processes unless it is the root; when it is not, creation fails with an
//! error naming its `cgroup.subtree_control` rather than moving processes Gantry did not
//! start. [`super::prepare_v2_delegation`] is the explicit opt-in that moves the calling
//! process (only) into a leaf.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::handle::UNIFIED;
use super::{
    fs, validate_name, CgroupError, CgroupHandle, CgroupManager, CgroupVersion, Resources,
};

/// The controllers Gantry enables for its cgroups, in the order written.
pub const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Creates cgroups under the process's own cgroup in the unified hierarchy.
#[derive(Debug, Clone)]
pub struct V2Manager {
    parent: PathBuf,
    parent_is_root: bool,
}

impl V2Manager {
    pub(crate) fn new(parent: PathBuf, parent_is_root: bool) -> Self {
        V2Manager {
            parent,
            parent_is_root,
        }
    }

    /// The parent directory (the process's own cgroup).
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Makes sure the parent enables Gantry's controllers for its children.
    pub(crate) fn delegate_parent(&self) -> Result<(), CgroupError> {
        let offered = read_optional(&self.parent.join("cgroup.controllers"))?;
        let offered: Vec<&str> = offered.split_whitespace().collect();
        for c in V2_CONTROLLERS {
            if !offered.contains(&c) {
                return Err(CgroupError::ControllerUnavailable {
                    controller: c.to_owned(),
                    path: self.parent.join("cgroup.controllers"),
                });
            }
        }
        enable_controllers(&self.parent, self.parent_is_root)
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self, name: &str, resources: &Resources) -> Result<CgroupHandle, CgroupError> {
        validate_name(name)?;
        self.delegate_parent()?;

        // Intermediate cgroups (e.g. `gantry/`) hold no processes and pass controllers down.
        let leaf = self.parent.join(name);
        let mut dir = self.parent.clone();
        let components: Vec<_> = Path::new(name).components().collect();
        for comp in &components[..components.len().saturating_sub(1)] {
            dir.push(comp);
            fs::mkdir(&dir)?;
            enable_controllers(&dir, false)?;
        }
        if !fs::mkdir(&leaf)? {
            return Err(CgroupError::AlreadyExists { path: leaf });
        }
        let handle = CgroupHandle::new(
            CgroupVersion::V2,
            BTreeMap::from([(UNIFIED.to_owned(), leaf)]),
        );
        if let Err(e) = write_limits(&handle, resources) {
            debug!(name, error = %e, "cgroup v2 creation failed, removing it");
            if let Err(re) = handle.destroy() {
                tracing::warn!(error = %re, "cannot roll back cgroup directory");
            }
            return Err(e);
        }
        Ok(handle)
    }
}

/// Writes `+memory +cpu +pids` (those not yet enabled) to `dir/cgroup.subtree_control`,
/// refusing first if `dir` holds processes and is not the root.
fn enable_controllers(dir: &Path, is_root: bool) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_optional(&control)?;
    let enabled: Vec<&str> = enabled
        .split_whitespace()
        .map(|c| c.trim_start_matches('+'))
        .collect();
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root {
        let procs = dir.join("cgroup.procs");
        let pids = if procs.exists() {
            fs::read_pids(&procs)?
        } else {
            Vec::new()
        };
        if !pids.is_empty() {
            return Err(CgroupError::InternalProcesses {
                path: control,
                pids,
            });
        }
    }
    fs::write(&control, &missing.join(" "))
}

/// Reads a control file; a missing one reads as empty (a fresh directory of a scratch tree;
/// on cgroupfs the kernel always provides these files).
fn read_optional(path: &Path) -> Result<String, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(CgroupError::read(path, e)),
    }
}

fn write_limits(handle: &CgroupHandle, r: &Resources) -> Result<(), CgroupError> {
    let Some(dir) = handle.dir(UNIFIED) else {
        return Ok(());
    };
    if let Some(limit) = r.memory_limit {
        fs::write(&dir.join("memory.max"), &limit.to_string())?;
        let swap = dir.join("memory.swap.max");
        if fs::present(&swap) {
            fs::write(&swap, "0")?;
        } else {
            debug!(path = %swap.display(), "swap accounting unavailable, swap limit not set");
        }
    }
    if let Some(q) = r.cpu_quota {
        fs::write(
            &dir.join("cpu.max"),
            &format!("{} {}", q.quota_us, q.period_us),
        )?;
    }
    if let Some(max) = r.pids_limit {
        fs::write(&dir.join("pids.max"), &max.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{detect_from, prepare_v2_delegation_from, CpuQuota, SELF_LEAF};
    use super::*;

    const MOUNTINFO: &str =
        "30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    /// A scratch `/sys/fs/cgroup` whose own cgroup `/app` offers every controller.
    fn scratch(procs: &str, subtree: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("sys/fs/cgroup/app");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), subtree).unwrap();
        std::fs::write(own.join("cgroup.procs"), procs).unwrap();
        (root, own)
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn v2_writes_cpu_max_in_scratch_tree() {
        let (root, own) = scratch("", "");
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        assert_eq!(manager.version(), CgroupVersion::V2);

        let resources = Resources {
            memory_limit: Some(16 << 20),
            cpu_quota: Some(CpuQuota::from_millicpus(500)),
            pids_limit: Some(64),
        };
        let handle = manager.create("gantry/c1", &resources).unwrap();

        // Controllers are delegated down the whole chain: own cgroup, then `gantry/`.
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(own.join("gantry/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let leaf = own.join("gantry/c1");
        assert_eq!(handle.dir(UNIFIED), Some(leaf.as_path()));
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("memory.max")), "16777216");
        assert_eq!(read(leaf.join("memory.swap.max")), "0");
        assert_eq!(read(leaf.join("pids.max")), "64");

        // The handle survives a trip through a state file and still operates.
        let json = serde_json::to_string(&handle).unwrap();
        let reopened: CgroupHandle = serde_json::from_str(&json).unwrap();
        assert_eq!(reopened, handle);
        reopened.add_process(4242).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "4242");
        assert_eq!(reopened.pids().unwrap(), vec![4242]);
        std::fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(reopened.oom_kills().unwrap(), 2);
        std::fs::write(leaf.join("memory.current"), "123456\n").unwrap();
        assert_eq!(reopened.memory_usage().unwrap(), 123456);

        reopened.destroy().unwrap();
        assert!(!leaf.exists());
        assert!(
            own.join("gantry").exists(),
            "shared intermediate cgroup must stay"
        );
        reopened.destroy().unwrap();
    }

    #[test]
    fn v2_without_limits_writes_no_limit_files() {
        let (root, own) = scratch("", "memory cpu pids\n");
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        manager.create("c2", &Resources::default()).unwrap();
        // Already delegated: the own cgroup's subtree_control is left as the kernel shows it.
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "memory cpu pids\n"
        );
        let names: Vec<_> = std::fs::read_dir(own.join("c2")).unwrap().collect();
        assert!(names.is_empty(), "unexpected files {names:?}");
    }

    #[test]
    fn v2_own_cgroup_with_processes_fails_naming_subtree_control() {
        let (root, own) = scratch("1234\n", "");
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        let err = manager
            .create("gantry/c3", &Resources::default())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&own.join("cgroup.subtree_control").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("1234"), "{msg}");
        assert!(
            !own.join("gantry").exists(),
            "nothing may be created on failure"
        );
        assert_eq!(read(own.join("cgroup.subtree_control")), "");
    }

    #[test]
    fn v2_root_cgroup_may_hold_processes_and_still_delegate() {
        let root = tempfile::tempdir().unwrap();
        let cg = root.path().join("sys/fs/cgroup");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(cg.join("cgroup.procs"), "1\n2\n").unwrap();
        let manager = detect_from(MOUNTINFO, "0::/\n", root.path()).unwrap();
        manager.create("gantry/c4", &Resources::default()).unwrap();
        assert_eq!(
            read(cg.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
    }

    #[test]
    fn v2_missing_controller_is_reported_with_the_file() {
        let (root, own) = scratch("", "");
        std::fs::write(own.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        let msg = manager
            .create("c5", &Resources::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("pids") && msg.contains("cgroup.controllers"),
            "{msg}"
        );
    }

    #[test]
    fn v2_failed_write_names_file_and_value_and_creates_no_leaf() {
        let (root, own) = scratch("", "");
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        // A dangling symlink as the intermediate's subtree_control reads as empty but cannot
        // be written.
        std::fs::create_dir_all(own.join("gantry")).unwrap();
        std::os::unix::fs::symlink(
            root.path().join("missing/dir"),
            own.join("gantry/cgroup.subtree_control"),
        )
        .unwrap();
        let msg = manager
            .create(
                "gantry/c6",
                &Resources {
                    pids_limit: Some(5),
                    ..Resources::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(msg.contains("gantry/cgroup.subtree_control"), "{msg}");
        assert!(msg.contains("\"+memory +cpu +pids\""), "{msg}");
        assert!(!own.join("gantry/c6").exists());
    }

    #[test]
    fn v2_existing_leaf_is_refused() {
        let (root, own) = scratch("", "");
        std::fs::create_dir_all(own.join("c7")).unwrap();
        let manager = detect_from(MOUNTINFO, "0::/app\n", root.path()).unwrap();
        let err = manager.create("c7", &Resources::default()).unwrap_err();
        assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn v2_prepare_delegation_moves_only_the_caller_into_a_leaf() {
        let (root, own) = scratch("77\n", "");
        let manager = prepare_v2_delegation_from(MOUNTINFO, "0::/app\n", root.path(), 77).unwrap();
        assert_eq!(read(own.join(SELF_LEAF).join("cgroup.procs")), "77");
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        manager.create("gantry/c8", &Resources::default()).unwrap();

        // Someone else's process in the own cgroup is never moved: that fails instead.
        let (root, own) = scratch("77\n88\n", "");
        let msg = prepare_v2_delegation_from(MOUNTINFO, "0::/app\n", root.path(), 77)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("[88]"), "{msg}");
        assert_eq!(read(own.join("cgroup.procs")), "88");
    }
}
