//! One module per group of subcommands; each exposes its clap types and a `run`.

pub mod container;
pub mod image;

/// The process exit code for an error, following Docker: 125 when Gantry itself failed,
/// 126 when the command could not be invoked, 127 when it was not found.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<gantry_runtime::container::ContainerError>() {
            return e.exit_code();
        }
    }
    125
}
