//! Running the helper commands of replica networking: iproute2's `ip` (optionally in a
//! sandbox via `nsenter --net=FILE`, optionally batched with `ip -batch -`), `unshare` and
//! `umount`. Every failure comes back as [`NetworkError::Command`] naming the full command line
//! and the tool's own message.
//!
//! These block; callers run them on blocking threads, never on the async loop.

use super::NetworkError;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// iproute2's `ip`: `/usr/sbin/ip` on Debian, else whatever `PATH` finds.
fn ip_program() -> &'static str {
    if Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else {
        "ip"
    }
}

/// Runs `program args`, feeding `input` on stdin; returns stdout.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, NetworkError> {
    let line = || {
        let mut l = format!("{program} {}", args.join(" "));
        if let Some(i) = input {
            l.push_str(&format!(" <<< {:?}", i.trim_end()));
        }
        l
    };
    tracing::debug!(command = %line(), "running");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Command {
            command: line(),
            message: format!("cannot run {program}: {e}"),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Command {
            command: line(),
            message: format!("cannot wait for {program}: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = match stderr.trim() {
            "" => format!("exited with {}", out.status),
            s => s.replace('\n', "; "),
        };
        Err(NetworkError::Command {
            command: line(),
            message,
        })
    }
}

/// `ip ARGS` in the agent's network namespace.
pub fn ip(args: &[&str]) -> Result<String, NetworkError> {
    run(ip_program(), args, None)
}

/// `ip ARGS`, ignoring failure (teardown of what may not exist).
pub fn ip_quiet(args: &[&str]) {
    if let Err(e) = ip(args) {
        tracing::debug!(error = %e, "ignored");
    }
}

/// `ip -batch -` in the network namespace file `netns`: `commands` are `ip` command lines
/// without the leading `ip`, run by one process.
pub fn ip_batch_in(netns: &Path, commands: &[String]) -> Result<(), NetworkError> {
    let net = format!("--net={}", netns.display());
    let script = commands.join("\n") + "\n";
    run(
        "nsenter",
        &[&net, "--", ip_program(), "-batch", "-"],
        Some(&script),
    )
    .map(drop)
}

/// `ip ARGS` in the network namespace file `netns`.
pub fn ip_in(netns: &Path, args: &[&str]) -> Result<String, NetworkError> {
    let net = format!("--net={}", netns.display());
    let mut argv = vec![net.as_str(), "--", ip_program()];
    argv.extend_from_slice(args);
    run("nsenter", &argv, None)
}

/// Creates a new network namespace kept alive by a bind mount on the (existing, empty) file
/// `path`. A helper process does the `unshare`, so no agent thread changes namespace.
pub fn create_netns(path: &Path) -> Result<(), NetworkError> {
    let net = format!("--net={}", path.display());
    run("unshare", &[&net, "true"], None).map(drop)
}

/// Unmounts `path` (a namespace bind mount).
pub fn umount(path: &Path) -> Result<(), NetworkError> {
    let p = path.display().to_string();
    run("umount", &[&p], None).map(drop)
}
