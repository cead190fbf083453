//! `gantry members`: list and remove control-plane members through any member's API.

use super::target::TargetArgs;
use clap::Subcommand;

/// `gantry members …`.
#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List members with their leader flag, term and last applied index.
    #[command(alias = "list")]
    Ls,
    /// Remove a member from the cluster.
    #[command(alias = "rm")]
    Remove {
        /// The member's name.
        name: String,
    },
}

/// Runs a `members` subcommand.
pub fn run(target: &TargetArgs, cmd: MembersCommand) -> anyhow::Result<i32> {
    super::target::runtime()?.block_on(async move {
        let mut client = target.connect().await?;
        match cmd {
            MembersCommand::Ls => {
                let resp = client
                    .members()
                    .await
                    .map_err(|e| anyhow::anyhow!("members: {e}"))?;
                let rows: Vec<Vec<String>> = resp
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.addr.clone(),
                            if m.leader {
                                "leader"
                            } else if m.voter {
                                "voter"
                            } else {
                                "learner"
                            }
                            .to_string(),
                            m.term.to_string(),
                            m.last_applied.to_string(),
                        ]
                    })
                    .collect();
                super::print_table(&["NAME", "ADDRESS", "ROLE", "TERM", "APPLIED"], &rows);
            }
            MembersCommand::Remove { name } => {
                client
                    .remove_member(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("remove member {name}: {e}"))?;
                println!("{name} removed");
            }
        }
        Ok(0)
    })
}
