//! `gantry events [-w]`: every event, oldest first by last occurrence (`gantry get events`
//! with a shorter name).

use super::get::GetArgs;
use super::output::{OutputFormat, Resource};
use super::target::TargetArgs;
use clap::Args;

/// Arguments of `gantry events`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  gantry events\n  gantry events -w\n  gantry events -o json")]
pub struct EventsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Only events whose labels match.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// After printing, keep printing new events.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// Runs `gantry events`.
pub fn run(target: &TargetArgs, args: EventsArgs) -> anyhow::Result<i32> {
    super::get::run(
        target,
        GetArgs {
            resource: Resource::Events,
            name: None,
            output: args.output,
            selector: args.selector,
            watch: args.watch,
        },
    )
}
