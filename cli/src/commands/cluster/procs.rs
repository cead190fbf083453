//! Starting and ending the processes of a local cluster. A process is only ever signalled
//! when its PID still belongs to the process we started (same start time), so a reused PID is
//! never hit.

use super::state::Member;
use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is at index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the member's recorded process still runs.
pub fn alive(m: &Member) -> bool {
    match (m.pid, m.start_ticks) {
        (Some(pid), Some(ticks)) => start_ticks(pid) == Some(ticks),
        _ => false,
    }
}

/// Starts `argv` (inside `netns` when given) in the background, its output appended to the
/// member's log; records its PID in `m`.
///
/// # Errors
/// The process cannot be started.
pub fn spawn(m: &mut Member, argv: &[String]) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .with_context(|| format!("cannot open {}", m.log.display()))?;
    let mut cmd = match &m.netns {
        // `nsenter` enters only the network namespace and execs the program, so the PID stays
        // ours. (`ip netns exec` would also remount /sys, hiding the cgroup hierarchy from an
        // agent.)
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("--").args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("GANTRY_SERVER")
        // Its own process group: a Ctrl-C at the terminal of `cluster up` does not reach it.
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", argv.join(" ")))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // Dropping the handle neither waits nor kills: the child is reaped by whoever adopts it
    // once this CLI exits; until then a zombie reads as dead in `alive`.
    drop(child);
    m.pid = Some(pid);
    m.start_ticks = start_ticks(pid);
    Ok(())
}

/// Sends `signal` to the member's process if it is still ours; then, when `wait` is given,
/// waits that long for it to end and kills it if it has not.
pub fn signal(m: &mut Member, signal: Signal, wait: Option<Duration>) {
    if !alive(m) {
        m.pid = None;
        m.start_ticks = None;
        return;
    }
    let Some(pid) = m.pid else { return };
    let _ = kill(Pid::from_raw(pid), signal);
    if let Some(wait) = wait {
        let deadline = Instant::now() + wait;
        while alive(m) && Instant::now() < deadline {
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(m) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(m) && Instant::now() < deadline {
                reap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        m.pid = None;
        m.start_ticks = None;
    }
}

/// Reaps children of this process that have ended (those started in this same invocation).
pub fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
