//! The operations on containers that any process may run: create and start (under a shim),
//! list, inspect, stop, remove and wait. Nothing here keeps state in memory: the container's
//! directory is the truth, so a CLI call, an agent, or a restarted agent see the same thing.

use super::spec::{BindMount, ContainerSpec, Network};
use super::state::{ContainerState, Status};
use super::{now_ms, proc_start_ticks, ContainerError, CONFIG_FILE, LOCK_FILE, STATE_FILE};
use crate::cgroups::Resources;
use crate::container::security::Capabilities;
use crate::images::ImageStore;
use crate::root::RuntimeRoot;
use crate::shim::{StatusLine, SHIM_ARG, STATUS_FD};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The smallest memory limit accepted: below it even a shell cannot start.
pub const MIN_MEMORY_LIMIT: u64 = 4 * 1024 * 1024;

/// What `gantry run` (or an agent) asks for; resolved against the image by [`Runtime::create`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Image reference: `name[:tag]`, `sha256:<id>` or an id prefix.
    pub image: String,
    /// Container name; generated when absent.
    pub name: Option<String>,
    /// Replaces the image's `Cmd` when not empty (Docker's semantics).
    pub command: Vec<String>,
    /// Replaces the image's `Entrypoint` (and then drops its `Cmd`).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` pairs added to (and overriding) the image's environment.
    pub env: Vec<String>,
    /// Hostname; the first 12 characters of the id when absent.
    pub hostname: Option<String>,
    /// Working directory; the image's when absent.
    pub working_dir: Option<String>,
    /// User spec; the image's when absent.
    pub user: Option<String>,
    /// Cgroup limits.
    pub resources: Resources,
    /// Capabilities added to the default set (`MKNOD`, `NET_ADMIN`, `ALL`…).
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it.
    pub cap_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Labels recorded in the spec.
    pub labels: BTreeMap<String, String>,
    /// The container's network namespace: private (`lo` only) by default, or an existing one
    /// to join.
    pub network: Network,
    /// Host files bind-mounted read-only into the container.
    pub mounts: Vec<BindMount>,
}

/// A container as found on disk.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// What it was asked to be.
    pub spec: ContainerSpec,
    /// What its shim last recorded; `None` before the shim wrote anything.
    pub state: Option<ContainerState>,
    /// Whether a live shim holds its lock.
    pub supervised: bool,
    /// Its directory.
    pub dir: PathBuf,
}

impl ContainerInfo {
    /// Runs under a live shim.
    pub fn is_running(&self) -> bool {
        self.supervised
            && self
                .state
                .as_ref()
                .is_some_and(|s| s.status == Status::Running)
    }

    /// Docker-like status word: `running`, `created`, `exited`, or `dead` (the shim vanished
    /// without recording an exit).
    pub fn status_word(&self) -> &'static str {
        match (&self.state, self.supervised) {
            (Some(s), _) if s.status == Status::Exited => "exited",
            (Some(s), true) if s.status == Status::Running => "running",
            (_, true) => "created",
            (_, false) => "dead",
        }
    }
}

/// A container whose process runs; holds the shim's status pipe.
#[derive(Debug)]
pub struct StartedContainer {
    /// The spec it runs.
    pub spec: ContainerSpec,
    /// The container's init on the host.
    pub pid: i32,
    status: File,
    pending: Vec<u8>,
    dir: PathBuf,
}

/// Container operations under one runtime root.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: RuntimeRoot,
    shim_program: PathBuf,
}

impl Runtime {
    /// Operations under `root`, with this very executable (the `gantry` binary) as the shim.
    pub fn new(root: RuntimeRoot) -> Self {
        let shim_program =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        Self { root, shim_program }
    }

    /// Uses another `gantry` binary as the shim (tests and embedders whose own executable
    /// is not `gantry`).
    pub fn with_shim_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.shim_program = program.into();
        self
    }

    /// The runtime root.
    pub fn root(&self) -> &RuntimeRoot {
        &self.root
    }

    /// Opens the image store of this root.
    pub fn images(&self) -> Result<ImageStore, ContainerError> {
        Ok(ImageStore::open(&self.root.images_dir())?)
    }

    /// Resolves the options against the image, validates them, reserves the name, and writes
    /// the container's directory and `config.json`. Nothing is left behind on error.
    pub fn create(&self, opts: &RunOptions) -> Result<ContainerSpec, ContainerError> {
        validate_resources(&opts.resources)?;
        let store = self.images()?;
        let image = store.resolve(&opts.image)?;

        let entrypoint = opts
            .entrypoint
            .clone()
            .unwrap_or_else(|| image.config.entrypoint.clone());
        let cmd = if !opts.command.is_empty() {
            opts.command.clone()
        } else if opts.entrypoint.is_some() {
            Vec::new()
        } else {
            image.config.cmd.clone()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(ContainerError::Invalid {
                field: "command",
                reason: format!("no command given and image {} has none", opts.image),
            });
        }

        let mut env = image.config.env.clone();
        for kv in &opts.env {
            let Some((key, _)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(ContainerError::Invalid {
                    field: "env",
                    reason: format!("{kv:?} is not KEY=VALUE"),
                });
            };
            env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
            env.push(kv.clone());
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }

        let working_dir = opts
            .working_dir
            .clone()
            .unwrap_or_else(|| image.config.working_dir.clone());
        if !working_dir.is_empty() && !working_dir.starts_with('/') {
            return Err(ContainerError::Invalid {
                field: "workdir",
                reason: format!("{working_dir:?} is not an absolute path"),
            });
        }
        let capabilities = Capabilities::container_default()
            .with_added(&opts.cap_add)
            .and_then(|c| c.with_dropped(&opts.cap_drop))
            .map_err(|e| ContainerError::Invalid {
                field: "capabilities",
                reason: e.to_string(),
            })?;

        validate_network(&opts.network, &opts.mounts)?;

        let id = random_id()?;
        let hostname = opts
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string());
        validate_hostname(&hostname)?;
        let name = match &opts.name {
            Some(n) => {
                validate_name(n)?;
                n.clone()
            }
            None => format!("{}-{}", image_basename(&opts.image), &id[..6]),
        };

        let spec = ContainerSpec {
            id: id.clone(),
            name,
            image: opts.image.clone(),
            image_id: image.id.clone(),
            lower_dirs: store.layer_dirs(&image),
            args,
            env,
            working_dir,
            user: opts
                .user
                .clone()
                .unwrap_or_else(|| image.config.user.clone()),
            hostname,
            resources: opts.resources.clone(),
            capabilities,
            readonly_rootfs: opts.readonly_rootfs,
            auto_remove: opts.auto_remove,
            labels: opts.labels.clone(),
            network: opts.network.clone(),
            mounts: opts.mounts.clone(),
            created_ms: now_ms(),
        };

        self.reserve_name(&spec.name, &id)?;
        let dir = self.root.container_dir(&id);
        let written = (|| {
            for sub in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(dir.join(sub))
                    .map_err(ContainerError::io(dir.join(sub)))?;
            }
            let json = serde_json::to_vec_pretty(&spec)
                .map_err(|e| ContainerError::Other(e.to_string()))?;
            super::state::write_atomic(&dir.join(CONFIG_FILE), &json)
                .map_err(ContainerError::io(dir.join(CONFIG_FILE)))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            self.release_name(&spec.name, &id);
            return Err(e);
        }
        tracing::debug!(container = %id, name = %spec.name, "created");
        Ok(spec)
    }

    /// Starts a created container under a new shim and returns once its process runs (or
    /// with the reason it could not: 127 not found, 126 not executable, 125 otherwise). With
    /// `attach`, the shim also copies the container's output to this process's stdout/stderr.
    pub fn start(
        &self,
        spec: &ContainerSpec,
        attach: bool,
    ) -> Result<StartedContainer, ContainerError> {
        let dir = self.root.container_dir(&spec.id);
        let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| ContainerError::Other(format!("cannot create the status pipe: {e}")))?;
        if is_single_threaded() {
            fork_shim(&dir, attach, status_w)?;
        } else {
            self.exec_shim(&dir, attach, status_w)?;
        }
        let mut started = StartedContainer {
            spec: spec.clone(),
            pid: 0,
            status: File::from(status_r),
            pending: Vec::new(),
            dir: dir.clone(),
        };
        match started.next_line(None::<(&SignalFd, fn(i32))>)? {
            Some(StatusLine::Started(pid)) => {
                started.pid = pid;
                tracing::debug!(container = %spec.id, pid, "started");
                Ok(started)
            }
            Some(StatusLine::Failed(code, msg)) => Err(match code {
                127 => ContainerError::CommandNotFound(msg),
                126 => ContainerError::CommandNotExecutable(msg),
                _ => ContainerError::StartFailed(msg),
            }),
            _ => {
                let detail = ContainerState::read(&dir.join(STATE_FILE))
                    .ok()
                    .and_then(|s| s.error)
                    .unwrap_or_else(|| "the shim exited without reporting".into());
                Err(ContainerError::StartFailed(detail))
            }
        }
    }

    /// Starts the shim as a fresh `gantry __shim` process: the only safe way from a
    /// multi-threaded starter (an agent), where forking without exec is not.
    fn exec_shim(&self, dir: &Path, attach: bool, status_w: OwnedFd) -> Result<(), ContainerError> {
        let mut cmd = Command::new(&self.shim_program);
        cmd.arg(SHIM_ARG).arg(dir);
        if attach {
            cmd.arg("--attach");
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        cmd.stdin(Stdio::null());
        let raw = status_w.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which
        // are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if raw == STATUS_FD {
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            ContainerError::Other(format!(
                "cannot start the shim {}: {e}",
                self.shim_program.display()
            ))
        })?;
        drop(status_w);
        // The first shim process forks the real shim and exits at once.
        let _ = child.wait();
        Ok(())
    }

    /// Lists every container under the root, oldest first.
    pub fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError> {
        let dir = self.root.containers_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ContainerError::io(dir)(e)),
        };
        let mut out: Vec<ContainerInfo> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| load(&e.path()))
            .collect();
        out.sort_by_key(|c| c.spec.created_ms);
        Ok(out)
    }

    /// Finds a container by full id, name, or unique id prefix.
    pub fn inspect(&self, reference: &str) -> Result<ContainerInfo, ContainerError> {
        let not_found = || ContainerError::NotFound(reference.to_string());
        if reference.is_empty() || reference.contains('/') || reference.starts_with('.') {
            return Err(not_found());
        }
        if let Some(c) = load(&self.root.container_dir(reference)) {
            return Ok(c);
        }
        if let Ok(id) = std::fs::read_link(self.names_dir().join(reference)) {
            if let Some(c) = load(&self.root.container_dir(&id.to_string_lossy())) {
                return Ok(c);
            }
        }
        let mut matches = self
            .list()?
            .into_iter()
            .filter(|c| c.spec.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(ContainerError::Ambiguous(reference.to_string())),
            _ => Err(not_found()),
        }
    }

    /// Stops a running container: SIGTERM to its process, then SIGKILL after `grace`.
    /// Returns the container as it is afterwards; a stopped container is left as it is.
    pub fn stop(&self, reference: &str, grace: Duration) -> Result<ContainerInfo, ContainerError> {
        let info = self.inspect(reference)?;
        if !info.supervised {
            return Ok(info);
        }
        if let Some(state) = info.state.as_ref().filter(|s| s.status == Status::Running) {
            if !grace.is_zero() {
                signal_container(state, Signal::SIGTERM);
                if wait_unsupervised(&info.dir, Some(grace)) {
                    return self.inspect(&info.spec.id);
                }
            }
            signal_container(state, Signal::SIGKILL);
            if let Some(cg) = &state.cgroup {
                let _ = cg.kill_all();
            }
        }
        if !wait_unsupervised(&info.dir, Some(Duration::from_secs(10))) {
            return Err(ContainerError::Other(format!(
                "container {} did not stop within 10s of SIGKILL",
                info.spec.id
            )));
        }
        self.inspect(&info.spec.id)
    }

    /// Removes a stopped container (or, with `force`, kills it first): its directory, its
    /// name, and its cgroup if a dead shim left one.
    pub fn remove(&self, reference: &str, force: bool) -> Result<(), ContainerError> {
        let mut info = self.inspect(reference)?;
        if info.supervised {
            if !force {
                return Err(ContainerError::Running(info.spec.id.clone()));
            }
            info = self.stop(&info.spec.id, Duration::ZERO)?;
        }
        if let Some(cg) = info.state.as_ref().and_then(|s| s.cgroup.as_ref()) {
            let _ = cg.kill_all();
            let _ = cg.destroy();
        }
        std::fs::remove_dir_all(&info.dir).map_err(ContainerError::io(&info.dir))?;
        self.release_name(&info.spec.name, &info.spec.id);
        tracing::debug!(container = %info.spec.id, "removed");
        Ok(())
    }

    /// Waits until the container is no longer supervised (its process exited and the shim
    /// recorded it), up to `timeout`; returns it as it is then.
    pub fn wait(
        &self,
        reference: &str,
        timeout: Option<Duration>,
    ) -> Result<ContainerInfo, ContainerError> {
        let info = self.inspect(reference)?;
        if !wait_unsupervised(&info.dir, timeout) {
            return Err(ContainerError::Other(format!(
                "container {} still runs",
                info.spec.id
            )));
        }
        // An auto-removed container is gone once its shim is; report what we last saw.
        Ok(self.inspect(&info.spec.id).unwrap_or(ContainerInfo {
            supervised: false,
            ..info
        }))
    }

    fn names_dir(&self) -> PathBuf {
        self.root.path().join("names")
    }

    fn reserve_name(&self, name: &str, id: &str) -> Result<(), ContainerError> {
        let names = self.names_dir();
        std::fs::create_dir_all(&names).map_err(ContainerError::io(&names))?;
        let link = names.join(name);
        for _ in 0..2 {
            match std::os::unix::fs::symlink(id, &link) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A name whose container is gone (auto-removed, or removed by hand) is free.
                    let holder =
                        std::fs::read_link(&link).map(|p| p.to_string_lossy().into_owned());
                    match holder {
                        Ok(h) if self.root.container_dir(&h).exists() => {
                            return Err(ContainerError::NameInUse(name.to_string()))
                        }
                        _ => {
                            let _ = std::fs::remove_file(&link);
                        }
                    }
                }
                Err(e) => return Err(ContainerError::io(link)(e)),
            }
        }
        Err(ContainerError::NameInUse(name.to_string()))
    }

    fn release_name(&self, name: &str, id: &str) {
        let link = self.names_dir().join(name);
        if std::fs::read_link(&link).is_ok_and(|p| p.as_os_str() == id) {
            let _ = std::fs::remove_file(link);
        }
    }
}

impl StartedContainer {
    /// Waits for the container's process to exit; returns its exit code and reason.
    pub fn wait(mut self) -> Result<(i32, Option<String>), ContainerError> {
        let line = self.next_line(None::<(&SignalFd, fn(i32))>)?;
        self.finish(line)
    }

    /// Like [`wait`](Self::wait), forwarding SIGINT, SIGTERM and SIGHUP sent to this process to
    /// the container's. Must be called from a single-threaded process (it changes the
    /// process's signal mask).
    pub fn wait_forwarding_signals(mut self) -> Result<(i32, Option<String>), ContainerError> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            mask.add(s);
        }
        let blocked =
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).is_ok();
        let sigfd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
        let ticks = proc_start_ticks(self.pid);
        let line = self.next_line(sigfd.as_ref().map(|fd| {
            let pid = self.pid;
            (fd, move |sig: i32| {
                if let (Ok(sig), true) = (Signal::try_from(sig), proc_start_ticks(pid) == ticks) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            })
        }));
        if blocked {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
        }
        self.finish(line?)
    }

    fn finish(&self, line: Option<StatusLine>) -> Result<(i32, Option<String>), ContainerError> {
        match line {
            Some(StatusLine::Exited(code, reason)) => Ok((code, reason)),
            _ => match ContainerState::read(&self.dir.join(STATE_FILE)) {
                Ok(ContainerState {
                    exit_code: Some(code),
                    reason,
                    ..
                }) => Ok((code, reason)),
                _ => Err(ContainerError::Other(format!(
                    "the shim of container {} ended without recording an exit",
                    self.spec.id
                ))),
            },
        }
    }

    /// Reads the next status line; while waiting, signals arriving on `signals` are handed
    /// to its callback.
    fn next_line<F: FnMut(i32)>(
        &mut self,
        mut signals: Option<(&SignalFd, F)>,
    ) -> Result<Option<StatusLine>, ContainerError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                return Ok(StatusLine::parse(
                    String::from_utf8_lossy(&line[..pos]).as_ref(),
                ));
            }
            if let Some((sigfd, forward)) = signals.as_mut() {
                let mut fds = [
                    PollFd::new(self.status.as_fd(), PollFlags::POLLIN),
                    PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                ];
                match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        return Err(ContainerError::Other(format!(
                            "cannot wait for the shim: {e}"
                        )))
                    }
                }
                while let Ok(Some(info)) = sigfd.read_signal() {
                    forward(info.ssi_signo as i32);
                }
                if fds[0].revents().is_none_or(|r| r.is_empty()) {
                    continue;
                }
            }
            let mut buf = [0u8; 512];
            match self.status.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ContainerError::Other(format!(
                        "cannot read the shim's status: {e}"
                    )))
                }
            }
        }
    }
}

/// Whether this process runs a single thread, so that it may fork without exec.
fn is_single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim() == "1"))
        })
        .unwrap_or(false)
}

/// Starts the shim by forking this (single-threaded) process, saving the exec of a fresh
/// `gantry`: the CLI's `gantry run` path, where start-up latency is the product.
fn fork_shim(dir: &Path, attach: bool, status_w: OwnedFd) -> Result<(), ContainerError> {
    use std::io::Write;
    // Buffered output would otherwise be written twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: the caller checked that this process has one thread; the child runs only the
    // shim (which is written for a single-threaded process) and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let null = std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null");
            if let Ok(null) = &null {
                let _ = nix::unistd::dup2_stdin(null);
                if !attach {
                    let _ = nix::unistd::dup2_stdout(null);
                    let _ = nix::unistd::dup2_stderr(null);
                }
            }
            drop(null);
            let code = crate::shim::run_forked(dir, attach, File::from(status_w));
            // SAFETY: _exit skips the starter's destructors and buffers, which this copy of
            // its address space must not run.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(status_w);
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
        Err(e) => Err(ContainerError::Other(format!("cannot fork the shim: {e}"))),
    }
}

/// Reads a container's directory; `None` when it is not (or no longer) a container.
fn load(dir: &Path) -> Option<ContainerInfo> {
    let spec: ContainerSpec =
        serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).ok()?).ok()?;
    let state = ContainerState::read(&dir.join(STATE_FILE)).ok();
    Some(ContainerInfo {
        spec,
        state,
        supervised: shim_alive(dir),
        dir: dir.to_path_buf(),
    })
}

/// Whether a live shim holds the container's lock.
fn shim_alive(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on an fd we own; the lock (if we get it) is released when `f` closes.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc < 0 && nix::errno::Errno::last() == nix::errno::Errno::EWOULDBLOCK
}

/// Waits until no shim holds the container's lock; false when `timeout` passed first.
fn wait_unsupervised(dir: &Path, timeout: Option<Duration>) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if !shim_alive(dir) {
            return true;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Signals the container's init, unless its pid now names another process.
fn signal_container(state: &ContainerState, sig: Signal) {
    if state.pid > 0 && proc_start_ticks(state.pid) == Some(state.pid_start_ticks) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(state.pid), sig);
    }
}

fn random_id() -> Result<String, ContainerError> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(ContainerError::io("/dev/urandom"))?;
    Ok(hex::encode(bytes))
}

fn image_basename(reference: &str) -> String {
    let no_tag = reference
        .rsplit_once(':')
        .map(|(n, _)| n)
        .unwrap_or(reference);
    let base = no_tag.rsplit('/').next().unwrap_or(no_tag);
    let clean: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    if clean.is_empty() || reference.starts_with("sha256:") {
        "container".into()
    } else {
        clean
    }
}

fn validate_name(name: &str) -> Result<(), ContainerError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::Invalid {
            field: "name",
            reason: format!("{name:?} must be 1-128 characters of [a-zA-Z0-9_.-], starting with a letter or digit"),
        })
    }
}

fn validate_hostname(h: &str) -> Result<(), ContainerError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ContainerError::Invalid {
            field: "hostname",
            reason: format!("{h:?} must be 1-63 characters of letters, digits, '-' and '.'"),
        })
    }
}

/// The namespace to join and every mount source must exist now (the init could only report
/// them missing as an opaque start failure), and destinations must be clean absolute paths.
fn validate_network(network: &Network, mounts: &[BindMount]) -> Result<(), ContainerError> {
    if let Network::Join { path } = network {
        if !path.is_absolute() || !path.exists() {
            return Err(ContainerError::Invalid {
                field: "network",
                reason: format!(
                    "network namespace {} does not exist (an absolute path is needed)",
                    path.display()
                ),
            });
        }
    }
    for m in mounts {
        if !m.source.is_absolute() || !m.source.exists() {
            return Err(ContainerError::Invalid {
                field: "mounts",
                reason: format!(
                    "bind mount source {} does not exist (an absolute path is needed)",
                    m.source.display()
                ),
            });
        }
        let clean = m.destination.is_absolute()
            && m.destination.parent().is_some()
            && m.destination.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !clean {
            return Err(ContainerError::Invalid {
                field: "mounts",
                reason: format!(
                    "bind mount destination {} must be an absolute path without '..' and not /",
                    m.destination.display()
                ),
            });
        }
    }
    Ok(())
}

fn validate_resources(r: &Resources) -> Result<(), ContainerError> {
    if let Some(m) = r.memory_limit {
        if m < MIN_MEMORY_LIMIT {
            return Err(ContainerError::Invalid {
                field: "memory",
                reason: format!("{m} bytes is below the minimum of 4Mi"),
            });
        }
    }
    if let Some(q) = r.cpu_quota {
        if q.quota_us < 1000 || q.period_us < 1000 || q.period_us > 1_000_000 {
            return Err(ContainerError::Invalid {
                field: "cpus",
                reason: format!(
                    "quota {}us per {}us period is out of range (at least 0.01 CPU)",
                    q.quota_us, q.period_us
                ),
            });
        }
    }
    if r.pids_limit == Some(0) {
        return Err(ContainerError::Invalid {
            field: "pids",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_docker_like() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn hostnames_are_dns_like() {
        assert!(validate_hostname("web-1").is_ok());
        assert!(validate_hostname("bad host").is_err());
        assert!(validate_hostname(&"h".repeat(64)).is_err());
    }

    #[test]
    fn zero_limits_are_rejected_naming_the_field() {
        let err = validate_resources(&Resources {
            memory_limit: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = validate_resources(&Resources {
            pids_limit: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("pids"), "{err}");
    }

    #[test]
    fn network_options_are_checked_before_anything_is_written() {
        let missing = Network::Join {
            path: PathBuf::from("/nonexistent/netns/x"),
        };
        let err = validate_network(&missing, &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns/x"), "{err}");
        let mount = |src: &str, dst: &str| BindMount {
            source: PathBuf::from(src),
            destination: PathBuf::from(dst),
        };
        assert!(validate_network(&Network::Private, &[mount("/etc/hosts", "/etc/hosts")]).is_ok());
        for bad in [
            mount("/etc/hosts", "etc/hosts"),
            mount("/etc/hosts", "/etc/../hosts"),
            mount("/etc/hosts", "/"),
            mount("/nonexistent/file", "/etc/hosts"),
        ] {
            let err = validate_network(&Network::Private, &[bad]).unwrap_err();
            assert!(err.to_string().contains("mounts"), "{err}");
        }
    }

    #[test]
    fn generated_names_come_from_the_image() {
        assert_eq!(image_basename("gantry/sample:latest"), "sample");
        assert_eq!(image_basename("sha256:abcdef"), "container");
    }
}
