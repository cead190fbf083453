//! What a container is asked to be: written once by the starter to `config.json`, read by the
//! shim and by anyone listing containers. Everything the shim needs is resolved here (image
//! layers, full argv, env), so the shim never opens the image store.

use crate::cgroups::Resources;
use crate::container::security::Capabilities;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The network a container's processes see.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Network {
    /// A private network namespace holding only `lo` (up): the default.
    #[default]
    Private,
    /// Join the existing network namespace `path` (an nsfs file, e.g. a bind mount of
    /// `/proc/PID/ns/net`): the container sees that namespace's interfaces, addresses and routes.
    Join {
        /// The namespace file, opened by the container's init before `pivot_root`.
        path: PathBuf,
    },
}

/// A host file (or directory) bind-mounted read-only into the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path; must exist when the container starts.
    pub source: PathBuf,
    /// Absolute path inside the container; created (as an empty file or directory) when the
    /// image lacks it.
    pub destination: PathBuf,
}

/// The resolved description of one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// 64 hex characters, unique under the runtime root.
    pub id: String,
    /// A unique, human-friendly name.
    pub name: String,
    /// The image reference the user gave, for display.
    pub image: String,
    /// The image id (`sha256:<hex>`).
    pub image_id: String,
    /// Image layer directories, lowest first.
    pub lower_dirs: Vec<PathBuf>,
    /// The full argv of the container's process (entrypoint + cmd, resolved).
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub working_dir: String,
    /// User spec (`""`, `name`, `uid`, `name:group`, `uid:gid`).
    pub user: String,
    /// The container's hostname.
    pub hostname: String,
    /// Cgroup limits.
    pub resources: Resources,
    /// Capabilities the process keeps.
    pub capabilities: Capabilities,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Remove the container's directory when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// The container's network namespace (absent in older state files: private).
    #[serde(default)]
    pub network: Network,
    /// Read-only bind mounts of host files (absent in older state files: none).
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// Extra labels (the node agent records its replica here).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Unix time in milliseconds when the container was created.
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_written_before_networking_still_load_with_a_private_network() {
        let old = r#"{"id":"x","name":"n","image":"i","image_id":"sha256:0","lower_dirs":[],
            "args":["sh"],"env":[],"working_dir":"","user":"","hostname":"h",
            "resources":{},"capabilities":0,"created_ms":1}"#;
        let spec: ContainerSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.network, Network::Private);
        assert!(spec.mounts.is_empty());
    }

    #[test]
    fn network_modes_round_trip() {
        for n in [
            Network::Private,
            Network::Join {
                path: PathBuf::from("/var/lib/gantry/netns/web-1"),
            },
        ] {
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), n);
        }
    }
}
