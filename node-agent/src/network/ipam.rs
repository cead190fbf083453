//! [`Ipam`]: the node's replica addresses, one file per held address
//! (`<dir>/<address>` holding the replica's name), so allocations survive agent restarts.
//!
//! Correctness:
//! - An address is claimed by hard-linking a fully written temporary file to its name, which
//!   fails if the name exists: two claims of one address can never both succeed, and a crash
//!   never leaves a half-written claim.
//! - Allocation goes round-robin from the address after the last one handed out (kept in
//!   `<dir>/last`), so an address just released is not handed to the next replica at once
//!   (connections to the old holder fail instead of reaching a stranger).
//! - The network address, the gateway (`.1`) and the broadcast address are never handed out.

use super::NetworkError;
use gantry_api::net::Ipv4Cidr;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const LAST_FILE: &str = "last";

/// The address store of one node.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating) the store in `dir`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Ipam, NetworkError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(NetworkError::io("create directory", &dir))?;
        Ok(Ipam { dir })
    }

    /// Every held address and its replica.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetworkError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(NetworkError::io("read directory", &self.dir))?;
        let mut out = BTreeMap::new();
        for entry in entries.filter_map(Result::ok) {
            let Some(addr) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let replica = text.trim();
                if !replica.is_empty() {
                    out.insert(addr, replica.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The address `replica` holds, if any.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn address_of(&self, replica: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find_map(|(a, r)| (r == replica).then_some(a)))
    }

    /// The address of `replica` in `subnet`: the one it holds, or a newly claimed one.
    ///
    /// # Errors
    /// [`NetworkError::Exhausted`] when every usable address is held; I/O errors.
    pub fn allocate(&self, replica: &str, subnet: Ipv4Cidr) -> Result<Ipv4Addr, NetworkError> {
        let held = self.allocations()?;
        if let Some((a, _)) = held
            .iter()
            .find(|(a, r)| *r == replica && subnet.contains(**a))
        {
            return Ok(*a);
        }
        let first = 2u64;
        let end = subnet.size().saturating_sub(1); // exclusive: the broadcast address
        if end <= first {
            return Err(NetworkError::Exhausted {
                subnet,
                held: held.len(),
            });
        }
        let span = end - first;
        let after = self
            .last()
            .and_then(|a| subnet.offset_of(a))
            .filter(|o| (first..end).contains(o))
            .map_or(0, |o| o - first + 1);
        for i in 0..span {
            let offset = first + (after + i) % span;
            let Some(addr) = subnet.nth(offset) else {
                continue;
            };
            if held.contains_key(&addr) {
                continue;
            }
            if self.claim(addr, replica)? {
                self.set_last(addr);
                tracing::debug!(replica, %addr, "address allocated");
                return Ok(addr);
            }
        }
        Err(NetworkError::Exhausted {
            subnet,
            held: self.allocations()?.len(),
        })
    }

    /// Releases every address `replica` holds.
    ///
    /// # Errors
    /// A claim file cannot be removed.
    pub fn release(&self, replica: &str) -> Result<(), NetworkError> {
        for (addr, r) in self.allocations()? {
            if r == replica {
                let path = self.dir.join(addr.to_string());
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(replica, %addr, "address released"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(NetworkError::io("remove", path)(e)),
                }
            }
        }
        Ok(())
    }

    /// The claim file of `addr`.
    pub fn path_of(&self, addr: Ipv4Addr) -> PathBuf {
        self.dir.join(addr.to_string())
    }

    /// Claims `addr` for `replica`; false when another claim exists.
    fn claim(&self, addr: Ipv4Addr, replica: &str) -> Result<bool, NetworkError> {
        let tmp = self.temp_path(&addr.to_string());
        write_synced(&tmp, replica.as_bytes())?;
        let target = self.dir.join(addr.to_string());
        let linked = std::fs::hard_link(&tmp, &target);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(NetworkError::io("link", target)(e)),
        }
    }

    fn last(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join(LAST_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Best effort: a lost `last` only weakens the round-robin, never correctness.
    fn set_last(&self, addr: Ipv4Addr) {
        let tmp = self.temp_path(LAST_FILE);
        if write_synced(&tmp, addr.to_string().as_bytes()).is_ok()
            && std::fs::rename(&tmp, self.dir.join(LAST_FILE)).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        let n = gantry_api::events::random_u32();
        self.dir.join(format!(".{name}.tmp-{n:08x}"))
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), NetworkError> {
    let mut f = std::fs::File::create(path).map_err(NetworkError::io("create", path))?;
    f.write_all(data)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(NetworkError::io("write", path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_start_at_two_and_are_stable_per_replica() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path()).unwrap();
        let net = subnet("10.214.3.0/24");
        let a = ipam.allocate("web-1", net).unwrap();
        assert_eq!(a, "10.214.3.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            ipam.allocate("web-1", net).unwrap(),
            a,
            "same replica, same address"
        );
        let b = ipam.allocate("web-2", net).unwrap();
        assert_eq!(b, "10.214.3.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(std::fs::read_to_string(ipam.path_of(a)).unwrap(), "web-1\n");
    }

    #[test]
    fn allocations_survive_reopening_and_released_addresses_are_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let net = subnet("10.214.3.0/24");
        let a = {
            let ipam = Ipam::open(dir.path()).unwrap();
            ipam.allocate("web-1", net).unwrap()
        };
        let ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.address_of("web-1").unwrap(), Some(a));
        ipam.release("web-1").unwrap();
        assert!(!ipam.path_of(a).exists());
        let next = ipam.allocate("web-2", net).unwrap();
        assert_ne!(next, a, "a just-released address waits its turn");
    }

    #[test]
    fn exhaustion_names_the_subnet_and_wraps_around_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path()).unwrap();
        // A /29 has .2 to .6 for replicas.
        let net = subnet("10.214.9.0/29");
        for i in 0..5 {
            ipam.allocate(&format!("r{i}"), net).unwrap();
        }
        let err = ipam.allocate("r5", net).unwrap_err();
        assert!(matches!(err, NetworkError::Exhausted { held: 5, .. }));
        assert!(err.to_string().contains("10.214.9.0/29"), "{err}");
        ipam.release("r1").unwrap();
        assert_eq!(
            ipam.allocate("r5", net).unwrap(),
            "10.214.9.3".parse::<Ipv4Addr>().unwrap()
        );
        // Never the gateway nor the broadcast address.
        let all = ipam.allocations().unwrap();
        assert!(!all.contains_key(&"10.214.9.1".parse().unwrap()));
        assert!(!all.contains_key(&"10.214.9.7".parse().unwrap()));
    }

    #[test]
    fn concurrent_allocations_never_hand_out_one_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let net = subnet("10.214.4.0/24");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let ipam = Ipam::open(dir.path()).unwrap();
                std::thread::spawn(move || ipam.allocate(&format!("r{i}"), net).unwrap())
            })
            .collect();
        let mut got: Vec<Ipv4Addr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 8);
        let ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.allocations().unwrap().len(), 8);
    }
}
