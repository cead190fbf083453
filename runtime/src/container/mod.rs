//! Containers: what is asked ([`spec`]), what is ([`state`]), their output ([`logs`]), the
//! pieces the container's init uses ([`rootfs`], [`security`], [`net`]), and the operations
//! any process may run on them ([`Runtime`]: create and start under a shim, list, stop,
//! remove, wait).
//!
//! A container is a directory `ROOT/containers/<id>/` holding `config.json` (the spec, written
//! once by the starter), `state.json` (written only by the shim), `container.log`,
//! `shim.lock` (locked by the live shim), and the overlay's `upper/`, `work/` and `rootfs/`.
//! Names are reserved race-free as symlinks `ROOT/names/<name>` → id.

mod error;
pub mod exec;
mod lifecycle;
pub mod logs;
pub mod net;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod state;

pub use error::ContainerError;
pub use lifecycle::{ContainerInfo, RunOptions, Runtime, StartedContainer};

/// The spec file in a container's directory.
pub const CONFIG_FILE: &str = "config.json";
/// The state file in a container's directory.
pub const STATE_FILE: &str = "state.json";
/// The log file in a container's directory.
pub const LOG_FILE: &str = "container.log";
/// The lock the live shim holds.
pub const LOCK_FILE: &str = "shim.lock";

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// together with the pid names one process for good.
pub fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_this_process_are_stable() {
        let me = std::process::id() as i32;
        let a = proc_start_ticks(me).expect("own stat is readable");
        assert_eq!(proc_start_ticks(me), Some(a));
        assert_eq!(proc_start_ticks(i32::MAX), None);
    }
}
