//! The per-container shim: a tiny single-threaded supervisor, one per container.
//!
//! The starter (`gantry run`, later the node agent) execs `gantry __shim DIR [--attach]` with
//! the write end of a status pipe on fd 3. The shim forks once so that the starter can reap it
//! at once and the real shim is reparented away from it, calls `setsid` so no terminal signal
//! reaches it, and becomes a child subreaper. It then creates the container's cgroup, unshares
//! a pid namespace and forks the container's init (see [`init`]), records the state in
//! `DIR/state.json`, copies the container's stdout/stderr into `DIR/container.log` (and to its
//! own stdout/stderr when attached), reaps the container, detects OOM kills, removes the
//! cgroup and records the exit.
//!
//! Invariants:
//! - The shim holds an exclusive `flock` on `DIR/shim.lock` for exactly its lifetime, so any
//!   process can tell whether a container is still supervised (and wait for it to end) without
//!   trusting a pid that may have been recycled.
//! - `state.json` is written atomically and only by the shim.
//! - Status lines on fd 3: `started PID`, then `exited CODE REASON`, or `failed CODE MESSAGE`
//!   when the container could not start; the pipe closes when the shim is done.
//! - It never forks or unshares with more than one thread: it is exec'd fresh and dispatched
//!   from `main` before anything else runs.

mod init;
mod memory;
mod supervisor;

pub use init::InitFailure;

/// The hidden first argument that turns `gantry` into a shim.
pub const SHIM_ARG: &str = "__shim";

/// The fd on which the shim writes its status lines.
pub const STATUS_FD: i32 = 3;

/// Runs the shim when this process was started as one (hidden first argument), returning the
/// exit code; `None` for an ordinary CLI invocation.
pub fn dispatch_hidden() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SHIM_ARG {
        return None;
    }
    let Some(dir) = args.next() else {
        eprintln!("gantry: {SHIM_ARG} needs a container directory");
        return Some(125);
    };
    let attach = args.any(|a| a == "--attach");
    Some(supervisor::main(std::path::Path::new(&dir), attach))
}

/// Runs the shim in a process forked from a single-threaded starter (no exec), reporting on
/// `status`; returns the exit code for `_exit`.
pub(crate) fn run_forked(dir: &std::path::Path, attach: bool, status: std::fs::File) -> i32 {
    supervisor::run(dir, attach, Some(status))
}

/// One status line from the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// The container's process runs with this host pid.
    Started(i32),
    /// It exited with this code; the reason when notable (`OOMKilled`).
    Exited(i32, Option<String>),
    /// It could not start: the Docker-style exit code (125, 126, 127) and why.
    Failed(i32, String),
}

impl StatusLine {
    /// The line as written on the status pipe, newline included.
    pub fn encode(&self) -> String {
        match self {
            StatusLine::Started(pid) => format!("started {pid}\n"),
            StatusLine::Exited(code, reason) => {
                format!("exited {code} {}\n", reason.as_deref().unwrap_or("-"))
            }
            StatusLine::Failed(code, msg) => {
                format!("failed {code} {}\n", msg.replace('\n', " "))
            }
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Option<Self> {
        let (word, rest) = line.split_once(' ')?;
        match word {
            "started" => Some(StatusLine::Started(rest.trim().parse().ok()?)),
            "exited" => {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, "-"));
                let reason = (reason != "-").then(|| reason.to_string());
                Some(StatusLine::Exited(code.parse().ok()?, reason))
            }
            "failed" => {
                let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(StatusLine::Failed(code.parse().ok()?, msg.to_string()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for line in [
            StatusLine::Started(42),
            StatusLine::Exited(137, Some("OOMKilled".into())),
            StatusLine::Exited(0, None),
            StatusLine::Failed(127, "executable file not found: /nope".into()),
        ] {
            let text = line.encode();
            assert_eq!(StatusLine::parse(text.trim_end()), Some(line));
        }
    }

    #[test]
    fn garbage_status_lines_are_rejected() {
        assert_eq!(StatusLine::parse("exploded 1"), None);
        assert_eq!(StatusLine::parse("started x"), None);
        assert_eq!(StatusLine::parse(""), None);
    }
}
