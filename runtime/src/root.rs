//! The on-disk layout under the runtime root.
//!
//! ```text
//! ROOT/images/...            the image store (see `images`)
//! ROOT/containers/<id>/      one container: config.json, state.json, container.log, upper/, work/, rootfs/
//! ```

use std::path::{Path, PathBuf};

/// Where the runtime keeps images and containers when neither `--root` nor `GANTRY_ROOT` says.
pub const DEFAULT_ROOT: &str = "/var/lib/gantry";

/// The runtime root directory and the paths derived from it.
#[derive(Debug, Clone)]
pub struct RuntimeRoot {
    path: PathBuf,
}

impl RuntimeRoot {
    /// A root at `path`; nothing is created until something is written.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image store's directory.
    pub fn images_dir(&self) -> PathBuf {
        self.path.join("images")
    }

    /// The directory holding one directory per container.
    pub fn containers_dir(&self) -> PathBuf {
        self.path.join("containers")
    }

    /// The directory of the container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
}
