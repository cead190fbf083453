//! Running things inside a live container from outside it: a command joined to the
//! container's namespaces and cgroup ([`exec_command`]), and TCP connections opened from inside
//! its network namespace ([`connect_tcp`]).
//!
//! Invariants: the caller's own namespaces never change. [`exec_command`] joins the
//! namespaces only in the forked child, between fork and exec, with async-signal-safe calls
//! on descriptors opened beforehand; [`connect_tcp`] switches the network namespace of a
//! short-lived thread of its own, and a socket keeps the namespace it was created in.
//!
//! Limits: the exec'd process joins the container's mount, UTS, IPC and network namespaces
//! and its cgroup, but stays in the host's pid namespace (only children of a process can enter
//! a pid namespace), keeps the caller's capabilities and runs as root.

use super::lifecycle::ContainerInfo;
use super::proc_start_ticks;
use super::ContainerError;
use nix::sched::CloneFlags;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The namespaces an exec'd command joins, in the order it joins them (mount last: it changes
/// the root, after which `/proc/<pid>/ns` paths would no longer resolve — they are opened
/// beforehand anyway).
const EXEC_NAMESPACES: [(&str, libc::c_int); 4] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("mnt", libc::CLONE_NEWNS),
];

/// The host pid of a running container's init, checked against its recorded start time so a
/// recycled pid is never used.
pub fn running_pid(info: &ContainerInfo) -> Result<i32, ContainerError> {
    let not_running =
        || ContainerError::Other(format!("container {} is not running", info.spec.id));
    if !info.is_running() {
        return Err(not_running());
    }
    let state = info.state.as_ref().ok_or_else(not_running)?;
    if state.pid <= 0 || proc_start_ticks(state.pid) != Some(state.pid_start_ticks) {
        return Err(not_running());
    }
    Ok(state.pid)
}

/// A command (not started) that runs `argv` inside the running container `info`: in its
/// mount, UTS, IPC and network namespaces and its cgroup, with its environment and working
/// directory. `argv[0]` is looked up in the container's `PATH` unless it holds a `/`.
/// The caller chooses stdio and spawns it (std or tokio).
///
/// # Errors
/// The container does not run, `argv` is empty or its program cannot be found in the
/// container (`CommandNotFound`), or a namespace file cannot be opened.
pub fn exec_command(info: &ContainerInfo, argv: &[String]) -> Result<Command, ContainerError> {
    let pid = running_pid(info)?;
    let program = argv.first().ok_or_else(|| ContainerError::Invalid {
        field: "command",
        reason: "no command given".into(),
    })?;
    let container_root = format!("/proc/{pid}/root");
    let program = resolve_program(Path::new(&container_root), program, &info.spec.env)?;

    let mut ns_files = Vec::with_capacity(EXEC_NAMESPACES.len());
    for (name, flag) in EXEC_NAMESPACES {
        let path = format!("/proc/{pid}/ns/{name}");
        let f = File::open(&path).map_err(ContainerError::io(&path))?;
        ns_files.push((f, flag));
    }
    // Opened now, written in the child: writing "0" to cgroup.procs moves the writer itself.
    let mut cgroup_files = Vec::new();
    if let Some(cg) = info.state.as_ref().and_then(|s| s.cgroup.as_ref()) {
        for dir in cg.dirs() {
            let path = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(ContainerError::io(&path))?;
            cgroup_files.push(f);
        }
    }
    let working_dir = if info.spec.working_dir.is_empty() {
        "/".to_string()
    } else {
        info.spec.working_dir.clone()
    };
    let workdir_c = std::ffi::CString::new(working_dir)
        .map_err(|e| ContainerError::Other(format!("working directory: {e}")))?;

    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..]).env_clear();
    for kv in &info.spec.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    tracing::debug!(container = %info.spec.id, pid, program = %program, "exec in container");
    // SAFETY: between fork and exec the closure only calls write(2), setns(2) and chdir(2),
    // which are async-signal-safe, on descriptors and a C string prepared before the fork;
    // it allocates nothing. The captured files stay open until `cmd` is dropped.
    unsafe {
        cmd.pre_exec(move || {
            for f in &cgroup_files {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (f, flag) in &ns_files {
                if libc::setns(f.as_raw_fd(), *flag) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::chdir(workdir_c.as_ptr()) < 0 && libc::chdir(c"/".as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Finds `program` in the container's filesystem (seen through `/proc/<pid>/root`), returning
/// the path as the container sees it.
fn resolve_program(root: &Path, program: &str, env: &[String]) -> Result<String, ContainerError> {
    let exists = |p: &str| root.join(p.trim_start_matches('/')).is_file();
    if program.contains('/') {
        return if exists(program) {
            Ok(program.to_string())
        } else {
            Err(ContainerError::CommandNotFound(format!(
                "{program}: no such file in the container"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| exists(p))
        .ok_or_else(|| {
            ContainerError::CommandNotFound(format!("{program}: not found in the container's PATH"))
        })
}

/// Opens a TCP connection to `addr` from inside the network namespace of process `pid` (a
/// container's init), within `timeout`. The connection is made on a thread of its own that
/// enters the namespace and then ends, so no other thread's namespace changes.
///
/// # Errors
/// The namespace cannot be entered, or the connection fails or times out.
pub fn connect_tcp(pid: i32, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let ns_path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&ns_path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{ns_path}: {e}")))?;
    let handle = std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || -> std::io::Result<TcpStream> {
            tracing::debug!(pid, %addr, "connecting from the container's network namespace");
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("setns into {ns_path}: {e}")))?;
            TcpStream::connect_timeout(&addr, timeout)
        })?;
    handle
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_through_the_containers_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/tool"), b"").unwrap();
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert_eq!(
            resolve_program(dir.path(), "tool", &env).unwrap(),
            "/bin/tool"
        );
        assert_eq!(
            resolve_program(dir.path(), "/bin/tool", &env).unwrap(),
            "/bin/tool"
        );
        assert!(matches!(
            resolve_program(dir.path(), "nope", &env),
            Err(ContainerError::CommandNotFound(_))
        ));
    }

    #[test]
    fn connecting_in_our_own_namespace_works() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = std::process::id() as i32;
        connect_tcp(me, addr, Duration::from_secs(2)).unwrap();
    }
}
