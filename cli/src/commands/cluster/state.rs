//! What `gantry cluster up` started, kept in `DIR/cluster.json` so that every other
//! `cluster` command (and a later session) can find and end exactly those processes.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file in the cluster's directory that records it.
pub const STATE_FILE: &str = "cluster.json";

/// A server (control-plane member) or an agent (node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `gantry server`.
    Server,
    /// `gantry agent`.
    Agent,
}

/// One process of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// `s1`…, `n1`….
    pub name: String,
    /// Server or agent.
    pub role: Role,
    /// Where it listens (`host:port`).
    pub addr: String,
    /// Its network namespace, when the cluster uses them.
    #[serde(default)]
    pub netns: Option<String>,
    /// The host side of its veth pair, when the cluster uses namespaces.
    #[serde(default)]
    pub veth: Option<String>,
    /// Data dir (server) or runtime root (agent).
    pub data: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The running process, when one was started and not yet stopped.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The process's start time in clock ticks since boot, to tell it from a reused PID.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// Cut off from the bridge by `cluster partition`.
    #[serde(default)]
    pub partitioned: bool,
}

/// A local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    /// Its name (also the CLI context's name).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The bridge joining the members' namespaces (`None` with `--no-netns`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// The bridge's subnet, `10.213.N.0/24`.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Servers first, then agents.
    pub members: Vec<Member>,
}

impl Cluster {
    /// Reads `DIR/cluster.json`.
    ///
    /// # Errors
    /// The file is missing or unreadable.
    pub fn load(dir: &Path) -> anyhow::Result<Cluster> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "no local cluster in {} (bring one up with `gantry cluster up`)",
                dir.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("{}: corrupt", path.display()))
    }

    /// Writes `DIR/cluster.json` atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The servers' addresses, comma-separated order kept.
    pub fn server_addrs(&self) -> Vec<String> {
        self.of(Role::Server).map(|m| m.addr.clone()).collect()
    }

    /// Members of one role.
    pub fn of(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.role == role)
    }

    /// The member called `name`.
    ///
    /// # Errors
    /// No member has that name; the message lists the names there are.
    pub fn member_index(&self, name: &str) -> anyhow::Result<usize> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
                anyhow::anyhow!(
                    "cluster {} has no member {name:?} (members: {})",
                    self.name,
                    names.join(", ")
                )
            })
    }
}

/// `$GANTRY_HOME`, else `~/.gantry`.
pub fn gantry_home() -> PathBuf {
    if let Some(h) = std::env::var_os("GANTRY_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".gantry")
}

/// Where the directory of the last cluster brought up is recorded.
fn last_file() -> PathBuf {
    gantry_home().join("clusters").join("last")
}

/// The default directory of the cluster called `name`.
pub fn default_dir(name: &str) -> PathBuf {
    gantry_home().join("clusters").join(name)
}

/// Remembers `dir` as the last cluster brought up.
pub fn remember_last(dir: &Path) -> anyhow::Result<()> {
    let file = last_file();
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&file, dir.display().to_string())
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Forgets `dir` as the last cluster brought up (after it was purged).
pub fn forget_last(dir: &Path) {
    let file = last_file();
    if std::fs::read_to_string(&file).is_ok_and(|t| Path::new(t.trim()) == dir) {
        let _ = std::fs::remove_file(&file);
    }
}

/// The cluster directory a command means: `--dir`, else `--name`'s default directory, else
/// the last cluster brought up.
///
/// # Errors
/// Neither is given and no cluster was brought up yet.
pub fn pick_dir(dir: Option<&Path>, name: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    if let Some(n) = name {
        return Ok(default_dir(n));
    }
    let file = last_file();
    let text = std::fs::read_to_string(&file).with_context(|| {
        "no local cluster given and none brought up yet (use --dir, --name or `gantry cluster up`)"
    })?;
    Ok(PathBuf::from(text.trim()))
}
