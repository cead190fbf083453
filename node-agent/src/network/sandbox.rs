//! [`Sandboxes`]: the per-replica network namespaces of one node.
//!
//! A sandbox is `ROOT/netns/<replica>` (an nsfs bind mount made by `unshare --net=FILE`)
//! holding `lo` and `eth0` — the peer of a host-side veth named after the replica's address
//! (`gv` + 8 hex digits, unique per node) attached to the node bridge — with the replica's
//! address, and routes for the cluster and service ranges via the gateway only. Beside it,
//! `ROOT/network/replicas/<replica>/{resolv.conf,hosts}`.
//!
//! Invariants:
//! - [`Sandboxes::ensure`] is idempotent: a complete sandbox is reused as is (its address and
//!   namespace survive container and agent restarts); anything less is torn down and rebuilt
//!   with the same address.
//! - A failed setup is rolled back completely; an address claimed by that call is released.
//! - Every call for one replica comes from one operation at a time (the reconciler's
//!   per-replica exclusion); different replicas may run concurrently.

use super::ip::{create_netns, ip, ip_batch_in, ip_quiet, umount};
use super::{Ipam, NetworkError, NodeNetwork, SEARCH_DOMAIN};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a replica's container needs from its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The replica's address.
    pub address: Ipv4Addr,
    /// The namespace file the container joins.
    pub netns: PathBuf,
    /// Bind-mounted at `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Bind-mounted at `/etc/hosts`.
    pub hosts: PathBuf,
}

/// What is on disk for every replica with a sandbox or an address, read at once.
#[derive(Debug, Clone, Default)]
pub struct SandboxSnapshot {
    /// Replicas and their addresses.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Replicas whose namespace is mounted, with the namespace's inode.
    pub netns_inodes: BTreeMap<String, u64>,
    /// Replicas with a namespace file or directory of files, mounted or not.
    pub present: BTreeSet<String>,
}

impl SandboxSnapshot {
    /// Every replica holding anything.
    pub fn replicas(&self) -> BTreeSet<String> {
        self.addresses
            .keys()
            .chain(self.present.iter())
            .cloned()
            .collect()
    }
}

/// The sandboxes under one agent root.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    netns_dir: PathBuf,
    files_dir: PathBuf,
    ipam: Ipam,
}

impl Sandboxes {
    /// The sandboxes under the agent's runtime root `root`.
    ///
    /// # Errors
    /// The directories cannot be created.
    pub fn open(root: &Path) -> Result<Sandboxes, NetworkError> {
        let netns_dir = root.join("netns");
        let files_dir = root.join("network").join("replicas");
        for d in [&netns_dir, &files_dir] {
            std::fs::create_dir_all(d).map_err(NetworkError::io("create directory", d))?;
        }
        Ok(Sandboxes {
            netns_dir,
            files_dir,
            ipam: Ipam::open(root.join("network").join("ipam"))?,
        })
    }

    /// The address store.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The namespace file of `replica`.
    pub fn netns_path(&self, replica: &str) -> PathBuf {
        self.netns_dir.join(replica)
    }

    /// The host-side veth of the sandbox holding `addr`: unique per node, at most 15 bytes.
    pub fn veth_name(addr: Ipv4Addr) -> String {
        format!("gv{:08x}", u32::from(addr))
    }

    /// Reads addresses and mounted namespaces of every replica.
    ///
    /// # Errors
    /// The directories cannot be read.
    pub fn snapshot(&self) -> Result<SandboxSnapshot, NetworkError> {
        let mut snap = SandboxSnapshot {
            addresses: self
                .ipam
                .allocations()?
                .into_iter()
                .map(|(a, r)| (r, a))
                .collect(),
            ..SandboxSnapshot::default()
        };
        for dir in [&self.netns_dir, &self.files_dir] {
            let entries =
                std::fs::read_dir(dir).map_err(NetworkError::io("read directory", dir))?;
            for e in entries.filter_map(Result::ok) {
                if let Some(name) = e.file_name().to_str() {
                    snap.present.insert(name.to_string());
                }
            }
        }
        for name in &snap.present {
            if let Some(ino) = self.mounted_inode(name) {
                snap.netns_inodes.insert(name.clone(), ino);
            }
        }
        Ok(snap)
    }

    /// The inode of `replica`'s namespace when its file is a mount (nsfs lives on its own
    /// device, so a mounted file's device differs from its directory's).
    pub fn mounted_inode(&self, replica: &str) -> Option<u64> {
        let file = std::fs::metadata(self.netns_path(replica)).ok()?;
        let dir = std::fs::metadata(&self.netns_dir).ok()?;
        (file.dev() != dir.dev()).then_some(file.ino())
    }

    /// Makes sure `replica` has a complete sandbox on `net`, building (or rebuilding) it when
    /// not; returns what its container needs.
    ///
    /// # Errors
    /// [`NetworkError::Exhausted`] when no address is free; any failing step, after rolling
    /// back what this call made.
    pub fn ensure(&self, replica: &str, net: &NodeNetwork) -> Result<Sandbox, NetworkError> {
        validate_replica_name(replica)?;
        let held = self.ipam.address_of(replica)?;
        let address = match held {
            Some(a) if net.subnet.contains(a) => a,
            Some(stale) => {
                tracing::warn!(replica, address = %stale, subnet = %net.subnet, "address outside the node subnet; re-addressing");
                self.teardown(replica)?;
                self.ipam.allocate(replica, net.subnet)?
            }
            None => self.ipam.allocate(replica, net.subnet)?,
        };
        let sandbox = Sandbox {
            address,
            netns: self.netns_path(replica),
            resolv_conf: self.files_dir.join(replica).join("resolv.conf"),
            hosts: self.files_dir.join(replica).join("hosts"),
        };
        let veth = Self::veth_name(address);
        let complete = self.mounted_inode(replica).is_some()
            && ip(&["link", "set", &veth, "master", &net.bridge, "up"]).is_ok();
        if !complete {
            if let Err(e) = self.build(replica, &sandbox, net) {
                self.unbuild(replica, address);
                if held.is_none() {
                    let _ = self.ipam.release(replica);
                }
                return Err(e);
            }
            tracing::info!(replica, address = %address, veth = %veth, "sandbox built");
        }
        if let Err(e) = self.write_files(replica, &sandbox, net) {
            if !complete {
                self.unbuild(replica, address);
                if held.is_none() {
                    let _ = self.ipam.release(replica);
                }
            }
            return Err(e);
        }
        Ok(sandbox)
    }

    /// Removes what is left of `replica`'s sandbox and builds it anew with the same address
    /// (its namespace vanished, or lost its interface).
    ///
    /// # Errors
    /// As [`Sandboxes::ensure`].
    pub fn rebuild(&self, replica: &str, net: &NodeNetwork) -> Result<Sandbox, NetworkError> {
        validate_replica_name(replica)?;
        if let Some(a) = self.ipam.address_of(replica)? {
            self.unbuild(replica, a);
        } else {
            self.unbuild_netns(replica)?;
        }
        self.ensure(replica, net)
    }

    /// Removes `replica`'s sandbox entirely: veth, namespace mount and file, its files, and
    /// its address. Missing pieces are skipped.
    ///
    /// # Errors
    /// The namespace cannot be unmounted or a file cannot be removed (the address is then
    /// kept, so it is not handed out while still in use).
    pub fn teardown(&self, replica: &str) -> Result<(), NetworkError> {
        validate_replica_name(replica)?;
        if let Some(a) = self.ipam.address_of(replica)? {
            ip_quiet(&["link", "del", &Self::veth_name(a)]);
        }
        self.unbuild_netns(replica)?;
        let files = self.files_dir.join(replica);
        match std::fs::remove_dir_all(&files) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetworkError::io("remove", files)(e)),
        }
        self.ipam.release(replica)?;
        tracing::info!(replica, "sandbox removed");
        Ok(())
    }

    fn build(&self, replica: &str, sb: &Sandbox, net: &NodeNetwork) -> Result<(), NetworkError> {
        let veth = Self::veth_name(sb.address);
        // Leftovers of an earlier, interrupted sandbox.
        ip_quiet(&["link", "del", &veth]);
        self.unbuild_netns(replica)?;

        std::fs::File::create(&sb.netns).map_err(NetworkError::io("create", &sb.netns))?;
        create_netns(&sb.netns)?;
        let netns = sb.netns.display().to_string();
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &veth, "master", &net.bridge, "up"])?;
        // Hairpin: a replica whose connection to its own service is balanced back to itself
        // gets the packets back through its own bridge port (br_netfilter, on by default in
        // new namespaces, passes bridged frames through the NAT hooks).
        ip(&[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        let gw = net.gateway.to_string();
        ip_batch_in(
            &sb.netns,
            &[
                "link set lo up".into(),
                format!("addr add {}/{} dev eth0", sb.address, net.subnet.prefix()),
                "link set eth0 up".into(),
                format!("route add {} via {gw} dev eth0", net.cluster_cidr),
                format!("route add {} via {gw} dev eth0", net.service_cidr),
            ],
        )
    }

    /// Best-effort removal of a half-built sandbox (rollback).
    fn unbuild(&self, replica: &str, address: Ipv4Addr) {
        ip_quiet(&["link", "del", &Self::veth_name(address)]);
        if let Err(e) = self.unbuild_netns(replica) {
            tracing::warn!(replica, error = %e, "rollback left the namespace behind");
        }
    }

    /// Unmounts (if mounted) and removes the namespace file.
    fn unbuild_netns(&self, replica: &str) -> Result<(), NetworkError> {
        let path = self.netns_path(replica);
        if self.mounted_inode(replica).is_some() {
            umount(&path)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetworkError::io("remove", path)(e)),
        }
    }

    fn write_files(
        &self,
        replica: &str,
        sb: &Sandbox,
        net: &NodeNetwork,
    ) -> Result<(), NetworkError> {
        let dir = self.files_dir.join(replica);
        std::fs::create_dir_all(&dir).map_err(NetworkError::io("create directory", &dir))?;
        write_if_changed(&sb.resolv_conf, &resolv_conf(net.gateway))?;
        write_if_changed(&sb.hosts, &hosts_file(replica, sb.address))
    }
}

/// The `resolv.conf` of every replica: the node's DNS server on the gateway address.
pub fn resolv_conf(gateway: Ipv4Addr) -> String {
    format!("nameserver {gateway}\nsearch {SEARCH_DOMAIN}\noptions ndots:1\n")
}

/// The `hosts` file of a replica: localhost and its own name.
pub fn hosts_file(replica: &str, address: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{replica}\n"
    )
}

/// Replaces `path` atomically (temp file + rename) unless it already holds `content`; a
/// bind mount of it keeps showing the old inode, so unchanged files are left alone.
fn write_if_changed(path: &Path, content: &str) -> Result<(), NetworkError> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(NetworkError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(NetworkError::io("rename", path))
}

/// Replica names become file names: DNS-1123-like only.
fn validate_replica_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "replica name {name:?} cannot name a network sandbox"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_unique_per_address_and_fit_the_kernel_limit() {
        let a = Sandboxes::veth_name("10.214.3.2".parse().unwrap());
        assert_eq!(a, "gv0ad60302");
        assert!(a.len() <= 15);
        assert_ne!(a, Sandboxes::veth_name("10.214.3.3".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_points_at_the_gateway_with_the_cluster_domain() {
        assert_eq!(
            resolv_conf("10.214.3.1".parse().unwrap()),
            "nameserver 10.214.3.1\nsearch gantry.local\noptions ndots:1\n"
        );
        let hosts = hosts_file("web-1", "10.214.3.2".parse().unwrap());
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.214.3.2\tweb-1\n"));
    }

    #[test]
    fn replica_names_that_could_escape_the_directory_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "UPPER"] {
            assert!(validate_replica_name(bad).is_err(), "{bad}");
        }
        assert!(validate_replica_name("web-7f2c.1").is_ok());
    }

    #[test]
    fn a_snapshot_lists_addresses_and_unmounted_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandboxes::open(dir.path()).unwrap();
        let addr = sb
            .ipam()
            .allocate("web-1", "10.214.3.0/24".parse().unwrap())
            .unwrap();
        std::fs::write(sb.netns_path("gone-1"), b"").unwrap();
        let snap = sb.snapshot().unwrap();
        assert_eq!(snap.addresses.get("web-1"), Some(&addr));
        assert!(snap.present.contains("gone-1"));
        assert!(
            snap.netns_inodes.is_empty(),
            "a plain file is not a mounted namespace"
        );
        assert_eq!(
            snap.replicas().into_iter().collect::<Vec<_>>(),
            vec!["gone-1".to_string(), "web-1".to_string()]
        );
    }
}
