//! `gantry image import|ls|rm` (filled by the images work).

use clap::Subcommand;
use gantry_runtime::root::RuntimeRoot;

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Ls,
}

/// Runs an image subcommand; returns the process exit code.
pub fn run(_root: &RuntimeRoot, _cmd: ImageCommand) -> anyhow::Result<i32> {
    anyhow::bail!("image commands are not built yet")
}
