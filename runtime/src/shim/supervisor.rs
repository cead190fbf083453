//! The shim's own life: daemonize, create the cgroup, fork the container's init, then copy its
//! output and reap it until it exits. See the module map in `shim` for the protocol.

use super::init::{self, ChildFds, InitFailure};
use super::{StatusLine, STATUS_FD};
use crate::cgroups::{self, CgroupHandle};
use crate::container::logs::{self, Stream};
use crate::container::spec::ContainerSpec;
use crate::container::state::{ContainerState, Status};
use crate::container::{now_ms, proc_start_ticks, CONFIG_FILE, LOCK_FILE, LOG_FILE, STATE_FILE};
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// The shim's entry point after dispatch; returns the process exit code.
pub(crate) fn main(dir: &Path, attach: bool) -> i32 {
    // SAFETY: F_GETFD only asks whether fd 3 is open. When it is, it is the status pipe the
    // starter placed there, and taking ownership of it here is its only use.
    let open = unsafe { libc::fcntl(STATUS_FD, libc::F_GETFD) } >= 0;
    let status = open.then(|| unsafe { File::from_raw_fd(STATUS_FD) });
    run(dir, attach, status)
}

/// The shim's life, reporting on `status`. The caller must be single-threaded: it forks.
pub(crate) fn run(dir: &Path, attach: bool, status: Option<File>) -> i32 {
    // `ps` and `top` show the shim as what it is, whether exec'd or forked from `gantry run`.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"gantry-shim".as_ptr(), 0, 0, 0) };
    if let Some(f) = &status {
        // The container must not inherit the status pipe, or the starter would never see EOF.
        let _ = nix::fcntl::fcntl(f.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }

    // SAFETY: this process is single-threaded (exec'd fresh and dispatched before anything
    // else, or forked from a single-threaded starter), so the child may continue after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(
                status.as_ref(),
                &StatusLine::Failed(125, format!("shim cannot fork: {e}")),
            );
            return 125;
        }
    }
    let _ = nix::unistd::setsid();
    for sig in [Signal::SIGPIPE, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument and no pointers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let mut shim = Shim {
        dir,
        status,
        attach,
        state: None,
        auto_remove: false,
    };
    match shim.run() {
        Ok(()) => 0,
        Err(failure) => {
            shim.fail(&failure);
            failure.exit_code()
        }
    }
}

struct Shim<'a> {
    dir: &'a Path,
    status: Option<File>,
    attach: bool,
    state: Option<ContainerState>,
    /// The spec's `auto_remove`, once the spec has been read.
    auto_remove: bool,
}

impl Shim<'_> {
    fn run(&mut self) -> Result<(), InitFailure> {
        let setup = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| InitFailure {
                stage: "shim".into(),
                errno: e.raw_os_error().unwrap_or(0),
                message: format!("{what}: {e}"),
            }
        };
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(setup(&format!("cannot open {}", lock_path.display())))?;
        // SAFETY: flock on an fd we own; the lock lives exactly as long as `lock` stays open.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } < 0
        {
            return Err(InitFailure {
                stage: "shim".into(),
                errno: nix::errno::Errno::last() as i32,
                message: format!(
                    "container is already supervised ({} is locked)",
                    lock_path.display()
                ),
            });
        }

        let config_path = self.dir.join(CONFIG_FILE);
        let spec: ContainerSpec = std::fs::read(&config_path)
            .map_err(setup(&format!("cannot read {}", config_path.display())))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    setup(&format!("cannot parse {}", config_path.display()))(
                        std::io::Error::other(e),
                    )
                })
            })?;
        self.auto_remove = spec.auto_remove;

        self.state = Some(ContainerState::new(std::process::id() as i32));

        let cgroup = cgroups::detect()
            .and_then(|m| m.create(&format!("gantry/{}", spec.id), &spec.resources))
            .map_err(|e| InitFailure {
                stage: "cgroup".into(),
                errno: 0,
                message: e.to_string(),
            })?;
        if let Some(s) = self.state.as_mut() {
            s.cgroup = Some(cgroup.clone());
        }
        self.save();

        let result = self.supervise(&spec, &cgroup);
        let _ = cgroup.kill_all();
        if let Err(e) = cgroup.destroy() {
            tracing::warn!(error = %e, "cannot remove the container's cgroup");
        }
        drop(lock);
        result
    }

    fn supervise(
        &mut self,
        spec: &ContainerSpec,
        cgroup: &CgroupHandle,
    ) -> Result<(), InitFailure> {
        let sys = |what: &'static str| {
            move |e: nix::errno::Errno| InitFailure {
                stage: "shim".into(),
                errno: e as i32,
                message: format!("{what}: {e}"),
            }
        };
        let log_path = self.dir.join(LOG_FILE);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| InitFailure {
                stage: "shim".into(),
                errno: e.raw_os_error().unwrap_or(0),
                message: format!("cannot open {}: {e}", log_path.display()),
            })?;

        let (out_r, out_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("cannot create a pipe"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("cannot create a pipe"))?;
        let (sync_r, sync_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("cannot create a pipe"))?;
        let (fail_r, fail_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("cannot create a pipe"))?;

        // Block the signals we wait on before the fork, so none is lost; the child unblocks.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(sys("cannot block signals"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(sys("cannot create a signalfd"))?;

        nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(sys("cannot unshare the pid namespace"))?;
        // SAFETY: the shim is single-threaded; the child only runs `init::run`, which ends in
        // execve or _exit.
        let child =
            match unsafe { nix::unistd::fork() }.map_err(sys("cannot fork the container"))? {
                ForkResult::Child => {
                    drop((out_r, err_r, sync_w, fail_r));
                    init::run(
                        spec,
                        self.dir,
                        ChildFds {
                            sync: sync_r,
                            error: fail_w,
                            stdout: out_w,
                            stderr: err_w,
                        },
                    )
                }
                ForkResult::Parent { child } => child,
            };
        drop((out_w, err_w, sync_r, fail_w));

        if let Err(e) = cgroup.add_process(child.as_raw()) {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            return Err(InitFailure {
                stage: "cgroup".into(),
                errno: 0,
                message: e.to_string(),
            });
        }
        let _ = nix::unistd::write(&sync_w, b"g");
        drop(sync_w);

        // The error pipe closes on a successful exec; anything on it is a failure report.
        let mut report_bytes = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(&fail_r, &mut buf) {
                Ok(0) => break,
                Ok(n) => report_bytes.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if !report_bytes.is_empty() {
            let _ = nix::sys::wait::waitpid(child, None);
            return Err(InitFailure::decode(&report_bytes));
        }

        if let Some(s) = self.state.as_mut() {
            s.status = Status::Running;
            s.pid = child.as_raw();
            s.pid_start_ticks = proc_start_ticks(child.as_raw()).unwrap_or(0);
            s.started_ms = now_ms();
        }
        self.save();
        report(self.status.as_ref(), &StatusLine::Started(child.as_raw()));
        super::memory::trim_clean_file_pages();

        let wait_status = self.pump(child, &out_r, &err_r, &sigfd, &mut log);
        let _ = log.flush();

        let oom = cgroup.oom_kills().unwrap_or(0) > 0;
        let (mut code, mut reason) = match wait_status {
            WaitStatus::Exited(_, code) => (code, (code != 0).then(|| "Error".to_string())),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(format!("Signaled({sig})"))),
            _ => (255, Some("Unknown".to_string())),
        };
        if oom {
            reason = Some("OOMKilled".to_string());
            if code == 0 {
                code = 137;
            }
        }
        if let Some(s) = self.state.as_mut() {
            s.status = Status::Exited;
            s.exit_code = Some(code);
            s.reason = reason.clone();
            s.finished_ms = now_ms();
        }
        self.finish(&StatusLine::Exited(code, reason));
        Ok(())
    }

    /// Copies output and reaps until the container's init has exited and its output is drained.
    fn pump(
        &mut self,
        child: Pid,
        out_r: &OwnedFd,
        err_r: &OwnedFd,
        sigfd: &SignalFd,
        log: &mut File,
    ) -> WaitStatus {
        let mut open = [true, true];
        let mut exited: Option<(WaitStatus, Instant)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some((status, at)) = exited {
                // Everything in the pid namespace died with its init; the pipes close soon. A
                // process that somehow kept them open must not keep the shim alive forever.
                if (!open[0] && !open[1]) || at.elapsed() > Duration::from_secs(2) {
                    return status;
                }
            }
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            let streams: [(BorrowedFd, Stream); 2] = [
                (out_r.as_fd(), Stream::Stdout),
                (err_r.as_fd(), Stream::Stderr),
            ];
            let mut polled = Vec::new();
            for (i, (fd, _)) in streams.iter().enumerate() {
                if open[i] {
                    fds.push(PollFd::new(*fd, PollFlags::POLLIN));
                    polled.push(i);
                }
            }
            let timeout = if exited.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return exited.map(|e| e.0).unwrap_or(WaitStatus::StillAlive),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            for (slot, &i) in polled.iter().enumerate() {
                if !ready[slot + 1] {
                    continue;
                }
                let (fd, stream) = streams[i];
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => open[i] = false,
                    Ok(n) => {
                        let _ = logs::write_chunk(log, stream, &buf[..n]);
                        if self.attach {
                            let target = if stream == Stream::Stdout { 1 } else { 2 };
                            // SAFETY: fds 1 and 2 are the attached client's, open for the
                            // shim's whole life; borrowing them for one write is sound.
                            let out = unsafe { BorrowedFd::borrow_raw(target) };
                            if write_all(out, &buf[..n]).is_err() {
                                self.attach = false;
                            }
                        }
                    }
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(_) => open[i] = false,
                }
            }
            if ready[0] {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    if info.ssi_signo == Signal::SIGTERM as u32 {
                        let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
                    }
                }
                // Reap everything: the container's init, and orphans we adopted as subreaper.
                loop {
                    match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(ws) => {
                            if ws.pid() == Some(child) && exited.is_none() {
                                exited = Some((ws, Instant::now()));
                            }
                        }
                    }
                }
            }
        }
    }

    fn save(&self) {
        if let Some(s) = &self.state {
            if let Err(e) = s.write(&self.dir.join(STATE_FILE)) {
                tracing::warn!(error = %e, "cannot write container state");
            }
        }
    }

    /// Records the end, removes the container when asked, then tells the starter.
    fn finish(&mut self, line: &StatusLine) {
        self.save();
        if self.auto_remove {
            let _ = std::fs::remove_dir_all(self.dir);
        }
        report(self.status.as_ref(), line);
    }

    fn fail(&mut self, failure: &InitFailure) {
        let code = failure.exit_code();
        let mut state = self
            .state
            .take()
            .unwrap_or_else(|| ContainerState::new(std::process::id() as i32));
        state.status = Status::Exited;
        state.exit_code = Some(code);
        state.reason = Some("StartError".into());
        state.error = Some(failure.message.clone());
        state.finished_ms = now_ms();
        self.state = Some(state);
        self.finish(&StatusLine::Failed(code, failure.message.clone()));
    }
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn report(status: Option<&File>, line: &StatusLine) {
    if let Some(mut f) = status {
        let _ = f.write_all(line.encode().as_bytes());
    }
}
