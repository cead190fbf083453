//! Resource limits through cgroup v1 or v2, detected at start from `/proc/self/mountinfo`.
//!
//! - [`CgroupManager`] is the capability "a place to create cgroups"; [`V1Manager`] and
//!   [`V2Manager`] are its two implementations, chosen by [`detect`].
//! - [`CgroupHandle`] is one created cgroup; it serialises into a container's state file so a
//!   later process can reopen it.
//!
//! Invariants: cgroups are only ever created below the process's *own* cgroup in each
//! hierarchy, and only files inside cgroups Gantry created are written (v2's
//! `cgroup.subtree_control` of the own cgroup is the one exception, needed to delegate
//! controllers). No process Gantry did not start is ever moved.

mod error;
mod fs;
mod handle;
pub mod mountinfo;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use tracing::debug;

pub use error::CgroupError;
pub use handle::{CgroupHandle, UNIFIED};
pub use v1::{V1Manager, ALLOWED_DEVICES, V1_CONTROLLERS};
pub use v2::{V2Manager, V2_CONTROLLERS};

use mountinfo::{own_cgroup_dir, parse_mountinfo, parse_proc_cgroup};

/// The limits applied to a container's cgroup. `None` leaves the kernel default (unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes. Swap is capped too so the limit cannot be escaped (v1:
    /// `memory.memsw.limit_in_bytes` when present, and swappiness 0; v2: `memory.swap.max` 0).
    pub memory_limit: Option<u64>,
    /// CFS bandwidth limit.
    pub cpu_quota: Option<CpuQuota>,
    /// Maximum number of processes (and threads).
    pub pids_limit: Option<u64>,
}

/// A CFS bandwidth limit: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// CPU time allowed per period, in microseconds.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl CpuQuota {
    /// The standard period (100 ms).
    pub const DEFAULT_PERIOD_US: u64 = 100_000;
    /// The kernel's smallest accepted quota (1 ms).
    pub const MIN_QUOTA_US: u64 = 1_000;

    /// From thousandths of a CPU (`--cpus 0.5` is 500): quota `m * 100` per 100 ms period,
    /// raised to the kernel's 1 ms minimum.
    pub fn from_millicpus(m: u64) -> Self {
        CpuQuota {
            quota_us: m
                .saturating_mul(Self::DEFAULT_PERIOD_US / 1000)
                .max(Self::MIN_QUOTA_US),
            period_us: Self::DEFAULT_PERIOD_US,
        }
    }
}

/// Which cgroup interface a manager or handle drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// One hierarchy per controller (also the hybrid layout).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The capability "a place to create cgroups".
///
/// # Correctness
/// An implementation must:
/// - create only below the process's own cgroup, and never move processes it did not start;
/// - return a handle only once every requested limit is written (a handle means "limited");
/// - on any failure remove the leaf directories it created and return an error naming the
///   file and value that failed.
pub trait CgroupManager: Send + Sync {
    /// The version this manager drives.
    fn version(&self) -> CgroupVersion;

    /// Creates `<parent>/<name>` in every controller Gantry uses (v1: memory, cpu, cpuacct,
    /// pids, devices, freezer; v2: the unified hierarchy with memory, cpu and pids enabled),
    /// writes the limits and, on v1, the device rules ([`ALLOWED_DEVICES`] after denying
    /// all). `name` is a relative path such as `gantry/<id>`; intermediate cgroups are
    /// created as needed and left in place by [`CgroupHandle::destroy`]. An existing leaf is
    /// an error ([`CgroupError::AlreadyExists`]).
    fn create(&self, name: &str, resources: &Resources) -> Result<CgroupHandle, CgroupError>;
}

/// Detects the cgroup layout of this process from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`: a v1 memory hierarchy (pure v1, or the hybrid layout with cgroup2
/// holding only hugetlb) gives [`V1Manager`]; otherwise a cgroup2 mount gives [`V2Manager`].
/// The parent of created cgroups is the process's own cgroup in each hierarchy.
pub fn detect() -> Result<Box<dyn CgroupManager>, CgroupError> {
    let (mountinfo, cgroup) = read_proc_self()?;
    detect_from(&mountinfo, &cgroup, Path::new("/"))
}

/// [`detect`] from given texts, with every mount point taken relative to `fs_root` (a
/// scratch tree in tests; `/` for the real system).
pub fn detect_from(
    mountinfo: &str,
    proc_self_cgroup: &str,
    fs_root: &Path,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let layout = detect_layout(mountinfo, proc_self_cgroup, fs_root)?;
    Ok(match layout {
        Layout::V1(m) => Box::new(m),
        Layout::V2(m) => Box::new(m),
    })
}

/// Opt-in preparation for cgroup v2 delegation, for a process running in a non-root cgroup
/// that holds processes (which the "no internal processes" rule forbids from enabling
/// controllers): moves the calling process — and nothing else — into the leaf
/// `<own>/gantry-self`, then enables Gantry's controllers in the own cgroup. Fails, naming
/// the file, if other processes remain there. Returns the manager to use, whose parent is the
/// original own cgroup. On v1 it only detects.
///
/// Later processes started from the moved one inherit `gantry-self`; [`detect`] treats a own
/// cgroup named `gantry-self` as standing for its parent, so they create cgroups in the same
/// place.
pub fn prepare_v2_delegation() -> Result<Box<dyn CgroupManager>, CgroupError> {
    let (mountinfo, cgroup) = read_proc_self()?;
    prepare_v2_delegation_from(&mountinfo, &cgroup, Path::new("/"), std::process::id())
}

/// [`prepare_v2_delegation`] for given texts, filesystem root and pid (tests).
pub fn prepare_v2_delegation_from(
    mountinfo: &str,
    proc_self_cgroup: &str,
    fs_root: &Path,
    pid: u32,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let manager = match detect_layout(mountinfo, proc_self_cgroup, fs_root)? {
        Layout::V1(m) => return Ok(Box::new(m)),
        Layout::V2(m) => m,
    };
    let own = manager.parent();
    let procs = own.join("cgroup.procs");
    let pids = if procs.exists() {
        fs::read_pids(&procs)?
    } else {
        Vec::new()
    };
    if pids.iter().any(|p| u32::try_from(*p).ok() == Some(pid)) {
        let leaf = own.join(SELF_LEAF);
        fs::mkdir(&leaf)?;
        fs::write(&leaf.join("cgroup.procs"), &pid.to_string())?;
        if !fs::is_cgroupfs(own) {
            // A scratch tree has no kernel to move the pid out of the parent's list.
            let rest: Vec<String> = pids
                .iter()
                .filter(|p| u32::try_from(**p).ok() != Some(pid))
                .map(i32::to_string)
                .collect();
            fs::write(&procs, &rest.join("\n"))?;
        }
    }
    manager.delegate_parent()?;
    Ok(Box::new(manager))
}

/// The leaf [`prepare_v2_delegation`] moves the calling process into.
pub const SELF_LEAF: &str = "gantry-self";

enum Layout {
    V1(V1Manager),
    V2(V2Manager),
}

fn read_proc_self() -> Result<(String, String), CgroupError> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| CgroupError::read(p, e));
    Ok((read("/proc/self/mountinfo")?, read("/proc/self/cgroup")?))
}

fn detect_layout(
    mountinfo: &str,
    proc_self_cgroup: &str,
    fs_root: &Path,
) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo)?;
    let cgroups = parse_proc_cgroup(proc_self_cgroup)?;

    if mounts.iter().any(|m| m.has_v1_controller("memory")) {
        let mut parents = BTreeMap::new();
        for controller in V1_CONTROLLERS {
            let Some(mount) = mounts.iter().find(|m| m.has_v1_controller(controller)) else {
                if controller == "cpuacct" {
                    debug!("cpuacct controller not mounted, accounting skipped");
                    continue;
                }
                return Err(CgroupError::ControllerNotMounted {
                    controller: controller.to_owned(),
                    what: "/proc/self/mountinfo".to_owned(),
                });
            };
            let entry = cgroups
                .iter()
                .find(|c| c.hierarchy_id != 0 && c.controllers.iter().any(|n| n == controller))
                .ok_or_else(|| CgroupError::NotInCgroup {
                    hierarchy: controller.to_owned(),
                    what: "/proc/self/cgroup".to_owned(),
                })?;
            parents.insert(
                controller.to_owned(),
                own_cgroup_dir(fs_root, mount, &entry.path),
            );
        }
        debug!(?parents, "detected cgroup v1");
        return Ok(Layout::V1(V1Manager::new(parents)));
    }

    let mut v2_mounts = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let first = v2_mounts.next();
    let mount = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"))
        .or(first)
        .ok_or_else(|| CgroupError::NoCgroupFs {
            what: "/proc/self/mountinfo".to_owned(),
        })?;
    let entry = cgroups
        .iter()
        .find(|c| c.hierarchy_id == 0)
        .ok_or_else(|| CgroupError::NotInCgroup {
            hierarchy: "unified (0::)".to_owned(),
            what: "/proc/self/cgroup".to_owned(),
        })?;
    let mut own = entry.path.clone();
    if own.file_name().is_some_and(|n| n == SELF_LEAF) {
        own.pop();
    }
    let is_root = own.parent().is_none();
    let parent = own_cgroup_dir(fs_root, mount, &own);
    debug!(parent = %parent.display(), is_root, "detected cgroup v2");
    Ok(Layout::V2(V2Manager::new(parent, is_root)))
}

/// Accepts only plain relative paths (`gantry/<id>`): no root, `..`, `.` or empty parts.
pub(crate) fn validate_name(name: &str) -> Result<(), CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.split('/').any(str::is_empty) {
        return bad("empty path component");
    }
    if name.split('/').any(|c| c == "." || c == "..")
        || !Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return bad("must be a relative path without . or ..");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/c07652
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    fn v1_parents(mountinfo: &str, cgroup: &str) -> BTreeMap<String, std::path::PathBuf> {
        match detect_layout(mountinfo, cgroup, Path::new("/")).unwrap() {
            Layout::V1(m) => m.parents_for_test(),
            Layout::V2(_) => panic!("expected v1"),
        }
    }

    #[test]
    fn hybrid_layout_is_v1_with_own_memory_cgroup_as_parent() {
        let p = v1_parents(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        assert_eq!(
            p["memory"],
            Path::new("/sys/fs/cgroup/memory/process_api/c07652")
        );
        assert_eq!(p["cpu"], Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(p["cpuacct"], Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(p["pids"], Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(p["devices"], Path::new("/sys/fs/cgroup/devices"));
        assert_eq!(p["freezer"], Path::new("/sys/fs/cgroup/freezer"));
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn pure_v1_with_comounted_cpu_cpuacct_shares_one_dir() {
        let mountinfo = "\
25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
26 20 0:23 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
27 20 0:24 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
28 20 0:25 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
29 20 0:26 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
";
        let cgroup = "5:freezer:/a\n4:devices:/a\n3:pids:/a\n2:memory:/a\n1:cpu,cpuacct:/a\n";
        let p = v1_parents(mountinfo, cgroup);
        assert_eq!(p["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct/a"));
        assert_eq!(p["cpuacct"], p["cpu"]);
        assert_eq!(p["memory"], Path::new("/sys/fs/cgroup/memory/a"));
    }

    #[test]
    fn pure_v1_without_pids_controller_is_an_error_naming_it() {
        let mountinfo = "26 20 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let err = detect_from(mountinfo, "2:memory:/\n", Path::new("/"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn pure_v2_uses_own_unified_cgroup_under_fs_root() {
        let mountinfo = "\
30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
        let root = Path::new("/scratch");
        match detect_layout(mountinfo, "0::/user.slice/app\n", root).unwrap() {
            Layout::V2(m) => {
                assert_eq!(
                    m.parent(),
                    Path::new("/scratch/sys/fs/cgroup/user.slice/app")
                );
            }
            Layout::V1(_) => panic!("expected v2"),
        }
        // The leaf made by prepare_v2_delegation stands for its parent.
        match detect_layout(mountinfo, "0::/user.slice/app/gantry-self\n", root).unwrap() {
            Layout::V2(m) => {
                assert_eq!(
                    m.parent(),
                    Path::new("/scratch/sys/fs/cgroup/user.slice/app")
                );
            }
            Layout::V1(_) => panic!("expected v2"),
        }
    }

    #[test]
    fn v2_mount_path_with_escaped_space_is_unescaped() {
        let mountinfo = "30 23 0:27 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        match detect_layout(mountinfo, "0::/x\n", Path::new("/")).unwrap() {
            Layout::V2(m) => assert_eq!(m.parent(), Path::new("/mnt/cg two/x")),
            Layout::V1(_) => panic!("expected v2"),
        }
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        let err = detect_from(
            "22 1 8:1 / / rw - ext4 /dev/vda rw\n",
            "0::/\n",
            Path::new("/"),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("no usable cgroup filesystem"),
            "{err}"
        );
    }

    #[test]
    fn names_must_be_plain_relative_paths() {
        assert!(validate_name("gantry/abc").is_ok());
        for bad in ["", "/abs", "../up", "a//b", "a/./b", "a/"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn millicpus_convert_to_quota_per_100ms() {
        assert_eq!(
            CpuQuota::from_millicpus(500),
            CpuQuota {
                quota_us: 50_000,
                period_us: 100_000
            }
        );
        assert_eq!(CpuQuota::from_millicpus(2000).quota_us, 200_000);
        assert_eq!(CpuQuota::from_millicpus(1).quota_us, 1_000);
    }
}
