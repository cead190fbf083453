//! The CLI config (`GANTRY_CONFIG`, else `~/.gantry/config`) and `gantry config …`.
//!
//! The file is YAML (JSON, being YAML, is read too) and holds named contexts, each a list of
//! control-plane members, plus the current one:
//!
//! ```yaml
//! current-context: local
//! contexts:
//! - name: local
//!   servers:
//!   - 127.0.0.1:7000
//! ```
//!
//! Invariant: the file is only ever replaced whole (written to a temporary file in the same
//! directory, flushed, then renamed over it), so a reader never sees half a config. A missing
//! file reads as an empty config.

use super::output::{finish, user_error};
use super::print_table;
use super::target::{split_servers, TargetArgs};
use anyhow::Context as _;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "GANTRY_CONFIG";

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// One named cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The context's name.
    pub name: String,
    /// Its control-plane members (`host:port`), tried in order.
    pub servers: Vec<String>,
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The context used when neither `--server`, `--context` nor `GANTRY_SERVER` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Every context.
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// Where the config lives: `GANTRY_CONFIG`, else `$HOME/.gantry/config`.
///
/// # Errors
/// Neither `GANTRY_CONFIG` nor `HOME` is set.
pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find the CLI config: neither GANTRY_CONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".gantry").join("config"))
}

impl Config {
    /// Reads the config; a missing file is an empty config.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid config.
    pub fn load() -> anyhow::Result<Config> {
        let path = config_path()?;
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            Ok(m) if m.len() > MAX_CONFIG_BYTES => {
                anyhow::bail!(
                    "{}: {} bytes exceeds the config limit of {MAX_CONFIG_BYTES} bytes",
                    path.display(),
                    m.len()
                )
            }
            Ok(_) => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(&text).map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            user_error(format!("{}: invalid config: {first}", path.display()))
        })
    }

    /// Writes the config atomically (temporary file, flush, rename).
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = config_path()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let text = serde_saphyr::to_string(self).context("cannot render the config")?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".into());
        let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
        })
    }

    /// The context called `name`.
    ///
    /// # Errors
    /// A [`super::output::UserError`] when there is none.
    pub fn context(&self, name: &str) -> anyhow::Result<&Context> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                let path = config_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                user_error(format!("context {name:?} not found in {path}"))
            })
    }
}

/// Creates or updates context `name` with `servers`, making it current when `make_current`
/// (or when it is the only context). Used by `gantry config set-context` and `gantry cluster up`.
///
/// # Errors
/// No server given, or the config cannot be read or written.
pub fn set_context(name: &str, servers: &[String], make_current: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty(), "context name must not be empty");
    anyhow::ensure!(!servers.is_empty(), "context {name:?}: no server given");
    let mut config = Config::load()?;
    match config.contexts.iter_mut().find(|c| c.name == name) {
        Some(c) => c.servers = servers.to_vec(),
        None => config.contexts.push(Context {
            name: name.to_string(),
            servers: servers.to_vec(),
        }),
    }
    if make_current || config.current_context.is_none() {
        config.current_context = Some(name.to_string());
    }
    config.save()
}

/// `gantry config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List contexts; the current one is marked with `*`.
    #[command(after_help = "Example:\n  gantry config get-contexts")]
    GetContexts,
    /// Print the name of the current context.
    #[command(after_help = "Example:\n  gantry config current-context")]
    CurrentContext,
    /// Make NAME the current context.
    #[command(after_help = "Example:\n  gantry config use-context prod")]
    UseContext {
        /// The context's name.
        name: String,
    },
    /// Create or update context NAME with the members given by `--server`.
    #[command(
        after_help = "Examples:\n  gantry config set-context local --server 127.0.0.1:7000\n  \
         gantry config set-context prod --server 10.0.0.1:7000,10.0.0.2:7000 --current"
    )]
    SetContext {
        /// The context's name.
        name: String,
        /// Also make it the current context.
        #[arg(long)]
        current: bool,
    },
}

/// Runs a `config` subcommand. `set-context` takes its members from the global `--server`.
pub fn run(target: &TargetArgs, cmd: ConfigCommand) -> anyhow::Result<i32> {
    finish(run_inner(target, cmd))
}

fn run_inner(target: &TargetArgs, cmd: ConfigCommand) -> anyhow::Result<i32> {
    match cmd {
        ConfigCommand::GetContexts => {
            let config = Config::load()?;
            let rows: Vec<Vec<String>> = config
                .contexts
                .iter()
                .map(|c| {
                    let current = config.current_context.as_deref() == Some(c.name.as_str());
                    vec![
                        if current { "*" } else { "" }.to_string(),
                        c.name.clone(),
                        c.servers.join(","),
                    ]
                })
                .collect();
            print_table(&["CURRENT", "NAME", "SERVERS"], &rows);
        }
        ConfigCommand::CurrentContext => {
            let config = Config::load()?;
            match config.current_context {
                Some(name) => println!("{name}"),
                None => return Err(user_error("no current context is set")),
            }
        }
        ConfigCommand::UseContext { name } => {
            let mut config = Config::load()?;
            config.context(&name)?;
            config.current_context = Some(name.clone());
            config.save()?;
            println!("Switched to context {name:?}.");
        }
        ConfigCommand::SetContext { name, current } => {
            let servers = target
                .server
                .as_deref()
                .ok_or_else(|| user_error("set-context: --server ADDR[,ADDR…] is required"))?;
            let exists = Config::load()?.contexts.iter().any(|c| c.name == name);
            set_context(&name, &split_servers(servers, "--server")?, current)?;
            println!(
                "Context {name:?} {}.",
                if exists { "modified" } else { "created" }
            );
        }
    }
    Ok(0)
}
