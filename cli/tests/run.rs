//! `gantry run|ps|stop|rm` and `gantry container logs` against the real kernel: namespaces,
//! overlayfs, cgroups and the shim, with the project's own sample image. Run as root.

mod common;

use common::{inspect, wait_for, Root, IMAGE};
use std::time::Duration;

const WL: &str = "/app/gantry-workload";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_rm_true_exits_zero_and_leaves_no_container() {
    let root = Root::with_sample();
    let out = root.gantry(&["run", "--rm", IMAGE, "/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        root.ok(&["ps", "-a", "-q"]).trim(),
        "",
        "--rm leaves nothing listed"
    );
    let left = std::fs::read_dir(root.path().join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "--rm removes the container's directory");
}

#[test]
fn exit_code_and_output_of_the_container_reach_the_caller() {
    let root = Root::with_sample();
    let out = root.gantry(&[
        "run",
        "--rm",
        IMAGE,
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
}

#[test]
fn missing_command_exits_127_and_unexecutable_exits_126() {
    let root = Root::with_sample();
    let out = root.gantry(&["run", "--rm", IMAGE, "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/no/such/program"),
        "{}",
        stderr(&out)
    );
    let out = root.gantry(&["run", "--rm", IMAGE, "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = root.gantry(&["run", "--rm", IMAGE, "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[test]
fn unknown_image_and_bad_limits_exit_125_naming_the_problem() {
    let root = Root::with_sample();
    let out = root.gantry(&["run", "--rm", "no/such:image", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no/such:image"), "{}", stderr(&out));
    for (flag, value, word) in [
        ("--memory", "0", "memory"),
        ("--cpus", "-1", "cpus"),
        ("--pids", "0", "pids"),
        ("--memory", "lots", "memory"),
    ] {
        let out = root.gantry(&["run", "--rm", flag, value, IMAGE, "/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{flag} {value}");
        assert!(
            stderr(&out).contains(word),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        root.ok(&["ps", "-a", "-q"]).trim(),
        "",
        "nothing is created for bad input"
    );
}

#[test]
fn container_has_its_own_pid_namespace_hostname_and_env() {
    let root = Root::with_sample();
    let out = root.ok(&[
        "run",
        "--rm",
        "--hostname",
        "web-1",
        "-e",
        "MODE=prod",
        IMAGE,
        WL,
        "info",
    ]);
    assert!(out.contains("hostname=web-1"), "{out}");
    assert!(out.contains("pid=1"), "{out}");
    assert!(out.contains("MODE=prod"), "{out}");
    assert!(out.contains("PATH="), "the image's env is kept: {out}");
    let ps = root.ok(&["run", "--rm", IMAGE, "/bin/ps", "-o", "pid,comm"]);
    let procs: Vec<&str> = ps.lines().skip(1).collect();
    assert_eq!(
        procs.len(),
        1,
        "only the container's own process is visible: {ps}"
    );
}

#[test]
fn memory_limit_oom_kill_reports_137_and_oomkilled() {
    let root = Root::with_sample();
    let out = root.gantry(&[
        "run", "--name", "hog", "--memory", "16Mi", IMAGE, WL, "alloc", "64",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(stderr(&out).contains("OOMKilled"), "{}", stderr(&out));
    let info = inspect(&root, "hog");
    assert_eq!(info["state"]["reason"], "OOMKilled");
    assert_eq!(info["state"]["exit_code"], 137);
    assert!(root.ok(&["ps", "-a"]).contains("OOMKilled"));
}

#[test]
fn pids_limit_stops_fork_bombs() {
    let root = Root::with_sample();
    let out = root.gantry(&["run", "--rm", "--pids", "8", IMAGE, WL, "fork", "20"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "forks beyond the limit fail: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = root.gantry(&["run", "--rm", "--pids", "64", IMAGE, WL, "fork", "20"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "forks within the limit succeed: {}",
        stderr(&out)
    );
}

#[test]
fn cpu_and_memory_limits_are_written_to_the_containers_cgroup() {
    let root = Root::with_sample();
    let id = root.ok(&[
        "run", "-d", "--cpus", "0.5", "--memory", "32Mi", IMAGE, WL, "sleep", "infinity",
    ]);
    let id = id.trim();
    let info = inspect(&root, id);
    let cg = serde_json::to_string(&info["state"]["cgroup"]).unwrap();
    let dirs: Vec<String> = info["state"]["cgroup"]["dirs"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(!dirs.is_empty(), "state records the cgroup: {cg}");
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(std::path::Path::new(d).join(file)).ok())
            .map(|s| s.trim().to_string())
    };
    if let Some(quota) = read("cpu.cfs_quota_us") {
        assert_eq!(quota, "50000");
        assert_eq!(read("memory.limit_in_bytes").as_deref(), Some("33554432"));
    } else {
        assert_eq!(read("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(read("memory.max").as_deref(), Some("33554432"));
    }
    root.ok(&["rm", "-f", id]);
    for d in &dirs {
        assert!(
            !std::path::Path::new(d).exists(),
            "rm removes the cgroup {d}"
        );
    }
}

#[test]
fn detached_container_is_listed_logged_stopped_and_removed() {
    let root = Root::with_sample();
    let id = root.ok(&[
        "run", "-d", "--name", "web", IMAGE, WL, "serve", "--port", "8080",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    assert!(root.ok(&["ps"]).contains("web"));
    wait_for("the server to log", Duration::from_secs(10), || {
        root.ok(&["container", "logs", "web"])
            .contains("listening on")
    });
    let out = root.gantry(&["run", "-d", "--name", "web", IMAGE, "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "names are unique");
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    let out = root.gantry(&["rm", "web"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a running container is not removed without -f"
    );

    root.ok(&["stop", "-t", "10", "web"]);
    let info = inspect(&root, &id[..12]);
    assert_eq!(info["status"], "exited");
    assert_eq!(
        info["state"]["exit_code"], 0,
        "the workload exits cleanly on SIGTERM"
    );
    assert!(!root.ok(&["ps"]).contains("web"));
    assert!(root.ok(&["ps", "-a"]).contains("Exited (0)"));
    root.ok(&["rm", "web"]);
    assert_eq!(root.ok(&["ps", "-a", "-q"]).trim(), "");
    root.ok(&["run", "--rm", "--name", "web", IMAGE, "/bin/true"]);
}

#[test]
fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let root = Root::with_sample();
    // busybox sleep as pid 1 has no SIGTERM handler, so the kernel drops SIGTERM.
    let id = root.ok(&["run", "-d", IMAGE, "/bin/sleep", "1000"]);
    root.ok(&["stop", "-t", "1", id.trim()]);
    let info = inspect(&root, id.trim());
    assert_eq!(info["state"]["exit_code"], 137);
}

#[test]
fn shim_outlives_the_starter_and_keeps_the_exit_status() {
    let root = Root::with_sample();
    let id = root.ok(&[
        "run",
        "-d",
        IMAGE,
        "/bin/sh",
        "-c",
        "sleep 0.5; echo done; exit 3",
    ]);
    let id = id.trim();
    // The starter has exited; the shim alone supervises the container now.
    let info = inspect(&root, id);
    let shim_pid = info["state"]["shim_pid"].as_i64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{shim_pid}")).exists());
    root.ok(&["container", "logs", "-f", id]);
    let out = root.ok(&["container", "logs", id]);
    assert_eq!(out, "done\n");
    let info = inspect(&root, id);
    assert_eq!(info["state"]["exit_code"], 3);
    wait_for("the shim to exit", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{shim_pid}")).exists()
    });
}

#[test]
fn container_cannot_see_host_files_devices_or_mount() {
    let root = Root::with_sample();
    let marker = root.path().join("host-secret");
    std::fs::write(&marker, "secret").unwrap();
    let script = format!(
        "test -e {} && echo HOSTFILE; \
         test -s /proc/kcore && echo KCORE; \
         mknod /tmp/x c 1 1 2>/dev/null && echo MKNOD; \
         mkdir -p /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo MOUNT; \
         echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo PROCSYS; \
         echo 1 > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ; \
         touch /sys/x 2>/dev/null && echo SYSWRITE; \
         ls /dev | tr '\\n' ' '; \
         grep NoNewPrivs /proc/self/status",
        marker.display()
    );
    let out = root.ok(&["run", "--rm", IMAGE, "/bin/sh", "-c", &script]);
    for bad in [
        "HOSTFILE", "KCORE", "MKNOD", "MOUNT", "PROCSYS", "SYSRQ", "SYSWRITE",
    ] {
        assert!(!out.contains(bad), "{bad} must be impossible: {out}");
    }
    for dev in ["null", "zero", "urandom", "tty", "pts", "shm"] {
        assert!(out.contains(dev), "/dev has {dev}: {out}");
    }
    for dev in ["sda", "vda", "mem", "kmsg"] {
        assert!(
            !out.split_whitespace().any(|d| d == dev),
            "/dev must not have {dev}: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn writes_go_to_the_containers_own_layer() {
    let root = Root::with_sample();
    root.ok(&[
        "run",
        "--name",
        "w1",
        IMAGE,
        "/bin/sh",
        "-c",
        "echo hi > /etc/touched",
    ]);
    let out = root.gantry(&["run", "--rm", IMAGE, "/bin/cat", "/etc/touched"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "another container does not see w1's writes"
    );
    let upper = inspect(&root, "w1")["dir"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{upper}/upper/etc/touched")).unwrap(),
        "hi\n"
    );
}

#[test]
fn foreground_run_forwards_sigterm_to_the_container() {
    let root = Root::with_sample();
    let mut child = root
        .command(&[
            "run", "--rm", "--name", "fg", IMAGE, WL, "serve", "--port", "8080",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gantry run");
    wait_for("the container to run", Duration::from_secs(10), || {
        root.ok(&["ps"]).contains("fg")
    });
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gantry run exits")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the workload exits 0 on SIGTERM and run passes it on"
    );
    assert_eq!(root.ok(&["ps", "-a", "-q"]).trim(), "", "--rm removed it");
}

#[test]
fn logs_tail_prints_only_the_last_lines() {
    let root = Root::with_sample();
    root.ok(&[
        "run",
        "--name",
        "count",
        IMAGE,
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done",
    ]);
    assert_eq!(
        root.ok(&["container", "logs", "--tail", "2", "count"]),
        "line4\nline5\n"
    );
    let stamped = root.ok(&["container", "logs", "-t", "--tail", "1", "count"]);
    assert!(
        stamped.ends_with("Z line5\n") && stamped.starts_with("20"),
        "{stamped}"
    );
}

#[test]
fn ps_lists_running_containers_in_docker_columns() {
    let root = Root::with_sample();
    root.ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        IMAGE,
        "/bin/sleep",
        "1000",
    ]);
    let out = root.ok(&["ps"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines.next().expect("one container");
    assert!(row.contains("Up ") && row.ends_with("sleeper"), "{row}");
    root.ok(&["rm", "-f", "sleeper"]);
}

#[test]
fn devices_cgroup_blocks_host_devices_even_with_cap_mknod() {
    let root = Root::with_sample();
    // CAP_MKNOD lets the container make an allowed node (null), but the devices controller
    // refuses to make (or open) the host's disk.
    let (major, minor) = host_block_device();
    let script = format!(
        "mknod /tmp/null c 1 3 && echo MADE_NULL; \
         mknod /tmp/disk b {major} {minor} 2>/dev/null && echo MADE_DISK; \
         head -c 1 /tmp/disk >/dev/null 2>&1 && echo OPENED; true"
    );
    let out = root.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "MKNOD",
        IMAGE,
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(out.contains("MADE_NULL"), "CAP_MKNOD was granted: {out}");
    assert!(
        !out.contains("MADE_DISK"),
        "the devices cgroup refuses the host disk: {out}"
    );
    assert!(
        !out.contains("OPENED"),
        "a host disk must not be readable: {out}"
    );
}

/// The major/minor of the block device holding `/`.
fn host_block_device() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").unwrap().dev();
    (libc_major(dev), libc_minor(dev))
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}
