//! The container's network: either a fresh network namespace holding only the loopback
//! interface, or an existing namespace (a node agent's per-replica sandbox) that it joins.
//!
//! A new network namespace starts with `lo` present but down; [`bring_up_loopback`] brings it
//! up and creates nothing else. Invariant: it only ever touches the interface named `lo` of the
//! calling thread's current network namespace, so calling it in the host namespace is harmless
//! (the host's `lo` is already up). [`join_netns`] changes nothing in the namespace it joins:
//! whoever made it owns its interfaces.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why the container's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace file to join could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `setns` refused the file (not a network namespace, or no permission).
    #[error("cannot join network namespace {path}: {source}")]
    Join {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// The control socket used for interface ioctls could not be opened.
    #[error("cannot open an AF_INET control socket for interface ioctls: {0}")]
    Socket(#[source] std::io::Error),
    /// An interface ioctl failed.
    #[error("{op} on interface {interface} failed: {source}")]
    Ioctl {
        /// The request, e.g. `SIOCSIFFLAGS`.
        op: &'static str,
        /// The interface name.
        interface: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

const LOOPBACK: &str = "lo";

/// Brings `lo` up in the current (new) network namespace with `SIOCGIFFLAGS`/`SIOCSIFFLAGS`
/// on an `AF_INET` datagram socket. No other interface is created or changed.
pub fn bring_up_loopback() -> Result<(), NetError> {
    tracing::debug!(interface = LOOPBACK, "bringing interface up");
    // SAFETY: socket(2) takes no pointers; the returned descriptor is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(NetError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain old data (a name array and a union of integers/arrays); all-zero
    // is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(LOOPBACK.bytes()) {
        *dst = src as libc::c_char;
    }

    // SAFETY: `req` is a valid, NUL-terminated ifreq that lives across the call; the kernel
    // writes only within it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    if rc < 0 {
        return Err(ioctl_error("SIOCGIFFLAGS"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
    if rc < 0 {
        return Err(ioctl_error("SIOCSIFFLAGS"));
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path` (an nsfs file).
///
/// Must run in a single-threaded process (the container's init) or on a thread that will
/// never run anything else: `setns` changes only the calling thread.
pub fn join_netns(path: &std::path::Path) -> Result<(), NetError> {
    tracing::debug!(netns = %path.display(), "joining network namespace");
    let file = std::fs::File::open(path).map_err(|source| NetError::Open {
        path: path.to_owned(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        NetError::Join {
            path: path.to_owned(),
            source,
        }
    })
}

fn ioctl_error(op: &'static str) -> NetError {
    NetError::Ioctl {
        op,
        interface: LOOPBACK,
        source: std::io::Error::last_os_error(),
    }
}
