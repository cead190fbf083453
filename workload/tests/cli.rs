//! Runs the real `gantry-workload` binary: exit codes, output, the HTTP server's endpoints and
//! its SIGTERM handling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gantry-workload");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn gantry-workload")
}

#[test]
fn exit_returns_the_requested_code() {
    assert_eq!(run(&["exit", "3"]).status.code(), Some(3));
    assert_eq!(run(&["exit", "0"]).status.code(), Some(0));
}

#[test]
fn unknown_command_prints_usage_and_exits_2() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown command \"frobnicate\""), "{err}");
    assert!(err.contains("usage:"), "{err}");
}

#[test]
fn a_path_argument_is_executed_in_place() {
    let out = run(&[BIN, "echo", "via", "exec"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via exec\n");
    assert_eq!(run(&["/nonexistent/program"]).status.code(), Some(127));
    assert_eq!(run(&["/"]).status.code(), Some(126));
}

#[test]
fn echo_and_stderr_write_their_streams() {
    let out = run(&["echo", "hello", "world"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    let out = run(&["stderr", "oops"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert!(out.stdout.is_empty());
}

#[test]
fn info_prints_identity_and_environment() {
    let out = Command::new(BIN)
        .arg("info")
        .env("WORKLOAD_TEST_VAR", "42")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("hostname=")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("pid=")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("uid=") && l.contains(" gid=")),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "WORKLOAD_TEST_VAR=42"), "{text}");
}

#[test]
fn now_prints_the_current_unix_time_in_ns() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let out = run(&["now"]);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ns: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(before.as_nanos() <= ns && ns <= after.as_nanos());
}

#[test]
fn alloc_reports_progress_and_exits_after_hold() {
    let out = run(&["alloc", "4", "--hold", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("allocated 4 MiB") && text.contains("holding 4 MiB"),
        "{text}"
    );
}

#[test]
fn fork_reports_children() {
    let out = run(&["fork", "3"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forked 3/3 children"));
}

/// Kills the server with SIGKILL if a test fails before it stops it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_endpoints_and_exits_0_on_sigterm() {
    // Start on a free port and learn it from the "listening on" line.
    let child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .env("WORKLOAD_SERVE_VAR", "yes")
        .env_remove("HEALTHZ_FAIL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let stdout = server.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no listening line within 10s");
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();

    // Endpoints.
    let (status, body) = get(port, "/");
    assert_eq!(status, 200);
    assert!(
        body.contains("requests=1") && body.contains("pid="),
        "{body}"
    );
    assert!(get(port, "/").1.contains("requests=2"));
    assert_eq!(get(port, "/healthz"), (200, "ok".to_string()));
    assert!(get(port, "/env").1.contains("WORKLOAD_SERVE_VAR=yes"));
    assert_eq!(get(port, "/nope").0, 404);

    // Breaking and restoring health.
    assert_eq!(get(port, "/fail").0, 200);
    assert_eq!(get(port, "/healthz").0, 500);
    assert_eq!(get(port, "/recover").0, 200);
    assert_eq!(get(port, "/healthz").0, 200);

    // SIGTERM ends it promptly with status 0.
    let pid = libc::pid_t::try_from(server.0.id()).unwrap();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit within 10s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_healthz_fails_with_env() {
    let child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .env("HEALTHZ_FAIL", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let (status, body) = get(port, "/healthz");
    assert_eq!(status, 500);
    assert!(body.contains("HEALTHZ_FAIL"), "{body}");
}
