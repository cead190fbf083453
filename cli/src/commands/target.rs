//! Where the cluster is. In order of precedence:
//!
//! 1. `--server ADDR[,ADDR…]` (members tried in order until one answers);
//! 2. `--context NAME`: that context of the CLI config;
//! 3. the `GANTRY_SERVER` environment variable (same syntax as `--server`);
//! 4. the current context of the CLI config (`GANTRY_CONFIG`, else `~/.gantry/config`);
//! 5. [`DEFAULT_SERVER`].
//!
//! `--context` beats `GANTRY_SERVER` because a flag on the command line is the more explicit
//! choice. The config file itself is owned by [`super::config`].

use super::config::Config;
use gantry_api::client::Client;

/// The control-plane address used when nothing else says where the cluster is.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7000";

/// The environment variable naming the members to talk to.
pub const SERVER_ENV: &str = "GANTRY_SERVER";

/// How the user named the cluster on the command line (the global flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Control-plane members to talk to, tried in order until one answers [env: GANTRY_SERVER]
    #[arg(long, global = true, value_name = "ADDR[,ADDR…]")]
    pub server: Option<String>,
    /// Use this context of the CLI config instead of its current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// Splits `a,b , c` into addresses; `what` names the source in the error.
pub fn split_servers(list: &str, what: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "{what}: no address given");
    Ok(addrs)
}

impl TargetArgs {
    /// The member addresses to try, in order (see the module documentation).
    ///
    /// # Errors
    /// An empty address list, an unreadable config, or a context that does not exist.
    pub fn servers(&self) -> anyhow::Result<Vec<String>> {
        if let Some(list) = &self.server {
            return split_servers(list, "--server");
        }
        if let Some(name) = &self.context {
            let config = Config::load()?;
            return Ok(config.context(name)?.servers.clone());
        }
        if let Some(list) = std::env::var(SERVER_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            return split_servers(&list, SERVER_ENV);
        }
        let config = Config::load()?;
        if let Some(current) = &config.current_context {
            return Ok(config.context(current)?.servers.clone());
        }
        Ok(vec![DEFAULT_SERVER.to_string()])
    }

    /// Connects to the first member that answers.
    ///
    /// # Errors
    /// No member answers (the message names every address tried), or
    /// [`TargetArgs::servers`] fails.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let addrs = self.servers()?;
        Client::connect(&addrs).await.map_err(anyhow::Error::new)
    }
}

/// A current-thread tokio runtime for one CLI command.
///
/// # Errors
/// The runtime cannot be created.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
