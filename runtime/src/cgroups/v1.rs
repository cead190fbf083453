//! [`V1Manager`]: cgroup v1, one hierarchy per controller (or several co-mounted). Used on
//! pure-v1 hosts and on hybrid ones like the CI machine, where every controller is v1 and the
//! cgroup2 mount at `unified/` holds only hugetlb.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tracing::debug;

use super::{
    fs, validate_name, CgroupError, CgroupHandle, CgroupManager, CgroupVersion, Resources,
};

/// The v1 controllers Gantry puts every container in. `cpuacct` is optional (accounting
/// only); the others are required.
pub const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"];

/// The device rules written after denying everything: the minimal set a container needs.
pub const ALLOWED_DEVICES: [&str; 8] = [
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

/// Creates cgroups under the process's own cgroup in each v1 hierarchy.
#[derive(Debug, Clone)]
pub struct V1Manager {
    /// Controller -> the process's own cgroup directory in that controller's hierarchy.
    parents: BTreeMap<String, PathBuf>,
}

impl V1Manager {
    pub(crate) fn new(parents: BTreeMap<String, PathBuf>) -> Self {
        V1Manager { parents }
    }

    /// The parent directory used for a controller (the process's own cgroup there).
    pub fn parent(&self, controller: &str) -> Option<&std::path::Path> {
        self.parents.get(controller).map(PathBuf::as_path)
    }
}

impl CgroupManager for V1Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn create(&self, name: &str, resources: &Resources) -> Result<CgroupHandle, CgroupError> {
        validate_name(name)?;
        let dirs: BTreeMap<String, PathBuf> = self
            .parents
            .iter()
            .map(|(c, p)| (c.clone(), p.join(name)))
            .collect();
        let handle = CgroupHandle::new(CgroupVersion::V1, dirs);

        let mut created = Vec::new();
        let result =
            make_dirs(&handle, &mut created).and_then(|()| write_limits(&handle, resources));
        if let Err(e) = result {
            debug!(name, error = %e, "cgroup v1 creation failed, removing what was created");
            for dir in created.iter().rev() {
                if let Err(re) = fs::remove_dir(dir) {
                    tracing::warn!(error = %re, "cannot roll back cgroup directory");
                }
            }
            return Err(e);
        }
        Ok(handle)
    }
}

/// Makes each distinct leaf directory (co-mounted controllers share one), creating missing
/// intermediate directories, which are left in place later (other containers share them).
fn make_dirs(handle: &CgroupHandle, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    for dir in handle.dirs() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CgroupError::CreateDir {
                path: parent.to_owned(),
                source: e,
            })?;
        }
        if !fs::mkdir(dir)? {
            return Err(CgroupError::AlreadyExists {
                path: dir.to_owned(),
            });
        }
        created.push(dir.to_owned());
    }
    Ok(())
}

fn write_limits(handle: &CgroupHandle, r: &Resources) -> Result<(), CgroupError> {
    if let (Some(limit), Some(dir)) = (r.memory_limit, handle.dir("memory")) {
        let value = limit.to_string();
        // memsw must stay >= the memory limit, so the memory limit goes first.
        fs::write(&dir.join("memory.limit_in_bytes"), &value)?;
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if fs::present(&memsw) {
            fs::write(&memsw, &value)?;
        } else {
            debug!(path = %memsw.display(), "swap accounting unavailable, memsw limit not set");
        }
        let swappiness = dir.join("memory.swappiness");
        if let Err(e) = fs::write(&swappiness, "0") {
            debug!(error = %e, "cannot set memory.swappiness, continuing");
        }
    }
    if let (Some(q), Some(dir)) = (r.cpu_quota, handle.dir("cpu")) {
        fs::write(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
        fs::write(&dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())?;
    }
    if let (Some(max), Some(dir)) = (r.pids_limit, handle.dir("pids")) {
        fs::write(&dir.join("pids.max"), &max.to_string())?;
    }
    if let Some(dir) = handle.dir("devices") {
        fs::write(&dir.join("devices.deny"), "a")?;
        for rule in ALLOWED_DEVICES {
            fs::write(&dir.join("devices.allow"), rule)?;
        }
    }
    Ok(())
}

#[cfg(test)]
impl V1Manager {
    pub(crate) fn parents_for_test(&self) -> BTreeMap<String, PathBuf> {
        self.parents.clone()
    }
}
