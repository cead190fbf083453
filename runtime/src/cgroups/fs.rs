//! The few filesystem operations cgroups need, each traced at debug level and each mapping
//! its failure to a [`CgroupError`] naming the file (and value).
//!
//! The same code drives the real cgroupfs and scratch directory trees in tests. The kernel
//! supplies a cgroup's control files when its directory is made and removes them with
//! `rmdir`; a scratch tree does neither, so outside cgroupfs writes create the file and
//! removal is recursive. Which one a path is on is decided by `statfs`, never by a flag.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
use tracing::{debug, trace};

use super::CgroupError;

/// True if `dir` lies on a cgroup (v1 or v2) filesystem.
pub(crate) fn is_cgroupfs(dir: &Path) -> bool {
    match statfs(dir) {
        Ok(s) => {
            s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

/// True if the control file exists, or would exist: in a scratch tree every file "exists".
pub(crate) fn present(path: &Path) -> bool {
    path.exists() || !path.parent().is_some_and(is_cgroupfs)
}

/// Writes `value` to a control file in one `write(2)`, as the kernel expects.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    debug!(path = %path.display(), value, "cgroup write");
    let on_cgroupfs = path.parent().is_some_and(is_cgroupfs);
    let result = OpenOptions::new()
        .write(true)
        .create(!on_cgroupfs)
        .truncate(!on_cgroupfs)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    if let Err(e) = result {
        debug!(path = %path.display(), value, error = %e, "cgroup write failed");
        return Err(CgroupError::write(path, value, e));
    }
    Ok(())
}

/// Reads a control file whole.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(|e| CgroupError::read(path, e))?;
    trace!(path = %path.display(), len = text.len(), "cgroup read");
    Ok(text)
}

/// Reads a `cgroup.procs`-style file: one pid per line.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = read(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse::<i32>().map_err(|_| CgroupError::Parse {
                what: path.display().to_string(),
                reason: format!("{l:?} is not a pid"),
            })
        })
        .collect()
}

/// The value of `key` in a flat-keyed file such as `memory.events` or `memory.oom_control`
/// (`key value` per line).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// Creates one directory (not its parents); `Ok(false)` if it already existed.
pub(crate) fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    debug!(path = %dir.display(), "cgroup mkdir");
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CgroupError::CreateDir {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// How long `rmdir` is retried while the kernel still reports the cgroup busy (processes that
/// were just killed linger for a moment).
const RMDIR_RETRY: Duration = Duration::from_secs(2);

/// Removes a cgroup directory; a missing one is fine (idempotent). Retries briefly on `EBUSY`.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    debug!(path = %dir.display(), "cgroup rmdir");
    let deadline = Instant::now() + RMDIR_RETRY;
    let mut pause = Duration::from_millis(5);
    loop {
        let result = if dir.exists() && !is_cgroupfs(dir) {
            std::fs::remove_dir_all(dir)
        } else {
            std::fs::remove_dir(dir)
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                debug!(path = %dir.display(), "cgroup busy, retrying rmdir");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let text = "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "under_oom"), Some(1));
        assert_eq!(keyed_value(text, "oom"), None);
    }

    #[test]
    fn scratch_tree_writes_create_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pids.max");
        write(&f, "1000").unwrap();
        write(&f, "7").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "7");
        assert!(present(&dir.path().join("memory.swap.max")));
        remove_dir(dir.path()).unwrap();
        remove_dir(dir.path()).unwrap();
    }
}
