//! The per-container shim and the container's init path.

/// Runs the shim or container-init path when this process was started as one (hidden
/// first argument), returning the exit code; `None` for an ordinary CLI invocation.
pub fn dispatch_hidden() -> Option<i32> {
    None
}
