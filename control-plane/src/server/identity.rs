//! [`Identity`]: which member a data directory holds and which cluster it belongs to.

use super::ServerError;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;

const FILE: &str = "identity.json";

/// A member's permanent identity, stored in `identity.json` of its data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Raft node id (random, never 0).
    pub id: u64,
    /// Member name.
    pub name: String,
    /// The cluster's id (random hex, set by `--init`).
    pub cluster_id: String,
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

impl Identity {
    /// A new identity; a new cluster id unless one is given.
    pub fn fresh(name: &str, cluster_id: Option<String>) -> Self {
        Identity {
            id: random_u64() >> 1, // JSON consumers handle 63 bits more gracefully
            name: name.to_string(),
            cluster_id: cluster_id.unwrap_or_else(|| format!("{:016x}", random_u64())),
        }
    }

    /// The identity stored in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, ServerError> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ServerError::DataDir {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ServerError::DataDir {
                path: path.display().to_string(),
                message: format!("corrupt identity: {e}"),
            })
    }

    /// Stores the identity durably (write, fsync, rename, fsync the directory).
    pub fn save(&self, dir: &Path) -> Result<(), ServerError> {
        let path = dir.join(FILE);
        let fail = |e: std::io::Error| ServerError::DataDir {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| fail(std::io::Error::other(e)))?;
        f.write_all(&json).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let id = Identity::fresh("s1", None);
        assert!(id.id > 0 && id.cluster_id.len() == 16);
        id.save(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt identity"), "{err}");
    }
}
