//! Errors of container operations.

use crate::images::ImageError;

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The command could not be found in the image.
    #[error("{0}")]
    CommandNotFound(String),
    /// The command was found but could not be executed.
    #[error("{0}")]
    CommandNotExecutable(String),
    /// The container could not be set up (namespaces, rootfs, cgroup, user…).
    #[error("cannot start container: {0}")]
    StartFailed(String),
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matched several containers.
    #[error("container reference {0} is ambiguous: give more of the id")]
    Ambiguous(String),
    /// A name is taken.
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    /// An invalid option.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The option or field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The container runs and the operation needs it stopped.
    #[error("container {0} is running: stop it first or force removal")]
    Running(String),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file of the container could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else: Gantry itself failed.
    #[error("{0}")]
    Other(String),
}

impl ContainerError {
    /// Docker's exit codes: 127 not found, 126 not executable, 125 Gantry's own failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ContainerError::CommandNotFound(_) => 127,
            ContainerError::CommandNotExecutable(_) => 126,
            _ => 125,
        }
    }

    pub(crate) fn io(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ContainerError::Io { path, source }
    }
}
