//! Real-kernel tests of a container's filesystem, identity and network setup: the functions of
//! `container::{net, rootfs, security}` are run exactly as the container init runs them, then
//! busybox commands inside the container report what a workload would see.
//!
//! How a container is started from a test. Namespaces must be created by a single-threaded
//! process, and the libtest harness is multi-threaded (even with `--test-threads=1` it runs
//! each test on a spawned thread). So each test re-executes this test binary with
//! `GANTRY_ROOTFS_TEST_CHILD=1` and the case in environment variables, and the re-executed
//! binary diverts itself in an `.init_array` constructor ([`child_entry`]), which the loader
//! runs before `main`, before libtest exists and while the process has exactly one thread.
//! There it mirrors the shim: `unshare(CLONE_NEWPID)`, fork; the child (pid 1 of the new pid
//! namespace) unshares mount, uts, ipc and net namespaces, brings up `lo`, enters the rootfs,
//! sets the hostname, resolves the user, drops privileges and `execve`s `busybox sh -c SCRIPT`.
//! The test reads the script's output from files and asserts on it.
//!
//! Cleanup: every mount lives in the child's mount namespace and dies with its last process;
//! each test asserts afterwards that no mount under its temp directory shows in the host's
//! `/proc/self/mountinfo`. The image layers, upper and work dirs live in a `TempDir` removed on
//! drop. A container that outlives its deadline is killed through the intermediate process
//! (the container's pid 1 has `PR_SET_PDEATHSIG` = `SIGKILL`, and killing a pid namespace's
//! init kills the namespace).
//!
//! These tests need root, overlayfs and namespaces, and `/usr/bin/busybox` (busybox-static);
//! they fail loudly, never skip, when any is missing.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_runtime::container::spec::BindMount;
use gantry_runtime::container::{net, rootfs, security};

const CHILD_ENV: &str = "GANTRY_ROOTFS_TEST_CHILD";
const BUSYBOX: &str = "/usr/bin/busybox";
const HOSTNAME: &str = "gantry-test";
const DEADLINE: Duration = Duration::from_secs(60);

/// Docker's default capability set without `CAP_MKNOD`, as `/proc/<pid>/status` prints it.
const DEFAULT_CAPS_HEX: &str = "00000000a00425fb";

// ---------------------------------------------------------------------------------------------
// The container side: runs in the re-executed test binary, before main.

#[used]
#[link_section = ".init_array"]
static CHILD_ENTRY: extern "C" fn() = child_entry;

/// Diverts a re-executed test binary into the container path; a no-op in the harness.
extern "C" fn child_entry() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let code = match run_shim() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("container setup failed: {message}");
            125
        }
    };
    std::process::exit(code);
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("{name}: {e}"))
}

/// The shim's part: a new pid namespace, a child that is its pid 1, its exit status passed on.
fn run_shim() -> Result<i32, String> {
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::ForkResult;

    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    // SAFETY: this runs from an .init_array constructor, before main: the process has a single
    // thread, so the child may allocate and do anything.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let message = match container_init() {
                Ok(never) => match never {},
                Err(message) => message,
            };
            eprintln!("container setup failed: {message}");
            std::process::exit(125);
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        },
    }
}

/// The container init's part, in the order the real init calls the functions under test.
fn container_init() -> Result<std::convert::Infallible, String> {
    use nix::sched::{unshare, CloneFlags};

    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers; it ties this process to the shim so a
    // killed test leaves nothing behind.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // As the real init: a container joining a network namespace gets none of its own.
    let netns = env("GANTRY_TEST_NETNS")?;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if netns.is_empty() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;

    let lower: Vec<PathBuf> = env("GANTRY_TEST_LOWER")?
        .lines()
        .map(PathBuf::from)
        .collect();
    let upper = PathBuf::from(env("GANTRY_TEST_UPPER")?);
    let work = PathBuf::from(env("GANTRY_TEST_WORK")?);
    let target = PathBuf::from(env("GANTRY_TEST_TARGET")?);
    let user = env("GANTRY_TEST_USER")?;
    let script = env("GANTRY_TEST_SCRIPT")?;
    let readonly = env("GANTRY_TEST_READONLY")? == "1";

    let mounts: Vec<BindMount> = env("GANTRY_TEST_MOUNTS")?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(src, dst)| BindMount {
            source: PathBuf::from(src),
            destination: PathBuf::from(dst),
        })
        .collect();

    if netns.is_empty() {
        net::bring_up_loopback().map_err(|e| e.to_string())?;
    } else {
        net::join_netns(Path::new(&netns)).map_err(|e| e.to_string())?;
    }
    rootfs::enter_rootfs(&rootfs::RootfsSpec {
        lower_dirs: &lower,
        upper_dir: &upper,
        work_dir: &work,
        target: &target,
        readonly_rootfs: readonly,
        mounts: &mounts,
    })
    .map_err(|e| e.to_string())?;
    nix::unistd::sethostname(HOSTNAME).map_err(|e| format!("sethostname: {e}"))?;
    let identity = security::resolve_user(&user).map_err(|e| e.to_string())?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let added: Vec<String> = env("GANTRY_TEST_CAP_ADD")?
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let caps = security::Capabilities::container_default()
        .with_added(&added)
        .map_err(|e| e.to_string())?;
    security::apply(&identity, caps).map_err(|e| e.to_string())?;
    // Re-arm: changing the uid cleared the parent-death signal.
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };

    let cstr = |s: &str| CString::new(s).map_err(|e| format!("{s:?}: {e}"));
    let argv = [cstr("sh")?, cstr("-c")?, cstr(&script)?];
    let home = identity.home.unwrap_or_else(|| "/".to_owned());
    let envp = [cstr("PATH=/bin")?, cstr(&format!("HOME={home}"))?];
    let err = nix::unistd::execve(&cstr("/bin/sh")?, &argv, &envp).unwrap_err();
    Err(format!("execve /bin/sh: {err}"))
}

// ---------------------------------------------------------------------------------------------
// The test side.

/// How to run one container.
struct Case<'a> {
    /// A `sh -c` script; `@HOST_DIR@` is replaced by the host path of the test's temp dir.
    script: &'a str,
    user: &'a str,
    readonly: bool,
    /// Capabilities added to the default set, comma-separated.
    cap_add: &'a str,
    /// Changes to the base layer before the container starts.
    tweak_base: fn(&Path),
    /// A network namespace file to join instead of a private namespace.
    netns: Option<PathBuf>,
    /// Read-only bind mounts: (content of a host file written for the test, destination).
    mounts: Vec<(&'a str, &'a str)>,
}

impl<'a> Case<'a> {
    fn new(script: &'a str) -> Self {
        Case {
            script,
            user: "",
            readonly: false,
            cap_add: "",
            tweak_base: |_| {},
            netns: None,
            mounts: Vec::new(),
        }
    }
}

/// What a container left behind; owns the temp directory until dropped.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    dir: tempfile::TempDir,
}

impl Outcome {
    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    /// The value of the first `key=value` line the script printed.
    fn value(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= line in container output: {self:?}"))
    }

    fn assert_success(&self) {
        assert_eq!(self.code, 0, "container failed: {self:?}");
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (namespaces, overlayfs, mounts)"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install busybox-static"
    );
}

const APPLETS: [&str; 23] = [
    "sh", "ls", "cat", "echo", "mknod", "mount", "id", "hostname", "grep", "wc", "touch", "head",
    "mkdir", "cut", "tail", "tr", "sort", "stat", "readlink", "sed", "test", "[", "rm",
];

/// Two image layers: a base with busybox, users and files, and a top layer that overrides one
/// file and adds another.
fn build_image(dir: &Path, tweak_base: fn(&Path)) -> Vec<PathBuf> {
    let base = dir.join("layer-base");
    let top = dir.join("layer-top");
    for d in ["bin", "etc", "dev", "mnt", "tmp"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    fs::write(
        base.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        base.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    // Hidden by the container's /dev tmpfs.
    fs::write(base.join("dev/image-junk"), "junk").unwrap();
    fs::write(base.join("base-only"), "from-base\n").unwrap();
    fs::write(base.join("shadowed"), "from-base\n").unwrap();
    tweak_base(&base);

    fs::create_dir_all(&top).unwrap();
    fs::write(top.join("shadowed"), "from-top\n").unwrap();
    fs::write(top.join("top-only"), "from-top\n").unwrap();
    vec![base, top]
}

fn run(case: Case) -> Outcome {
    require_environment();
    let dir = tempfile::Builder::new()
        .prefix("gantry-rootfs-")
        .tempdir()
        .unwrap();
    let lower = build_image(dir.path(), case.tweak_base);
    let (upper, work, target) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("rootfs"),
    );
    for d in [&upper, &work, &target] {
        fs::create_dir(d).unwrap();
    }
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let lower_env: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let mounts_env: Vec<String> = case
        .mounts
        .iter()
        .enumerate()
        .map(|(i, (content, dest))| {
            let host = dir.path().join(format!("mount-{i}"));
            fs::write(&host, content).unwrap();
            format!("{}\t{dest}", host.display())
        })
        .collect();

    let mut child = Command::new(std::env::current_exe().unwrap())
        // Never reached when the constructor works; if it does not, libtest runs no test and
        // the assertions on the output fail loudly.
        .args(["--exact", "constructor-did-not-divert"])
        .env(CHILD_ENV, "1")
        .env("GANTRY_TEST_LOWER", lower_env.join("\n"))
        .env("GANTRY_TEST_UPPER", &upper)
        .env("GANTRY_TEST_WORK", &work)
        .env("GANTRY_TEST_TARGET", &target)
        .env("GANTRY_TEST_USER", case.user)
        .env("GANTRY_TEST_CAP_ADD", case.cap_add)
        .env(
            "GANTRY_TEST_NETNS",
            case.netns.as_deref().unwrap_or(Path::new("")),
        )
        .env("GANTRY_TEST_MOUNTS", mounts_env.join("\n"))
        .env(
            "GANTRY_TEST_SCRIPT",
            case.script
                .replace("@HOST_DIR@", &dir.path().display().to_string()),
        )
        .env(
            "GANTRY_TEST_READONLY",
            if case.readonly { "1" } else { "0" },
        )
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            // Kills the shim; the container's pid 1 follows through PR_SET_PDEATHSIG.
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("container did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    let outcome = Outcome {
        code: status.code().unwrap_or(-1),
        stdout: fs::read_to_string(&stdout_path).unwrap(),
        stderr: fs::read_to_string(&stderr_path).unwrap(),
        dir,
    };
    assert_no_host_mount_under(outcome.dir.path());
    outcome
}

/// The container's mounts must die with its mount namespace and never reach the host's.
fn assert_no_host_mount_under(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    let leaked: Vec<_> = mountinfo.lines().filter(|l| l.contains(dir)).collect();
    assert!(
        leaked.is_empty(),
        "mounts leaked into the host: {leaked:#?}"
    );
}

fn status_field<'a>(outcome: &'a Outcome, field: &str) -> &'a str {
    let prefix = format!("{field}:");
    outcome
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status output: {outcome:?}"))
}

#[test]
fn rootfs_is_the_overlay_of_the_image_layers() {
    let out = run(Case::new(
        "echo base=$(cat /base-only); echo shadowed=$(cat /shadowed); \
         echo top=$(cat /top-only); echo written > /new-file; rm /top-only; \
         echo root_fs=$(grep ' / / ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1)",
    ));
    out.assert_success();
    assert_eq!(out.value("base"), "from-base");
    assert_eq!(out.value("shadowed"), "from-top", "the top layer must win");
    assert_eq!(out.value("top"), "from-top");
    assert_eq!(out.value("root_fs"), "overlay");

    // Writes land in the upper dir; the layers stay untouched.
    assert_eq!(
        fs::read_to_string(out.upper().join("new-file")).unwrap(),
        "written\n"
    );
    let whiteout = fs::metadata(out.upper().join("top-only")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &whiteout.file_type()
    ));
    assert!(out.dir.path().join("layer-top/top-only").exists());
}

#[test]
fn readonly_rootfs_refuses_writes_but_dev_stays_writable() {
    let mut case = Case::new(
        "touch /x 2>&1; echo touch=$?; echo ok > /dev/shm/y && echo shm=$(cat /dev/shm/y); \
         echo > /dev/null && echo null=ok",
    );
    case.readonly = true;
    let out = run(case);
    out.assert_success();
    assert_ne!(out.value("touch"), "0", "{out:?}");
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert_eq!(out.value("shm"), "ok");
    assert_eq!(out.value("null"), "ok");
    assert!(!out.upper().join("x").exists());
}

#[test]
fn proc_shows_only_the_container_processes() {
    let out = run(Case::new(
        // A builtin loop in the shell itself: a `$(...)` would fork a second process.
        "for d in /proc/[0-9]*; do echo pid=${d#/proc/}; done; echo hostname=$(hostname)",
    ));
    out.assert_success();
    let pids: Vec<_> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pid="))
        .collect();
    assert_eq!(pids, ["1"], "only the shell, as pid 1: {out:?}");
    assert_eq!(out.value("hostname"), HOSTNAME);
}

#[test]
fn proc_kcore_and_other_leaky_proc_and_sys_paths_are_masked() {
    // The masks must hide something real: timer_list lists the host's timers.
    assert!(!fs::read("/proc/timer_list").unwrap().is_empty());
    let out = run(Case::new(
        "if [ -e /proc/kcore ]; then echo kcore=$(wc -c < /proc/kcore); \
         else echo kcore=absent; fi; \
         echo keys=$(wc -c < /proc/keys); echo timer_list=$(wc -c < /proc/timer_list); \
         echo acpi=$(ls -A /proc/acpi | wc -l); touch /proc/acpi/x 2>&1; echo acpi_touch=$?; \
         echo firmware=$(ls -A /sys/firmware | wc -l)",
    ));
    out.assert_success();
    // This kernel has no /proc/kcore at all (CONFIG_PROC_KCORE=n); where it exists it must
    // read empty.
    let kcore = out.value("kcore");
    let host_has_kcore = Path::new("/proc/kcore").exists();
    assert_eq!(
        kcore,
        if host_has_kcore { "0" } else { "absent" },
        "{out:?}"
    );
    assert_eq!(out.value("keys"), "0");
    assert_eq!(out.value("timer_list"), "0");
    assert_eq!(out.value("acpi"), "0");
    assert_ne!(out.value("acpi_touch"), "0");
    if fs::read_dir("/sys/firmware").is_ok_and(|mut d| d.next().is_some()) {
        assert_eq!(
            out.value("firmware"),
            "0",
            "/sys/firmware must be masked too"
        );
    }
}

#[test]
fn proc_sys_and_sysrq_trigger_are_read_only() {
    let out = run(Case::new(
        "echo x > /proc/sys/kernel/domainname 2>&1; echo sys_write=$?; \
         echo h > /proc/sysrq-trigger 2>&1; echo sysrq_write=$?; \
         echo sys_mount=$(grep ' /proc/sys ' /proc/self/mountinfo | cut -d' ' -f6); \
         echo read=$(cat /proc/sys/kernel/ostype)",
    ));
    out.assert_success();
    assert_ne!(out.value("sys_write"), "0");
    assert_ne!(out.value("sysrq_write"), "0");
    // The shell reports a failed redirection on its own stderr.
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(
        out.value("sys_mount").split(',').any(|o| o == "ro"),
        "{out:?}"
    );
    assert_eq!(out.value("read"), "Linux", "/proc/sys stays readable");
}

#[test]
fn sys_is_read_only() {
    let out = run(Case::new(
        "touch /sys/x 2>&1; echo touch=$?; \
         echo sys_mount=$(grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f6)",
    ));
    out.assert_success();
    assert_ne!(out.value("touch"), "0");
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert!(
        out.value("sys_mount").split(',').any(|o| o == "ro"),
        "{out:?}"
    );
}

#[test]
fn dev_holds_exactly_the_minimal_set() {
    let out = run(Case::new(
        "echo dev=$(ls -A /dev | sort | tr '\\n' ' '); echo pts=$(ls -A /dev/pts); \
         echo ptmx=$(readlink /dev/ptmx); echo fd=$(readlink /dev/fd); \
         echo zero=$(head -c 4 /dev/zero | wc -c); echo hi > /dev/null && echo null=ok; \
         echo mqueue=$(grep ' /dev/mqueue ' /proc/self/mountinfo \
           | sed 's/.* - //' | cut -d' ' -f1)",
    ));
    out.assert_success();
    assert_eq!(
        out.value("dev").trim(),
        "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert_eq!(out.value("pts"), "ptmx", "a private devpts instance");
    assert_eq!(out.value("ptmx"), "pts/ptmx");
    assert_eq!(out.value("fd"), "/proc/self/fd");
    assert_eq!(out.value("zero"), "4");
    assert_eq!(out.value("null"), "ok");
    assert_eq!(out.value("mqueue"), "mqueue");
}

#[test]
fn container_cannot_mknod_without_cap_mknod() {
    let out = run(Case::new(
        "mknod /x c 1 1 2>&1; echo root=$?; mknod /dev/shm/x c 1 1 2>&1; echo shm=$?",
    ));
    out.assert_success();
    assert_ne!(out.value("root"), "0");
    assert_ne!(out.value("shm"), "0");
    assert!(out.stdout.contains("Operation not permitted"), "{out:?}");
    assert!(!out.upper().join("x").exists());
}

#[test]
fn container_with_cap_mknod_added_can_mknod() {
    let mut case = Case::new("mknod /x c 1 3 2>&1; echo mknod=$?");
    case.cap_add = "mknod";
    let out = run(case);
    out.assert_success();
    assert_eq!(out.value("mknod"), "0", "{out:?}");
    let node = fs::metadata(out.upper().join("x")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &node.file_type()
    ));
}

#[test]
fn capabilities_the_runtime_does_not_hold_are_left_out() {
    // This host's runtime lacks some capabilities (CAP_SYS_RESOURCE here): "ALL" must start
    // the container with what the runtime holds instead of failing.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let held = status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .unwrap()
        .trim()
        .to_owned();
    let mut case = Case::new("grep -E '^Cap' /proc/self/status");
    case.cap_add = "ALL";
    let out = run(case);
    out.assert_success();
    assert_eq!(status_field(&out, "CapEff"), held);
    assert_eq!(status_field(&out, "CapBnd"), held);
}

#[test]
fn container_cannot_mount_without_cap_sys_admin() {
    let out = run(Case::new(
        "mount -t tmpfs none /mnt 2>&1; echo tmpfs=$?; mount -t proc proc /mnt 2>&1; echo proc=$?",
    ));
    out.assert_success();
    assert_ne!(out.value("tmpfs"), "0");
    assert_ne!(out.value("proc"), "0");
    // busybox mount reports EPERM as "permission denied (are you root?)".
    assert!(out.stdout.contains("permission denied"), "{out:?}");
}

#[test]
fn host_devices_are_not_reachable_by_path() {
    let host_devices: Vec<&str> = [
        "vda", "kmsg", "mem", "loop0", "kvm", "console", "sda", "nvme0n1",
    ]
    .into_iter()
    .filter(|d| Path::new("/dev").join(d).exists())
    .collect();
    assert!(!host_devices.is_empty(), "no host device to probe for");
    let script: String = host_devices
        .iter()
        .map(|d| format!("cat /dev/{d} > /dev/null 2>&1; echo {d}=$?; "))
        .collect();
    let out = run(Case::new(&script));
    out.assert_success();
    for device in host_devices {
        assert_ne!(
            out.value(device),
            "0",
            "/dev/{device} was readable: {out:?}"
        );
    }
}

#[test]
fn old_root_is_not_reachable() {
    let out = run(Case::new(
        "echo root=$(ls -A / | sort | tr '\\n' ' '); \
         [ -e @HOST_DIR@/layer-base ]; echo host_dir=$?; \
         echo mounts=$(cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\\n' ' ')",
    ));
    out.assert_success();
    let root: Vec<&str> = out.value("root").split_whitespace().collect();
    assert!(!root.contains(&".oldroot"), "{out:?}");
    assert_eq!(
        root,
        [
            "base-only",
            "bin",
            "dev",
            "etc",
            "mnt",
            "proc",
            "shadowed",
            "sys",
            "tmp",
            "top-only"
        ]
    );
    assert_ne!(
        out.value("host_dir"),
        "0",
        "a host path resolved inside the container"
    );
    for mount in out.value("mounts").split_whitespace() {
        assert!(
            mount == "/"
                || ["/proc", "/dev", "/sys"]
                    .iter()
                    .any(|p| mount.starts_with(p)),
            "unexpected mount {mount} in the container: {out:?}"
        );
    }
}

#[test]
fn root_gets_the_default_capabilities_and_no_new_privs() {
    let out = run(Case::new(
        "grep -E '^(Cap|NoNewPrivs|Uid)' /proc/self/status; id -u",
    ));
    out.assert_success();
    assert_eq!(status_field(&out, "CapEff"), DEFAULT_CAPS_HEX);
    assert_eq!(status_field(&out, "CapPrm"), DEFAULT_CAPS_HEX);
    assert_eq!(status_field(&out, "CapBnd"), DEFAULT_CAPS_HEX);
    assert_eq!(status_field(&out, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
}

#[test]
fn non_root_user_gets_ids_from_the_image_passwd_and_no_capabilities() {
    let mut case = Case::new(
        "grep -E '^(Cap|NoNewPrivs|Uid|Gid|Groups)' /proc/self/status; \
         echo name=$(id -un); echo home=$HOME",
    );
    case.user = "app";
    let out = run(case);
    out.assert_success();
    assert_eq!(
        status_field(&out, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1000"; 4]
    );
    assert_eq!(
        status_field(&out, "Gid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1000"; 4]
    );
    assert_eq!(status_field(&out, "Groups"), "2000");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&out, "CapBnd"), DEFAULT_CAPS_HEX);
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(out.value("name"), "app");
    assert_eq!(out.value("home"), "/home/app");
}

#[test]
fn unknown_user_name_fails_the_start_naming_the_user() {
    let mut case = Case::new("echo started=yes");
    case.user = "nobody-here";
    let out = run(case);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("\"nobody-here\""), "{out:?}");
    assert!(!out.stdout.contains("started"));
}

#[test]
fn loopback_is_up_and_the_only_interface() {
    let out = run(Case::new(
        "echo ifaces=$(ls /sys/class/net | tr '\\n' ' '); \
         echo flags=$(cat /sys/class/net/lo/flags); \
         echo netdev=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')",
    ));
    out.assert_success();
    assert_eq!(out.value("ifaces").trim(), "lo");
    assert_eq!(out.value("netdev").trim(), "lo");
    let flags = u32::from_str_radix(out.value("flags").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(
        flags & libc::IFF_UP as u32,
        libc::IFF_UP as u32,
        "lo is down: {out:?}"
    );
}

#[test]
fn image_symlink_at_a_mount_point_is_refused() {
    let mut case = Case::new("echo started=yes");
    // A symlink would be resolved against the host's root before the pivot.
    case.tweak_base = |base| symlink("/tmp", base.join("proc")).unwrap();
    let out = run(case);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr
            .contains("is a symlink; refusing to mount over it"),
        "{out:?}"
    );
}

/// A named network namespace (`ip netns add`) holding a veth pair, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> TestNetns {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gantry-test-rt{}-{n}", std::process::id());
        let ns = TestNetns { name };
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&[
            "-n", &ns.name, "link", "add", "gtprobe0", "type", "veth", "peer", "name", "gtprobe1",
        ]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn container_joining_a_netns_sees_its_interfaces() {
    require_environment();
    let ns = TestNetns::new();
    let mut case = Case::new(
        "echo netdev=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '); \
         echo ifaces=$(ls /sys/class/net | sort | tr '\\n' ' ')",
    );
    case.netns = Some(ns.path());
    let out = run(case);
    out.assert_success();
    // The namespace's own interfaces, not a fresh namespace with only lo.
    assert_eq!(
        out.value("netdev").trim(),
        "gtprobe0 gtprobe1 lo",
        "{out:?}"
    );
    assert_eq!(
        out.value("ifaces").trim(),
        "gtprobe0 gtprobe1 lo",
        "{out:?}"
    );
}

#[test]
fn joining_a_missing_netns_fails_the_start_naming_it() {
    let mut case = Case::new("echo started=yes");
    case.netns = Some(PathBuf::from("/run/netns/gantry-test-surely-missing"));
    let out = run(case);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("gantry-test-surely-missing"), "{out:?}");
}

#[test]
fn bind_mounted_resolv_conf_is_visible_and_read_only() {
    // The image has /etc but no resolv.conf or hosts: both are created, then covered.
    let mut case = Case::new(
        "echo resolv=$(cat /etc/resolv.conf | tr '\\n' ';'); echo hosts=$(cat /etc/hosts); \
         echo x >> /etc/resolv.conf 2>&1; echo write=$?; \
         echo mode=$(grep ' /etc/resolv.conf ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1)",
    );
    case.mounts = vec![
        (
            "nameserver 10.214.0.1\nsearch gantry.local\n",
            "/etc/resolv.conf",
        ),
        ("127.0.0.1 localhost\n", "/etc/hosts"),
    ];
    let out = run(case);
    out.assert_success();
    assert_eq!(
        out.value("resolv"),
        "nameserver 10.214.0.1;search gantry.local;"
    );
    assert_eq!(out.value("hosts"), "127.0.0.1 localhost");
    assert_ne!(
        out.value("write"),
        "0",
        "resolv.conf must not be writable: {out:?}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(out.value("mode"), "ro");
    // The host file is untouched.
    assert_eq!(
        fs::read_to_string(out.dir.path().join("mount-0")).unwrap(),
        "nameserver 10.214.0.1\nsearch gantry.local\n"
    );
}

#[test]
fn bind_mounts_work_on_a_read_only_rootfs_and_replace_an_image_symlink() {
    let mut case = Case::new("echo resolv=$(cat /etc/resolv.conf)");
    case.readonly = true;
    // Debian images often ship resolv.conf as a symlink; it must not lead the mount astray.
    case.tweak_base = |base| symlink("/tmp/elsewhere", base.join("etc/resolv.conf")).unwrap();
    case.mounts = vec![("nameserver 10.214.3.1\n", "/etc/resolv.conf")];
    let out = run(case);
    out.assert_success();
    assert_eq!(out.value("resolv"), "nameserver 10.214.3.1");
}
