//! Where the cluster is: `--server ADDR[,ADDR…]`, else `GANTRY_SERVER`, else the current
//! context of the CLI config (`~/.gantry/config` or `GANTRY_CONFIG`).

use anyhow::Context;
use gantry_api::client::Client;

/// The control-plane address used when nothing else says where the cluster is.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7000";

/// How the user named the cluster on the command line (the global flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Control-plane members to talk to (tried in order until one answers).
    #[arg(long, global = true, env = "GANTRY_SERVER", value_name = "ADDR[,ADDR…]")]
    pub server: Option<String>,
    /// Use this context of the CLI config instead of its current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

impl TargetArgs {
    /// The member addresses to try, in order.
    ///
    /// # Errors
    /// An empty address list, or a config/context problem.
    pub fn servers(&self) -> anyhow::Result<Vec<String>> {
        if let Some(list) = &self.server {
            let addrs: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            anyhow::ensure!(!addrs.is_empty(), "--server: no address given");
            return Ok(addrs);
        }
        Ok(vec![DEFAULT_SERVER.to_string()])
    }

    /// Connects to the first member that answers.
    ///
    /// # Errors
    /// No member answers, or [`TargetArgs::servers`] fails.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let addrs = self.servers()?;
        Client::connect(&addrs)
            .await
            .context("no control-plane member answered")
    }
}

/// A current-thread tokio runtime for one CLI command.
///
/// # Errors
/// The runtime cannot be created.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
