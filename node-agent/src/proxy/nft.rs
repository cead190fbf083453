//! [`Nft`]: runs the `nft` program, feeding scripts on stdin (`nft -f -`), so that one script
//! is one kernel transaction: it applies whole or not at all.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long one `nft` run may take before it is killed and the sync retried.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an `nft` run failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The program could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and refused the script or failed.
    #[error("{program:?} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// It did not finish within the timeout.
    #[error("{program:?} did not finish within {NFT_TIMEOUT:?}")]
    Timeout {
        /// The program.
        program: String,
    },
}

/// The `nft` command line, run in the caller's network namespace unless the command itself
/// enters another (`ip netns exec NS nft`, as tests do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    argv: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

impl Nft {
    /// `nft` from `PATH`.
    pub fn new() -> Self {
        Nft {
            argv: vec!["nft".into()],
        }
    }

    /// A command line that runs nft, e.g. `["ip", "netns", "exec", "ns1", "nft"]`; nft's own
    /// arguments are appended. An empty `argv` means `nft`.
    pub fn with_command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        if argv.is_empty() {
            return Nft::new();
        }
        Nft { argv }
    }

    fn program(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs nft with `args`, `stdin` fed to it; returns its stdout.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let program = self.program();
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(program = %program, ?args, "running nft");
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means nft exited early; its status and stderr say why.
            let _ = pipe.write_all(text.as_bytes()).await;
            drop(pipe);
        }
        let out = match tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => return Err(NftError::Spawn { program, source }),
            // Dropping the future drops the child, which kill_on_drop kills.
            Err(_) => return Err(NftError::Timeout { program }),
        };
        if !out.status.success() {
            return Err(NftError::Failed {
                program,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `script` as one transaction (`nft -f -`).
    ///
    /// # Errors
    /// nft cannot be run or refuses the script; the kernel's rules are then unchanged.
    pub async fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// The table as nft lists it, or `None` when it does not exist.
    ///
    /// # Errors
    /// nft cannot be run or fails for another reason than a missing table.
    pub async fn list_table(&self, table: &str) -> Result<Option<String>, NftError> {
        match self.run(&["list", "table", "ip", table], None).await {
            Ok(text) => Ok(Some(text)),
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks that nft can be run at all (`nft --version`).
    ///
    /// # Errors
    /// It cannot.
    pub async fn check(&self) -> Result<(), NftError> {
        self.run(&["--version"], None).await.map(|_| ())
    }
}
