//! The container's init path: runs in the child the shim forks into the new pid namespace, and
//! ends in `execve` of the container's process or in `_exit` after reporting why it could not.
//!
//! The shim is single-threaded, so after `fork` this child may allocate freely. Order matters:
//! namespaces first, then wait until the shim has put us in the cgroup (so every byte the
//! process allocates and every process it forks is accounted), then the filesystem, identity,
//! capabilities, and last `execve`. A failure is written to the error pipe (close-on-exec, so a
//! successful exec closes it with nothing written) and the child exits.

use crate::container::spec::{ContainerSpec, Network};
use crate::container::{net, rootfs, security};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the container's process could not be started, as reported through the error pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFailure {
    /// The step that failed: `namespaces`, `network`, `rootfs`, `hostname`, `user`, `workdir`,
    /// `capabilities`, `exec`.
    pub stage: String,
    /// The errno, 0 when not a syscall failure.
    pub errno: i32,
    /// A lower-case message naming what failed.
    pub message: String,
}

impl InitFailure {
    fn new(stage: &str, errno: i32, message: impl Into<String>) -> Self {
        Self {
            stage: stage.to_string(),
            errno,
            message: message.into(),
        }
    }

    /// Docker's exit codes: 127 command not found, 126 not executable, 125 anything else.
    pub fn exit_code(&self) -> i32 {
        if self.stage != "exec" {
            return 125;
        }
        match Errno::from_raw(self.errno) {
            Errno::ENOENT | Errno::ENOTDIR => 127,
            _ => 126,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{}\x1f{}\x1f{}", self.stage, self.errno, self.message).into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut parts = text.splitn(3, '\x1f');
        let stage = parts.next().unwrap_or("exec").to_string();
        let errno = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
        let message = parts.next().unwrap_or("container init failed").to_string();
        Self {
            stage,
            errno,
            message,
        }
    }
}

/// The pipe ends the child owns.
pub(crate) struct ChildFds {
    /// Closed by the shim, or written once, when the child is in its cgroup.
    pub sync: OwnedFd,
    /// Close-on-exec; receives an [`InitFailure`].
    pub error: OwnedFd,
    /// Becomes fd 1.
    pub stdout: OwnedFd,
    /// Becomes fd 2.
    pub stderr: OwnedFd,
}

/// Sets the container up and execs its process; never returns.
pub(crate) fn run(spec: &ContainerSpec, container_dir: &Path, fds: ChildFds) -> ! {
    let failure = match setup_and_exec(spec, container_dir, &fds) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let _ = nix::unistd::write(&fds.error, &failure.encode());
    // SAFETY: _exit is async-signal-safe and skips destructors and stdio flushing, which
    // belong to the parent's copy of this address space.
    unsafe { libc::_exit(1) }
}

fn setup_and_exec(
    spec: &ContainerSpec,
    container_dir: &Path,
    fds: &ChildFds,
) -> Result<std::convert::Infallible, InitFailure> {
    reset_signals();
    let errno = |stage: &'static str, what: String| {
        move |e: Errno| InitFailure::new(stage, e as i32, format!("{what}: {e}"))
    };

    // A container joining a sandbox gets no network namespace of its own: it enters the
    // sandbox's below, while this process is still single-threaded.
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::Private {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(errno(
        "namespaces",
        format!("cannot unshare namespaces {flags:?}"),
    ))?;

    // Wait for the shim: one byte means "you are in your cgroup"; EOF means the shim gave up.
    let mut byte = [0u8; 1];
    match nix::unistd::read(&fds.sync, &mut byte) {
        Ok(1) => {}
        _ => {
            // SAFETY: see `run`; nothing to report, the shim is gone or aborting.
            unsafe { libc::_exit(1) }
        }
    }

    match &spec.network {
        Network::Private => net::bring_up_loopback().map_err(|e| {
            InitFailure::new("network", 0, format!("cannot bring up loopback: {e}"))
        })?,
        // Before pivot_root: the namespace file lives in the host's filesystem.
        Network::Join { path } => {
            net::join_netns(path).map_err(|e| InitFailure::new("network", 0, e.to_string()))?
        }
    }

    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    let target = container_dir.join("rootfs");
    rootfs::enter_rootfs(&rootfs::RootfsSpec {
        lower_dirs: &spec.lower_dirs,
        upper_dir: &upper,
        work_dir: &work,
        target: &target,
        readonly_rootfs: spec.readonly_rootfs,
        mounts: &spec.mounts,
    })
    .map_err(|e| InitFailure::new("rootfs", 0, e.to_string()))?;

    nix::unistd::sethostname(&spec.hostname).map_err(errno(
        "hostname",
        format!("cannot set hostname {:?}", spec.hostname),
    ))?;

    let identity = security::resolve_user(&spec.user)
        .map_err(|e| InitFailure::new("user", 0, e.to_string()))?;

    let workdir = if spec.working_dir.is_empty() {
        "/"
    } else {
        spec.working_dir.as_str()
    };
    if std::fs::metadata(workdir).is_err() {
        // Docker creates a missing working directory; so do we, owned by the process's user.
        std::fs::create_dir_all(workdir).map_err(|e| {
            InitFailure::new(
                "workdir",
                e.raw_os_error().unwrap_or(0),
                format!("cannot create working directory {workdir}: {e}"),
            )
        })?;
        let _ = nix::unistd::chown(
            workdir,
            Some(nix::unistd::Uid::from_raw(identity.uid)),
            Some(nix::unistd::Gid::from_raw(identity.gid)),
        );
    }
    nix::unistd::chdir(workdir).map_err(errno(
        "workdir",
        format!("cannot enter working directory {workdir}"),
    ))?;

    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", identity.home.as_deref().unwrap_or("/")));
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }

    redirect_stdio(fds).map_err(errno("exec", "cannot set up stdio".into()))?;

    security::apply(&identity, spec.capabilities)
        .map_err(|e| InitFailure::new("capabilities", 0, e.to_string()))?;

    let Some(program) = spec.args.first() else {
        return Err(InitFailure::new(
            "exec",
            Errno::ENOENT as i32,
            "no command given and the image has none",
        ));
    };
    let path = find_program(program, &env).ok_or_else(|| {
        InitFailure::new(
            "exec",
            Errno::ENOENT as i32,
            format!("executable file not found in $PATH: {program}"),
        )
    })?;

    let to_c = |s: &str| {
        CString::new(s).map_err(|_| {
            InitFailure::new(
                "exec",
                Errno::EINVAL as i32,
                format!("argument contains a NUL byte: {s:?}"),
            )
        })
    };
    let argv = spec
        .args
        .iter()
        .map(|a| to_c(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>, _>>()?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| InitFailure::new("exec", Errno::EINVAL as i32, "path contains a NUL byte"))?;

    mark_inherited_fds_cloexec();
    let err = match nix::unistd::execve(&c_path, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let what = match err {
        Errno::ENOENT => "no such file or directory",
        Errno::EACCES => "permission denied",
        Errno::ENOEXEC => "exec format error",
        _ => "cannot execute",
    };
    Err(InitFailure::new(
        "exec",
        err as i32,
        format!("{}: {what}", path.display()),
    ))
}

/// The shim blocks SIGCHLD/SIGTERM for its signalfd and ignores SIGPIPE/SIGINT/SIGHUP; ignored
/// dispositions and the mask survive exec, so the container would inherit them.
fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for sig in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGCHLD,
    ] {
        // SAFETY: resetting to the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
}

fn redirect_stdio(fds: &ChildFds) -> nix::Result<()> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&fds.stdout)?;
    nix::unistd::dup2_stderr(&fds.stderr)?;
    Ok(())
}

/// Everything above stderr is closed by `execve`, except what the process must not keep
/// anyway; the error pipe is already close-on-exec, so a failed exec can still report.
fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it touches
    // no memory. On kernels without it the call fails harmlessly and the fds Gantry opened are
    // close-on-exec already.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// `execvp`'s search: a name with a slash is used as is; otherwise the first executable
/// regular file of that name in the container's `$PATH`.
fn find_program(program: &str, env: &[String]) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
                && nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_failure_round_trips_through_the_pipe_encoding() {
        let f = InitFailure::new(
            "exec",
            Errno::ENOENT as i32,
            "executable file not found in $PATH: nope",
        );
        assert_eq!(InitFailure::decode(&f.encode()), f);
        assert_eq!(f.exit_code(), 127);
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(
            InitFailure::new("exec", Errno::EACCES as i32, "x").exit_code(),
            126
        );
        assert_eq!(
            InitFailure::new("rootfs", Errno::EACCES as i32, "x").exit_code(),
            125
        );
    }

    #[test]
    fn program_search_uses_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(find_program("/x/y", &env), Some(PathBuf::from("/x/y")));
        assert_eq!(find_program("sh", &env), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("surely-not-a-program", &env), None);
    }
}
