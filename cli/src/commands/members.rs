//! `gantry members`: list and remove control-plane members through any member's API.

use anyhow::Context;
use clap::Subcommand;
use gantry_api::proto::object_service_client::ObjectServiceClient;
use gantry_api::proto::{MembersRequest, RemoveMemberRequest};

/// Default API address of a local member.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7000";

/// `gantry members …`.
#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List members with their leader flag, term and last applied index.
    #[command(alias = "list")]
    Ls {
        /// Any member's address.
        #[arg(long, env = "GANTRY_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Remove a member from the cluster.
    #[command(alias = "rm")]
    Remove {
        /// The member's name.
        name: String,
        /// Any member's address.
        #[arg(long, env = "GANTRY_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
    },
}

/// Runs a `members` subcommand.
pub fn run(cmd: MembersCommand) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let server = match &cmd {
            MembersCommand::Ls { server } | MembersCommand::Remove { server, .. } => server.clone(),
        };
        let mut client = ObjectServiceClient::connect(format!("http://{server}"))
            .await
            .with_context(|| format!("cannot reach a member at {server}"))?;
        match cmd {
            MembersCommand::Ls { .. } => {
                let resp = client
                    .members(MembersRequest {})
                    .await
                    .map_err(|s| anyhow::anyhow!("members: {}", s.message()))?
                    .into_inner();
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
            MembersCommand::Remove { name, .. } => {
                client
                    .remove_member(RemoveMemberRequest { name: name.clone() })
                    .await
                    .map_err(|s| anyhow::anyhow!("remove member {name}: {}", s.message()))?;
                println!("{name} removed");
            }
        }
        Ok(0)
    })
}
