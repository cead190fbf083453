//! What a container is asked to be: written once by the starter to `config.json`, read by the
//! shim and by anyone listing containers. Everything the shim needs is resolved here (image
//! layers, full argv, env), so the shim never opens the image store.

use crate::cgroups::Resources;
use crate::container::security::Capabilities;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Extra labels (the node agent records its replica here).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Unix time in milliseconds when the container was created.
    pub created_ms: u64,
}
