//! The container process's identity and privileges: which user it runs as and which Linux
//! capabilities it keeps.
//!
//! [`resolve_user`] turns a Docker-style user spec into an [`Identity`] by reading the
//! container's own `/etc/passwd` and `/etc/group` (it must run after the root was switched).
//! [`apply`] then drops privileges in the only order that works: bounding set first (needs
//! `CAP_SETPCAP`), then groups, gid and uid (need `CAP_SETGID`/`CAP_SETUID`), then the
//! capability sets, then `no_new_privs`. After it returns the process can only lose
//! privileges: it must be followed by `execve`.
//!
//! Policy, as Docker's: root in the container gets exactly the requested capabilities in its
//! bounding, permitted and effective sets; a non-root user gets the requested bounding set but
//! empty permitted and effective sets (an `execve` without file capabilities would clear them
//! anyway). The inheritable and ambient sets are always left empty: a non-empty inheritable set
//! lets a non-root process gain capabilities by executing a binary with inheritable file
//! capabilities (CVE-2022-24769), which Docker and runc stopped allowing.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// Why a user could not be resolved or privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The user spec is not one of `""`, `user`, `uid`, `user:group`, `uid:gid`.
    #[error("invalid user spec {spec:?}: {reason}")]
    InvalidUserSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A user name has no entry in the container's `/etc/passwd`.
    #[error("user {user:?} not found in the container's /etc/passwd")]
    UserNotFound {
        /// The user name.
        user: String,
    },
    /// A group name has no entry in the container's `/etc/group`.
    #[error("group {group:?} not found in the container's /etc/group")]
    GroupNotFound {
        /// The group name.
        group: String,
    },
    /// A user or group database exists but could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A capability name is not known.
    #[error("unknown capability {name:?}")]
    UnknownCapability {
        /// The name as given.
        name: String,
    },
    /// A system call failed while dropping privileges.
    #[error("{op} failed: {source}")]
    Syscall {
        /// The call and its argument, e.g. `prctl(PR_CAPBSET_DROP, CAP_MKNOD)`.
        op: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Who the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (real, effective and saved).
    pub uid: u32,
    /// The primary group id (real, effective and saved).
    pub gid: u32,
    /// Supplementary groups; the primary gid is not repeated here.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, if the user has an entry.
    pub home: Option<String>,
    /// The user name from `/etc/passwd`, if the user has an entry.
    pub user_name: Option<String>,
}

/// Largest file read as a user or group database; bigger ones are a sign of a broken image.
const MAX_DB_BYTES: u64 = 16 << 20;

/// Resolves a user spec against the current root's `/etc/passwd` and `/etc/group`.
///
/// Accepted specs: `""` (root), `name`, `uid`, `name:group`, `uid:gid` (and the mixed forms).
/// Numeric ids need no passwd entry; names must exist. Without an explicit group the primary
/// gid comes from the passwd entry (0 if there is none) and the supplementary groups are the
/// `/etc/group` entries listing the user; an explicit group replaces both, as in Docker.
/// A missing database file counts as empty.
pub fn resolve_user(spec: &str) -> Result<Identity, SecurityError> {
    let passwd = read_db("/etc/passwd")?;
    let group = read_db("/etc/group")?;
    let identity = resolve_user_in(spec, &passwd, &group)?;
    tracing::debug!(
        spec,
        uid = identity.uid,
        gid = identity.gid,
        "resolved user"
    );
    Ok(identity)
}

fn read_db(path: &'static str) -> Result<String, SecurityError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => return Err(SecurityError::ReadFile { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DB_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|source| SecurityError::ReadFile { path, source })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn passwd_entries(db: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    db.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next()?;
        let home = f.next()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

fn group_entries(db: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    db.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f.next().unwrap_or("");
        (!name.is_empty() && !name.starts_with('#')).then_some(GroupEntry { name, gid, members })
    })
}

/// Parses a numeric id; `u32::MAX` is `(uid_t)-1`, which the kernel treats as "unchanged".
fn parse_id(s: &str) -> Option<Result<u32, ()>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u32>().ok().filter(|&id| id != u32::MAX).ok_or(()))
}

fn resolve_user_in(spec: &str, passwd: &str, group: &str) -> Result<Identity, SecurityError> {
    let invalid = |reason| SecurityError::InvalidUserSpec {
        spec: spec.to_owned(),
        reason,
    };
    let (user, group_spec) = match spec.split_once(':') {
        _ if spec.is_empty() => ("0", None),
        None => (spec, None),
        Some((u, g)) => (u, Some(g)),
    };
    if user.is_empty() {
        return Err(invalid("the user part is empty"));
    }
    if group_spec == Some("") {
        return Err(invalid("the group part is empty"));
    }
    if group_spec.is_some_and(|g| g.contains(':')) {
        return Err(invalid("more than one ':'"));
    }

    // A name wins over a uid of the same spelling, as in Docker.
    let numeric_user = parse_id(user);
    let entry = passwd_entries(passwd)
        .find(|e| e.name == user)
        .or_else(|| match numeric_user {
            Some(Ok(uid)) => passwd_entries(passwd).find(|e| e.uid == uid),
            _ => None,
        });
    let uid = match (&entry, numeric_user) {
        (Some(e), _) => e.uid,
        (None, Some(Ok(uid))) => uid,
        (None, Some(Err(()))) => return Err(invalid("the uid is out of range")),
        (None, None) => {
            return Err(SecurityError::UserNotFound {
                user: user.to_owned(),
            })
        }
    };

    let (gid, additional_gids) = match group_spec {
        Some(g) => {
            let numeric = parse_id(g);
            let found = group_entries(group).find(|e| e.name == g).map(|e| e.gid);
            let gid = match (found, numeric) {
                (Some(gid), _) => gid,
                (None, Some(Ok(gid))) => gid,
                (None, Some(Err(()))) => return Err(invalid("the gid is out of range")),
                (None, None) => {
                    return Err(SecurityError::GroupNotFound {
                        group: g.to_owned(),
                    })
                }
            };
            (gid, Vec::new())
        }
        None => {
            let gid = entry.as_ref().map_or(0, |e| e.gid);
            let mut extra = Vec::new();
            if let Some(e) = &entry {
                for g in group_entries(group) {
                    let member = g.members.split(',').any(|m| m.trim() == e.name);
                    if member && g.gid != gid && !extra.contains(&g.gid) {
                        extra.push(g.gid);
                    }
                }
            }
            (gid, extra)
        }
    };

    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: entry.as_ref().map(|e| e.home.to_owned()),
        user_name: entry.as_ref().map(|e| e.name.to_owned()),
    })
}

/// Capability names indexed by number (`CAP_CHOWN` = 0 … `CAP_CHECKPOINT_RESTORE` = 40).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability this module knows by name.
const ALL_KNOWN: u64 = (1 << CAP_NAMES.len()) - 1;

/// A set of Linux capabilities, one bit per capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities(u64);

impl Capabilities {
    /// Docker's default set without `CAP_MKNOD`: CHOWN DAC_OVERRIDE FSETID FOWNER NET_RAW
    /// SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE.
    pub fn container_default() -> Self {
        const DEFAULT: [&str; 13] = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        let bits = CAP_NAMES
            .iter()
            .enumerate()
            .filter(|(_, name)| DEFAULT.contains(name))
            .fold(0, |acc, (index, _)| acc | (1 << index));
        Capabilities(bits)
    }

    /// This set plus the named capabilities. Names are case-insensitive, with or without the
    /// `CAP_` prefix; `ALL` adds every known capability.
    pub fn with_added(self, names: &[String]) -> Result<Self, SecurityError> {
        Ok(Capabilities(self.0 | parse_names(names)?))
    }

    /// This set minus the named capabilities (same names as [`Capabilities::with_added`];
    /// `ALL` empties the set).
    pub fn with_dropped(self, names: &[String]) -> Result<Self, SecurityError> {
        Ok(Capabilities(self.0 & !parse_names(names)?))
    }

    /// Whether capability number `cap` (e.g. 27 for `CAP_MKNOD`) is in the set.
    pub fn contains(&self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The names (`CAP_CHOWN`, …) of the capabilities in the set, in numeric order.
    pub fn names(&self) -> Vec<&'static str> {
        (0..CAP_NAMES.len() as u32)
            .filter(|&c| self.contains(c))
            .map(|c| CAP_NAMES[c as usize])
            .collect()
    }

    /// The raw bit mask, bit `n` for capability `n`, as shown in `/proc/<pid>/status`.
    pub fn bits(&self) -> u64 {
        self.0
    }
}

fn parse_names(names: &[String]) -> Result<u64, SecurityError> {
    let mut bits = 0;
    for name in names {
        let upper = name.trim().to_ascii_uppercase();
        if upper == "ALL" {
            bits |= ALL_KNOWN;
            continue;
        }
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let index = CAP_NAMES
            .iter()
            .position(|&n| n == full)
            .ok_or_else(|| SecurityError::UnknownCapability { name: name.clone() })?;
        bits |= 1 << index;
    }
    Ok(bits)
}

fn cap_name(cap: u32) -> String {
    CAP_NAMES
        .get(cap as usize)
        .map_or_else(|| format!("capability {cap}"), |n| (*n).to_owned())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets.
fn capget() -> Result<(u64, u64, u64), SecurityError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes a header and an array of two data structs, both valid and
    // writable for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(syscall_error("capget".to_owned()));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), SecurityError> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |set: u64, hi: bool| if hi { (set >> 32) as u32 } else { set as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: version 3 takes a header and an array of two data structs, both valid for the
    // duration of the call; capset only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(syscall_error(format!(
            "capset(effective={effective:#x}, permitted={permitted:#x})"
        )));
    }
    Ok(())
}

fn prctl(op: &str, option: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, SecurityError> {
    // SAFETY: every option used here takes integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        return Err(syscall_error(op.to_owned()));
    }
    Ok(rc)
}

fn syscall_error(op: String) -> SecurityError {
    SecurityError::Syscall {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// The highest capability number the running kernel knows, probed with `PR_CAPBSET_READ`
/// (which fails with `EINVAL` past it) so it works without `/proc`.
fn last_cap() -> u32 {
    let mut last = 0;
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ takes an integer and only reads the bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc < 0 {
            break;
        }
        last = cap;
    }
    last
}

/// Drops the calling process's privileges to `identity` and `caps`, then sets
/// `no_new_privs`. Must be called while still holding `CAP_SETPCAP`, `CAP_SETUID` and
/// `CAP_SETGID`, in a single-threaded process (credentials are per thread), right before
/// `execve`.
///
/// Requested capabilities the process does not hold itself (or the kernel does not know)
/// cannot be granted; they are left out with a warning rather than failing the container.
pub fn apply(identity: &Identity, caps: Capabilities) -> Result<(), SecurityError> {
    let last = last_cap();
    let supported = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    let (_, held, _) = capget()?;
    let wanted = caps.0 & supported;
    let granted = wanted & held;
    if granted != wanted {
        tracing::warn!(
            missing = ?Capabilities(wanted & !granted).names(),
            "requested capabilities are not held by the runtime and are left out"
        );
    }
    tracing::debug!(
        uid = identity.uid,
        gid = identity.gid,
        caps = ?Capabilities(granted).names(),
        "dropping privileges"
    );

    // The bounding set first: dropping from it needs CAP_SETPCAP, which may be dropped below.
    for cap in 0..=last {
        if granted & (1 << cap) != 0 {
            continue;
        }
        let op = format!("prctl(PR_CAPBSET_DROP, {})", cap_name(cap));
        prctl(&op, libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))?;
    }

    // Keep the permitted set across the uid change; the effective set is recomputed below.
    prctl("prctl(PR_SET_KEEPCAPS, 1)", libc::PR_SET_KEEPCAPS, 1)?;
    let groups: Vec<libc::gid_t> = identity.additional_gids.clone();
    // SAFETY: `groups` is a valid array of `groups.len()` gids for the duration of the call.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(syscall_error(format!("setgroups({groups:?})")));
    }
    let gid = nix::unistd::Gid::from_raw(identity.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| SecurityError::Syscall {
        op: format!("setresgid({})", identity.gid),
        source: e.into(),
    })?;
    let uid = nix::unistd::Uid::from_raw(identity.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| SecurityError::Syscall {
        op: format!("setresuid({})", identity.uid),
        source: e.into(),
    })?;

    // Root keeps the granted set; anyone else gets none, as in Docker (execve would clear
    // them for a non-root user anyway, since we set no ambient capabilities).
    let sets = if identity.uid == 0 { granted } else { 0 };
    capset(sets, sets, 0)?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    // Kernels before 4.3 have no ambient set (EINVAL): nothing to clear there.
    if rc < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
        return Err(syscall_error("prctl(PR_CAP_AMBIENT_CLEAR_ALL)".to_owned()));
    }
    prctl("prctl(PR_SET_KEEPCAPS, 0)", libc::PR_SET_KEEPCAPS, 0)?;
    prctl(
        "prctl(PR_SET_NO_NEW_PRIVS, 1)",
        libc::PR_SET_NO_NEW_PRIVS,
        1,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        42:x:4242:4242::/home/fortytwo:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        app:x:1000:\n\
        extra:x:2000:app,other\n\
        more:x:2001:other, app\n\
        staff:x:50:\n";

    fn resolve(spec: &str) -> Result<Identity, SecurityError> {
        resolve_user_in(spec, PASSWD, GROUP)
    }

    const CAP_CHOWN: u32 = 0;
    const CAP_KILL: u32 = 5;
    const CAP_NET_RAW: u32 = 13;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_MKNOD: u32 = 27;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_spec_is_root_with_its_passwd_entry() {
        let id = resolve("").unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
        assert_eq!(id.home.as_deref(), Some("/root"));
        assert_eq!(id.user_name.as_deref(), Some("root"));
    }

    #[test]
    fn user_name_takes_uid_gid_home_and_groups_from_the_databases() {
        let id = resolve("app").unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![2000, 2001],
                home: Some("/home/app".into()),
                user_name: Some("app".into()),
            }
        );
    }

    #[test]
    fn numeric_uid_without_entry_needs_no_passwd() {
        let id = resolve_user_in("1234", "", "").unwrap();
        assert_eq!(
            (id.uid, id.gid, id.home, id.user_name),
            (1234, 0, None, None)
        );
        let id = resolve_user_in("1234:5678", "", "").unwrap();
        assert_eq!((id.uid, id.gid), (1234, 5678));
    }

    #[test]
    fn numeric_uid_with_entry_uses_the_entry() {
        let id = resolve("1000").unwrap();
        assert_eq!(id.user_name.as_deref(), Some("app"));
        assert_eq!(id.gid, 1000);
    }

    #[test]
    fn name_wins_over_uid_of_the_same_spelling() {
        assert_eq!(resolve("42").unwrap().uid, 4242);
    }

    #[test]
    fn explicit_group_replaces_primary_and_supplementary_groups() {
        let id = resolve("app:staff").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        assert!(id.additional_gids.is_empty());
        assert_eq!(resolve("app:77").unwrap().gid, 77);
    }

    #[test]
    fn missing_user_or_group_name_is_a_clear_error() {
        let err = resolve("nobody").unwrap_err();
        assert!(err.to_string().contains("\"nobody\""), "{err}");
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
        let err = resolve("app:wheel").unwrap_err();
        assert!(err.to_string().contains("\"wheel\""), "{err}");
    }

    #[test]
    fn malformed_user_specs_are_rejected() {
        for spec in [
            ":",
            ":0",
            "0:",
            "a:b:c",
            "4294967295",
            "0:4294967295",
            "99999999999",
        ] {
            assert!(
                matches!(resolve(spec), Err(SecurityError::InvalidUserSpec { .. })),
                "{spec:?} was accepted"
            );
        }
    }

    #[test]
    fn default_capabilities_are_dockers_without_mknod() {
        let caps = Capabilities::container_default();
        // Docker's default CapEff is 0xa80425fb; CAP_MKNOD is bit 27 (0x08000000).
        assert_eq!(caps.bits(), 0xa004_25fb);
        assert!(!caps.contains(CAP_MKNOD));
        assert!(!caps.contains(CAP_SYS_ADMIN));
        assert_eq!(caps.names().len(), 13);
        assert!(caps.names().contains(&"CAP_NET_BIND_SERVICE"));
    }

    #[test]
    fn capability_names_are_case_insensitive_with_or_without_prefix() {
        let base = Capabilities::container_default();
        for name in ["MKNOD", "cap_mknod", "CAP_MKNOD", "Mknod"] {
            let caps = base.with_added(&strings(&[name])).unwrap();
            assert!(caps.contains(CAP_MKNOD), "{name}");
        }
        let caps = base
            .with_dropped(&strings(&["net_raw", "CAP_CHOWN"]))
            .unwrap();
        assert!(!caps.contains(CAP_NET_RAW) && !caps.contains(CAP_CHOWN));
        assert!(caps.contains(CAP_KILL));
    }

    #[test]
    fn all_adds_every_known_capability_and_drops_everything() {
        let all = Capabilities::container_default()
            .with_added(&strings(&["all"]))
            .unwrap();
        assert_eq!(all.names().len(), CAP_NAMES.len());
        assert!(all.contains(CAP_SYS_ADMIN) && all.contains(40) && !all.contains(41));
        let none = all.with_dropped(&strings(&["ALL"])).unwrap();
        assert!(none.names().is_empty());
        let only_kill = none.with_added(&strings(&["KILL"])).unwrap();
        assert_eq!(only_kill.names(), vec!["CAP_KILL"]);
    }

    #[test]
    fn unknown_capability_names_the_capability() {
        let err = Capabilities::container_default()
            .with_added(&strings(&["CAP_FLY"]))
            .unwrap_err();
        assert_eq!(err.to_string(), "unknown capability \"CAP_FLY\"");
        assert!(Capabilities::container_default()
            .with_dropped(&strings(&[""]))
            .is_err());
        assert!(!Capabilities::container_default().contains(200));
    }
}
