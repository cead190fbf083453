//! The container's filesystem: the overlay of the image layers becomes `/`, with fresh `/proc`,
//! `/dev` and `/sys` and the host's root out of reach.
//!
//! [`enter_rootfs`] runs in the container's init process, in a fresh mount namespace, before
//! privileges are dropped. Invariants it keeps:
//! - nothing it mounts propagates to the host: every mount is made private first, and the
//!   option string is validated before the first mount, so a bad spec changes nothing;
//! - `/dev` is a private tmpfs holding only `null zero full random urandom tty` (bind mounts
//!   of the host nodes, so no `CAP_MKNOD` is needed), a private devpts instance, `shm`,
//!   `mqueue` and the usual symlinks;
//! - `/proc` paths that leak host information or allow host changes are masked or read-only
//!   as in runc's defaults, and `/sys` is read-only;
//! - the host's root is detached after `pivot_root`; no path in the container leads to it.
//!
//! Mount points the image itself provides (`/proc`, `/dev`, `/sys`) must be real directories:
//! a symlink there would be resolved against the host's root before the pivot and could make
//! the runtime mount over a host path, so it is refused.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::container::spec::BindMount;

/// Where and how to build a container's root filesystem.
#[derive(Debug, Clone, Copy)]
pub struct RootfsSpec<'a> {
    /// Unpacked image layers, LOWEST first (the base image first).
    pub lower_dirs: &'a [PathBuf],
    /// The container's writable layer: an existing directory on the same filesystem as
    /// `work_dir`.
    pub upper_dir: &'a Path,
    /// Overlayfs's scratch directory: existing and empty, same filesystem as `upper_dir`.
    pub work_dir: &'a Path,
    /// An existing empty directory where the overlay is mounted; it becomes `/`.
    pub target: &'a Path,
    /// Mount the root read-only (`/dev`, `/dev/shm`, `/dev/pts`, `/dev/mqueue` stay
    /// writable).
    pub readonly_rootfs: bool,
    /// Host files bind-mounted read-only into the container (e.g. `/etc/resolv.conf`).
    pub mounts: &'a [BindMount],
}

/// Why the container's root filesystem could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The spec has no image layers.
    #[error("no image layers to mount at {0}")]
    NoLayers(PathBuf),
    /// More layers than overlayfs stacks.
    #[error("{layers} image layers exceed overlayfs's limit of {limit} lower directories")]
    TooManyLayers {
        /// Number of layers given.
        layers: usize,
        /// The kernel's limit.
        limit: usize,
    },
    /// A layer path holds a character overlayfs's option syntax cannot carry.
    #[error(
        "overlay directory {path} contains {ch:?}, which overlayfs mount options cannot carry"
    )]
    UnsupportedPath {
        /// The offending directory.
        path: PathBuf,
        /// The offending character.
        ch: char,
    },
    /// The overlay option string does not fit in the single page `mount(2)` copies.
    #[error(
        "overlay mount options for {layers} layers are {len} bytes, over the {limit}-byte \
         page size limit of mount(2); shorten the layer paths or squash layers"
    )]
    OptionsTooLong {
        /// Number of layers.
        layers: usize,
        /// Length of the option string including its terminating NUL.
        len: usize,
        /// The page size.
        limit: usize,
    },
    /// An image path that must be a directory to mount on is something else.
    #[error("{path} in the image is {what}; refusing to mount over it")]
    BadMountPoint {
        /// The path, inside the target.
        path: PathBuf,
        /// What it is instead, e.g. "a symlink".
        what: &'static str,
    },
    /// A bind mount's destination is not a clean absolute path.
    #[error("bind mount destination {0} must be an absolute path without '..'")]
    BadDestination(PathBuf),
    /// A mount or unmount failed.
    #[error("{what} at {target} failed: {source}")]
    Mount {
        /// The operation, e.g. `mount overlay` or `bind /dev/null`.
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// A filesystem operation other than mounting failed.
    #[error("{op} {path} failed: {source}")]
    Io {
        /// The operation, e.g. `create`, `symlink`.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// overlayfs's `OVL_MAX_STACK`.
const MAX_LAYERS: usize = 500;

/// Device nodes bind-mounted from the host into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` files hidden behind `/dev/null` and directories hidden behind an empty read-only
/// tmpfs (runc's default `maskedPaths`); absent ones are skipped.
const MASKED_PATHS: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// `/proc` paths remounted read-only (runc's default `readonlyPaths`).
const READONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Builds the container's root filesystem and switches into it.
///
/// Must run in a fresh mount namespace (and a fresh pid namespace for `/proc` to show only
/// the container, a fresh network namespace for `/sys` to be mountable, a fresh ipc namespace
/// for `/dev/mqueue`), with `CAP_SYS_ADMIN`, in a single-threaded process. In order: makes all
/// mounts private, mounts the overlay at `target`, mounts `/proc`, `/dev` (with its minimal
/// device set, devpts, shm, mqueue), read-only `/sys`, masks and write-protects `/proc` paths,
/// optionally makes the root read-only, then `pivot_root`s into `target`, detaches the old
/// root and changes directory to the new `/`. On error the process must not go on to run
/// the container: the mount namespace is half built.
pub fn enter_rootfs(spec: &RootfsSpec) -> Result<(), RootfsError> {
    let options = overlay_options(spec, page_size())?;
    let target = spec.target;

    mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        "make mounts private",
    )?;
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(&options),
        "mount overlay",
    )?;

    let proc_dir = mount_point(target, "proc")?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        hardened,
        None,
        "mount proc",
    )?;

    let dev_dir = mount_point(target, "dev")?;
    populate_dev(&dev_dir)?;

    let sys_dir = mount_point(target, "sys")?;
    mount_sys(&sys_dir)?;

    for path in MASKED_PATHS {
        mask(&target.join(path))?;
    }
    for path in READONLY_PATHS {
        let path = target.join(path);
        if exists(&path)? {
            bind(&path, &path, MsFlags::MS_REC)?;
            remount_readonly(&path)?;
        }
    }

    // Before the root goes read-only: a missing destination is created in the upper layer.
    for m in spec.mounts {
        bind_readonly(target, m)?;
    }

    if spec.readonly_rootfs {
        remount_readonly(target)?;
    }
    pivot_into(target)
}

/// The overlay's option string, checked against overlayfs's syntax and `mount(2)`'s limit
/// before anything is mounted.
fn overlay_options(spec: &RootfsSpec, page_size: usize) -> Result<String, RootfsError> {
    if spec.lower_dirs.is_empty() {
        return Err(RootfsError::NoLayers(spec.target.to_owned()));
    }
    if spec.lower_dirs.len() > MAX_LAYERS {
        return Err(RootfsError::TooManyLayers {
            layers: spec.lower_dirs.len(),
            limit: MAX_LAYERS,
        });
    }
    let dirs = spec
        .lower_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain([spec.upper_dir, spec.work_dir]);
    for dir in dirs {
        let text = dir.to_str().ok_or_else(|| RootfsError::UnsupportedPath {
            path: dir.to_owned(),
            ch: char::REPLACEMENT_CHARACTER,
        })?;
        if let Some(ch) = text.chars().find(|c| matches!(c, ':' | ',' | '\\' | '\n')) {
            return Err(RootfsError::UnsupportedPath {
                path: dir.to_owned(),
                ch,
            });
        }
    }
    // Every path was just checked to be UTF-8; lossy conversion changes nothing.
    let lower: Vec<_> = spec
        .lower_dirs
        .iter()
        .rev()
        .map(|d| d.to_string_lossy())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper_dir.to_string_lossy(),
        spec.work_dir.to_string_lossy()
    );
    if options.len() + 1 > page_size {
        return Err(RootfsError::OptionsTooLong {
            layers: spec.lower_dirs.len(),
            len: options.len() + 1,
            limit: page_size,
        });
    }
    Ok(options)
}

fn page_size() -> usize {
    // SAFETY: sysconf takes an integer and has no side effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// `/dev` as a fresh tmpfs with the minimal device set.
fn populate_dev(dev: &Path) -> Result<(), RootfsError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "mount tmpfs",
    )?;
    for name in DEVICES {
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(|source| RootfsError::Io {
            op: "create",
            path: node.clone(),
            source,
        })?;
        // A bind mount of the host's node needs no CAP_MKNOD and works in user namespaces.
        bind(&Path::new("/dev").join(name), &node, MsFlags::empty())?;
    }

    let pts = make_dir(dev, "pts")?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        "mount devpts",
    )?;
    let shm = make_dir(dev, "shm")?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
        "mount tmpfs",
    )?;
    let mqueue = make_dir(dev, "mqueue")?;
    mount(
        Some("mqueue"),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
        "mount mqueue",
    )?;

    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, to) in links {
        let link = dev.join(name);
        std::os::unix::fs::symlink(to, &link).map_err(|source| RootfsError::Io {
            op: "symlink",
            path: link,
            source,
        })?;
    }
    Ok(())
}

/// A read-only `/sys`: a fresh sysfs (possible because the container has its own network
/// namespace), or a read-only bind of the host's when the kernel refuses that.
fn mount_sys(sys: &Path) -> Result<(), RootfsError> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match nix::mount::mount(Some("sysfs"), sys, Some("sysfs"), flags, None::<&str>) {
        Ok(()) => {
            tracing::debug!(target = %sys.display(), "mounted sysfs");
            Ok(())
        }
        Err(errno @ (nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY)) => {
            tracing::debug!(%errno, "sysfs refused, binding the host's /sys read-only");
            bind(Path::new("/sys"), sys, MsFlags::empty())?;
            remount_readonly(sys)
        }
        Err(source) => Err(RootfsError::Mount {
            what: "mount sysfs".into(),
            target: sys.to_owned(),
            source,
        }),
    }
}

/// Bind-mounts `m.source` read-only at `m.destination` inside `target`, creating an empty
/// file (or directory, for a directory source) there when the image lacks one. Every
/// component of the destination is checked not to be a symlink, so the mount can never land
/// outside the container's root; a symlink as the last component (Debian's
/// `/etc/resolv.conf` often is one) is replaced by a plain file in the writable layer.
fn bind_readonly(target: &Path, m: &BindMount) -> Result<(), RootfsError> {
    use std::path::Component;
    let bad = || RootfsError::BadDestination(m.destination.clone());
    if !m.destination.is_absolute() {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for c in m.destination.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => parts.push(p),
            _ => return Err(bad()),
        }
    }
    let Some((last, parents)) = parts.split_last() else {
        return Err(bad());
    };
    let mut dir = target.to_path_buf();
    for p in parents {
        dir.push(p);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                return Err(RootfsError::BadMountPoint {
                    path: dir,
                    what: if meta.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a directory"
                    },
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|source| RootfsError::Io {
                    op: "create directory",
                    path: dir.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(RootfsError::Io {
                    op: "stat",
                    path: dir,
                    source,
                })
            }
        }
    }
    let dest = dir.join(last);
    let source_is_dir = std::fs::metadata(&m.source)
        .map_err(|source| RootfsError::Io {
            op: "stat bind source",
            path: m.source.clone(),
            source,
        })?
        .is_dir();
    let existing = std::fs::symlink_metadata(&dest).ok();
    if existing
        .as_ref()
        .is_some_and(|meta| meta.file_type().is_symlink())
    {
        std::fs::remove_file(&dest).map_err(|source| RootfsError::Io {
            op: "remove symlink",
            path: dest.clone(),
            source,
        })?;
    }
    let present = existing.is_some_and(|meta| !meta.file_type().is_symlink());
    if !present {
        let made = if source_is_dir {
            std::fs::create_dir(&dest)
        } else {
            std::fs::File::create(&dest).map(drop)
        };
        made.map_err(|source| RootfsError::Io {
            op: "create",
            path: dest.clone(),
            source,
        })?;
    }
    bind(&m.source, &dest, MsFlags::MS_REC)?;
    remount_readonly(&dest)
}

/// Hides `path`: a file behind `/dev/null`, a directory behind an empty read-only tmpfs.
fn mask(path: &Path) -> Result<(), RootfsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RootfsError::Io {
                op: "stat",
                path: path.to_owned(),
                source,
            })
        }
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
            "mask with tmpfs",
        )
    } else {
        bind(Path::new("/dev/null"), path, MsFlags::empty())
    }
}

/// Makes the mount at `path` read-only, keeping its other flags (a bind remount replaces
/// them all, and dropping `nosuid`/`nodev`/`noexec` would loosen it).
fn remount_readonly(path: &Path) -> Result<(), RootfsError> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|source| RootfsError::Mount {
        what: "statvfs".into(),
        target: path.to_owned(),
        source,
    })?;
    // The ST_* bits of statvfs equal the MS_* mount flags they report.
    let keep = MsFlags::from_bits_truncate(stat.flags().bits() as libc::c_ulong)
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME);
    mount(
        None,
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
        None,
        "remount read-only",
    )
}

/// `pivot_root(".", ".")` stacks the old root on top of the new one at `/`; detaching it
/// then leaves only the new root, with no directory to create for the old one.
fn pivot_into(target: &Path) -> Result<(), RootfsError> {
    nix::unistd::chdir(target).map_err(io_err("chdir", target))?;
    tracing::debug!(target = %target.display(), "pivot_root");
    nix::unistd::pivot_root(".", ".").map_err(io_err("pivot_root into", target))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(|source| RootfsError::Mount {
        what: "detach the old root".into(),
        target: target.to_owned(),
        source,
    })?;
    nix::unistd::chdir("/").map_err(io_err("chdir", Path::new("/")))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> RootfsError {
    let path = path.to_owned();
    move |errno| RootfsError::Io {
        op,
        path,
        source: errno.into(),
    }
}

/// `target/name` as a directory to mount on, created if the image lacks it.
fn mount_point(target: &Path, name: &str) -> Result<PathBuf, RootfsError> {
    let path = target.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(meta) => Err(RootfsError::BadMountPoint {
            path,
            what: if meta.file_type().is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            },
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_dir(target, name),
        Err(source) => Err(RootfsError::Io {
            op: "stat",
            path,
            source,
        }),
    }
}

fn make_dir(parent: &Path, name: &str) -> Result<PathBuf, RootfsError> {
    let path = parent.join(name);
    std::fs::create_dir(&path).map_err(|source| RootfsError::Io {
        op: "create directory",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn exists(path: &Path) -> Result<bool, RootfsError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RootfsError::Io {
            op: "stat",
            path: path.to_owned(),
            source,
        }),
    }
}

fn bind(source: &Path, target: &Path, extra: MsFlags) -> Result<(), RootfsError> {
    let flags = MsFlags::MS_BIND | extra;
    tracing::debug!(source = %source.display(), target = %target.display(), ?flags, "bind");
    nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|errno| {
        RootfsError::Mount {
            what: format!("bind {}", source.display()),
            target: target.to_owned(),
            source: errno,
        }
    })
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), RootfsError> {
    tracing::debug!(what, target = %target.display(), ?fstype, ?flags, "mount");
    nix::mount::mount(source, target, fstype, flags, data).map_err(|source| RootfsError::Mount {
        what: what.to_owned(),
        target: target.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(lower: &'a [PathBuf]) -> RootfsSpec<'a> {
        RootfsSpec {
            lower_dirs: lower,
            upper_dir: Path::new("/c/upper"),
            work_dir: Path::new("/c/work"),
            target: Path::new("/c/rootfs"),
            readonly_rootfs: false,
            mounts: &[],
        }
    }

    #[test]
    fn overlay_lowerdir_lists_the_top_layer_first() {
        let lower = [
            PathBuf::from("/l/base"),
            PathBuf::from("/l/mid"),
            PathBuf::from("/l/top"),
        ];
        assert_eq!(
            overlay_options(&spec(&lower), 4096).unwrap(),
            "lowerdir=/l/top:/l/mid:/l/base,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn overlay_options_over_a_page_are_rejected_before_mounting() {
        let lower: Vec<_> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/layers/{i:060}")))
            .collect();
        let err = overlay_options(&spec(&lower), 4096).unwrap_err();
        assert!(matches!(
            err,
            RootfsError::OptionsTooLong {
                layers: 100,
                limit: 4096,
                ..
            }
        ));
        assert!(err.to_string().contains("4096-byte page size"), "{err}");
    }

    #[test]
    fn overlay_paths_with_option_separators_are_rejected() {
        for bad in ["/l/a:b", "/l/a,b", "/l/a\\b"] {
            let lower = [PathBuf::from(bad)];
            let err = overlay_options(&spec(&lower), 4096).unwrap_err();
            assert!(matches!(err, RootfsError::UnsupportedPath { .. }), "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn overlay_without_layers_is_rejected() {
        assert!(matches!(
            overlay_options(&spec(&[]), 4096),
            Err(RootfsError::NoLayers(_))
        ));
    }
}
