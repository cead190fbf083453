//! `gantry members`: remove control-plane members through any member's API. Listing is
//! `gantry get members`; `members ls` stays as an alias of it.

use super::output::{client_error, finish, OutputFormat};
use super::target::TargetArgs;
use clap::Subcommand;

/// `gantry members …`.
#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List members (same as `gantry get members`).
    #[command(alias = "list", after_help = "Example:\n  gantry members ls -o json")]
    Ls {
        /// Output format.
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputFormat>,
    },
    /// Remove a member from the cluster.
    #[command(alias = "rm", after_help = "Example:\n  gantry members remove s3")]
    Remove {
        /// The member's name.
        name: String,
    },
}

/// Runs a `members` subcommand.
pub fn run(target: &TargetArgs, cmd: MembersCommand) -> anyhow::Result<i32> {
    finish(super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        match cmd {
            MembersCommand::Ls { output } => {
                super::get::print_members(&mut client, None, output).await
            }
            MembersCommand::Remove { name } => {
                client
                    .remove_member(&name)
                    .await
                    .map_err(|e| client_error(e, &format!("remove member {name}")))?;
                println!("{name} removed");
                Ok(0)
            }
        }
    }))
}
