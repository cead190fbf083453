//! Errors of container operations.

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The command could not be found in the image.
    #[error("executable file not found in the container: {0}")]
    CommandNotFound(String),
    /// The command was found but could not be executed.
    #[error("cannot execute {path}: {reason}")]
    CommandNotExecutable { path: String, reason: String },
    /// Anything else: Gantry itself failed.
    #[error("{0}")]
    Other(String),
}

impl ContainerError {
    /// Docker's exit codes: 127 not found, 126 not executable, 125 Gantry's own failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ContainerError::CommandNotFound(_) => 127,
            ContainerError::CommandNotExecutable { .. } => 126,
            ContainerError::Other(_) => 125,
        }
    }
}
