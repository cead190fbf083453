//! cgroup v1 against the real kernel of the CI machine (hybrid layout: every controller v1).
//! Each test creates its own uniquely named cgroups below this process's own cgroups and a
//! drop guard kills whatever it started and removes them, even when an assertion fails.
//! Without root or a v1 memory hierarchy the tests fail loudly rather than pass.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_runtime::cgroups::{
    detect, CgroupError, CgroupHandle, CgroupManager, CgroupVersion, CpuQuota, Resources,
    ALLOWED_DEVICES,
};

const BUSYBOX: &str = "/usr/bin/busybox";

/// The v1 manager of this machine; panics (never skips) when the environment lacks it.
fn v1_manager() -> Box<dyn CgroupManager> {
    assert!(nix::unistd::geteuid().is_root(), "cgroup tests need root");
    let manager = detect().expect("cgroup detection must succeed on the CI machine");
    assert_eq!(
        manager.version(),
        CgroupVersion::V1,
        "the CI machine is cgroup v1 (hybrid)"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is required (busybox-static)"
    );
    manager
}

fn unique(tag: &str) -> String {
    format!("gantry-cgtest-{}-{tag}", std::process::id())
}

/// Owns a created cgroup and the processes started for it; cleans both up on drop.
struct Fixture {
    handle: CgroupHandle,
    children: Vec<Child>,
    /// Intermediate directories this test made (removed last, if empty).
    extra_dirs: Vec<PathBuf>,
}

impl Fixture {
    fn create(manager: &dyn CgroupManager, name: &str, resources: &Resources) -> Self {
        let handle = manager.create(name, resources).expect("create cgroup");
        Fixture {
            handle,
            children: Vec::new(),
            extra_dirs: Vec::new(),
        }
    }

    /// Starts `busybox sh -c script` with piped stdio, puts it in the cgroup, then releases it
    /// (the script should begin with `read go`) so everything it does happens inside.
    fn spawn_inside(&mut self, script: &str) -> usize {
        let child = Command::new(BUSYBOX)
            .args(["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn busybox");
        let pid = child.id() as i32;
        let added = self.handle.add_process(pid);
        self.children.push(child);
        added.expect("add_process");
        let idx = self.children.len() - 1;
        let stdin = self.children[idx].stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("release child");
        idx
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.handle.kill_all();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = self.handle.destroy() {
            eprintln!("cleanup: {e}");
        }
        for d in self.extra_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(dir: &Path, file: &str) -> String {
    let p = dir.join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .into()
}

#[test]
fn limits_and_device_rules_are_written_v1() {
    let manager = v1_manager();
    let resources = Resources {
        memory_limit: Some(32 << 20),
        cpu_quota: Some(CpuQuota::from_millicpus(500)),
        pids_limit: Some(10),
    };
    let fx = Fixture::create(manager.as_ref(), &unique("limits"), &resources);
    let h = &fx.handle;

    // Memory, with swap capped to the same value so the limit cannot be escaped.
    let mem = h.dir("memory").expect("memory dir");
    assert_eq!(read(mem, "memory.limit_in_bytes"), "33554432");
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(read(mem, "memory.memsw.limit_in_bytes"), "33554432");
    }
    assert_eq!(read(mem, "memory.swappiness"), "0");

    // CPU bandwidth: half a CPU.
    let cpu = h.dir("cpu").expect("cpu dir");
    assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(h.dir("pids").expect("pids dir"), "pids.max"), "10");

    // Devices: exactly the minimal set, nothing else.
    let listed: BTreeSet<String> = read(h.dir("devices").expect("devices dir"), "devices.list")
        .lines()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = ALLOWED_DEVICES.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected);

    // Every controller got its own directory, all named after the cgroup.
    for c in ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"] {
        let d = h.dir(c).unwrap_or_else(|| panic!("no {c} dir"));
        assert!(d.is_dir(), "{} missing", d.display());
        assert!(d.ends_with(unique("limits")));
    }
    assert_eq!(
        read(h.dir("freezer").expect("freezer dir"), "freezer.state"),
        "THAWED"
    );
}

#[test]
fn processes_are_added_and_listed_v1() {
    let manager = v1_manager();
    let mut fx = Fixture::create(manager.as_ref(), &unique("pids"), &Resources::default());
    let i = fx.spawn_inside("read go; exec sleep 30");
    let pid = fx.children[i].id() as i32;

    assert_eq!(fx.handle.pids().expect("pids"), vec![pid]);
    // The process is in the cgroup in every hierarchy, not just one.
    for dir in fx.handle.dirs() {
        assert_eq!(
            read(dir, "cgroup.procs"),
            pid.to_string(),
            "{}",
            dir.display()
        );
    }
    // Pages are charged as the process touches them after the move (exec of sleep).
    wait_until(
        "memory charged to the cgroup",
        Duration::from_secs(5),
        || fx.handle.memory_usage().expect("memory usage") > 0,
    );
    assert_eq!(fx.handle.oom_kills().expect("oom kills"), 0);
}

#[test]
fn memory_limit_oom_kills_are_counted_v1() {
    let manager = v1_manager();
    let resources = Resources {
        memory_limit: Some(16 << 20),
        ..Resources::default()
    };
    let mut fx = Fixture::create(manager.as_ref(), &unique("oom"), &resources);

    // `tail` of an endless file without newlines buffers without bound: 16 MiB is soon hit.
    let i = fx.spawn_inside("read go; exec tail /dev/zero");
    let status = fx.children[i].wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "expected an OOM kill, got {status:?}"
    );
    assert!(fx.handle.oom_kills().expect("oom kills") >= 1);
}

#[test]
fn pids_limit_makes_forks_fail_v1() {
    let manager = v1_manager();
    let resources = Resources {
        pids_limit: Some(3),
        ..Resources::default()
    };
    let mut fx = Fixture::create(manager.as_ref(), &unique("forks"), &resources);

    // The shell plus two sleeps reach the limit of 3 (the sleeps let go of the pipes so
    // that only the shell's own output is awaited).
    let quiet = "sleep 30 </dev/null >/dev/null 2>&1 &";
    let i = fx.spawn_inside(&format!(
        "read go; {quiet} {quiet} echo ready; read more; {quiet} echo survived"
    ));
    let child = &mut fx.children[i];
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("read ready");
    assert_eq!(&line, b"ready\n");
    let pids = fx.handle.pids().expect("pids");
    assert_eq!(
        pids.len(),
        3,
        "shell and two sleeps expected, found {pids:?}"
    );

    // One more fork is beyond pids.max: the shell reports it and gives up.
    let child = &mut fx.children[i];
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"more\n")
        .expect("write");
    let mut stderr = String::new();
    child
        .stderr
        .as_mut()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let mut stdout = String::new();
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    assert!(
        stderr.contains("fork"),
        "expected a fork failure on stderr, got {stderr:?}"
    );
    assert!(
        !stdout.contains("survived"),
        "fork beyond pids.max succeeded"
    );
    let pids = fx.handle.pids().expect("pids");
    assert!(pids.len() <= 3, "pids.max=3 exceeded: {pids:?}");
}

#[test]
fn kill_all_empties_cgroup_v1() {
    let manager = v1_manager();
    let mut fx = Fixture::create(manager.as_ref(), &unique("kill"), &Resources::default());
    let i = fx.spawn_inside("read go; sleep 30 & sleep 30 & wait");
    wait_until(
        "shell and two sleeps in the cgroup",
        Duration::from_secs(5),
        || fx.handle.pids().map(|p| p.len() == 3).unwrap_or(false),
    );

    fx.handle.kill_all().expect("kill_all");
    assert!(fx.handle.pids().expect("pids").is_empty());
    let status = fx.children[i].wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    // The freezer was thawed again.
    assert_eq!(
        read(fx.handle.dir("freezer").expect("freezer"), "freezer.state"),
        "THAWED"
    );

    // Killing an empty cgroup is a no-op.
    fx.handle.kill_all().expect("kill_all on empty cgroup");
}

#[test]
fn destroy_removes_every_dir_and_is_idempotent_v1() {
    let manager = v1_manager();
    let parent = unique("nested");
    let name = format!("{parent}/c1");
    let mut fx = Fixture::create(manager.as_ref(), &name, &Resources::default());
    let dirs: Vec<PathBuf> = fx
        .handle
        .dirs()
        .into_iter()
        .map(Path::to_path_buf)
        .collect();
    fx.extra_dirs = dirs
        .iter()
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    let i = fx.spawn_inside("read go; exec sleep 30");

    // A cgroup with a process cannot be removed: destroy reports it, naming the directory.
    let err = fx
        .handle
        .destroy()
        .expect_err("destroy of a populated cgroup");
    assert!(matches!(err, CgroupError::Remove { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");

    fx.handle.kill_all().expect("kill_all");
    fx.children[i].wait().expect("wait");
    fx.handle.destroy().expect("destroy");
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
        assert!(
            d.parent().expect("parent").is_dir(),
            "intermediate dir must stay"
        );
    }
    fx.handle.destroy().expect("second destroy is a no-op");
    fx.handle
        .kill_all()
        .expect("kill_all of a destroyed cgroup is a no-op");
}

#[test]
fn failed_write_names_file_and_value_and_removes_dirs_v1() {
    let manager = v1_manager();
    let name = unique("badcpu");
    // The kernel refuses a CFS period of 0.
    let resources = Resources {
        memory_limit: Some(64 << 20),
        cpu_quota: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 0,
        }),
        pids_limit: None,
    };
    let err = manager
        .create(&name, &resources)
        .expect_err("period 0 must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("cpu.cfs_period_us") && msg.contains("\"0\""),
        "{msg}"
    );

    // Nothing is left behind in any hierarchy: creating the same name again succeeds (a
    // remaining leaf would make it fail with AlreadyExists) and starts without limits.
    let fx = Fixture::create(manager.as_ref(), &name, &Resources::default());
    let mem = fx.handle.dir("memory").expect("memory");
    let parent = mem.parent().expect("parent");
    assert_eq!(
        read(mem, "memory.limit_in_bytes"),
        read(parent, "memory.limit_in_bytes")
    );

    // And a second create of a live cgroup is refused rather than silently reused.
    let again = manager
        .create(&name, &Resources::default())
        .expect_err("duplicate");
    assert!(
        matches!(again, CgroupError::AlreadyExists { .. }),
        "{again}"
    );
}

#[test]
fn handle_reopened_from_json_controls_the_same_cgroup_v1() {
    let manager = v1_manager();
    let mut fx = Fixture::create(manager.as_ref(), &unique("json"), &Resources::default());
    let i = fx.spawn_inside("read go; exec sleep 30");
    let pid = fx.children[i].id() as i32;

    // A later process (CLI call, restarted agent) only has the state file.
    let json = serde_json::to_string(&fx.handle).expect("serialise");
    let reopened: CgroupHandle = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(reopened, fx.handle);
    assert_eq!(reopened.version(), CgroupVersion::V1);
    assert_eq!(reopened.pids().expect("pids"), vec![pid]);
    reopened.kill_all().expect("kill_all");
    fx.children[i].wait().expect("wait");
    reopened.destroy().expect("destroy");
    assert!(fx.handle.dirs().iter().all(|d| !d.exists()));
}
