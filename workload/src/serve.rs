//! A tiny HTTP/1.1 server for probes and load tests: a thread per connection, keep-alive,
//! request bodies skipped. Health can be broken on purpose three ways (env `HEALTHZ_FAIL=1`,
//! `GET /fail` until `GET /recover`, or the file `/tmp/unhealthy` existing) so probe and
//! restart logic can be tested against it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// Largest request head accepted; longer ones get 431 and the connection is closed.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The file whose existence makes `/healthz` fail.
const UNHEALTHY_FILE: &str = "/tmp/unhealthy";

/// State shared by all connections.
struct State {
    requests: AtomicU64,
    failing: AtomicBool,
    env_fail: bool,
    hostname: String,
    unhealthy_file: &'static Path,
}

/// Binds `0.0.0.0:port`, prints `listening on ADDR` and serves until the process is killed.
pub fn run(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    io::stdout().flush()?;
    let state = Arc::new(State {
        requests: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        env_fail: std::env::var("HEALTHZ_FAIL").is_ok_and(|v| v == "1" || v == "true"),
        hostname: crate::hostname(),
        unhealthy_file: Path::new(UNHEALTHY_FILE),
    });
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let state = Arc::clone(&state);
                // A failed spawn (e.g. pids limit) only drops this connection.
                let spawned = thread::Builder::new().spawn(move || {
                    let _ = handle(stream, &state);
                });
                if let Err(e) = spawned {
                    eprintln!("serve: cannot spawn connection thread: {e}");
                }
            }
            Err(e) => eprintln!("serve: accept failed: {e}"),
        }
    }
    Ok(())
}

/// Serves requests on one connection until the client closes it or asks to.
fn handle(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(req) = read_request(&mut reader)? else {
            return Ok(());
        };
        let Request {
            method,
            path,
            close,
            ..
        } = req;
        let (status, body) = if method == "GET" || method == "HEAD" {
            route(&path, state)
        } else {
            (405, "method not allowed\n".to_string())
        };
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        // One write per response: a head and a body in two small writes meet Nagle's
        // algorithm and the client's delayed ACK, adding ~40 ms to every keep-alive request.
        let mut response = head.into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(body.as_bytes());
        }
        writer.write_all(&response)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The parts of a request the server looks at.
struct Request {
    method: String,
    path: String,
    close: bool,
}

/// Reads one request head and skips its body; `None` when the client closed cleanly.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    let mut total = 0;
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    total += line.len();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let version = parts.next().unwrap_or("HTTP/1.0").to_string();
    let mut close = version != "HTTP/1.1";
    let mut body_len = 0usize;
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        total += n;
        if n == 0 || total > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("content-length") {
                body_len = value.parse().unwrap_or(0);
            }
        }
    }
    io::copy(
        &mut io::Read::take(&mut *reader, body_len as u64),
        &mut io::sink(),
    )?;
    Ok(Some(Request {
        method,
        path,
        close,
    }))
}

/// Answers one path: `(status, body)`.
fn route(path: &str, state: &State) -> (u16, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/" => {
            let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
            let body = format!(
                "hello from gantry-workload\nhostname={}\npid={}\nrequests={n}\n",
                state.hostname,
                std::process::id()
            );
            (200, body)
        }
        "/healthz" => {
            if state.env_fail {
                (500, "unhealthy: HEALTHZ_FAIL=1\n".to_string())
            } else if state.failing.load(Ordering::Relaxed) {
                (500, "unhealthy: /fail was requested\n".to_string())
            } else if state.unhealthy_file.exists() {
                (
                    500,
                    format!("unhealthy: {} exists\n", state.unhealthy_file.display()),
                )
            } else {
                (200, "ok".to_string())
            }
        }
        "/fail" => {
            state.failing.store(true, Ordering::Relaxed);
            (200, "healthz will now fail\n".to_string())
        }
        "/recover" => {
            state.failing.store(false, Ordering::Relaxed);
            (200, "healthz recovered\n".to_string())
        }
        "/env" => {
            let mut body = String::new();
            for (k, v) in std::env::vars_os() {
                body.push_str(&format!(
                    "{}={}\n",
                    k.to_string_lossy(),
                    v.to_string_lossy()
                ));
            }
            (200, body)
        }
        _ => (404, "not found\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(env_fail: bool) -> State {
        State {
            requests: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            env_fail,
            hostname: "h".to_string(),
            unhealthy_file: Path::new("/nonexistent/gantry-workload-test/unhealthy"),
        }
    }

    #[test]
    fn root_counts_requests() {
        let s = state(false);
        assert!(route("/", &s).1.contains("requests=1"));
        assert!(route("/?x=1", &s).1.contains("requests=2"));
    }

    #[test]
    fn healthz_fails_after_fail_and_recovers() {
        let s = state(false);
        assert_eq!(route("/healthz", &s), (200, "ok".to_string()));
        assert_eq!(route("/fail", &s).0, 200);
        assert_eq!(route("/healthz", &s).0, 500);
        assert_eq!(route("/recover", &s).0, 200);
        assert_eq!(route("/healthz", &s).0, 200);
    }

    #[test]
    fn healthz_fails_when_env_says_so() {
        assert_eq!(route("/healthz", &state(true)).0, 500);
    }

    #[test]
    fn healthz_fails_while_unhealthy_file_exists() {
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path =
            std::env::temp_dir().join(format!("gantry-workload-unhealthy-{}", std::process::id()));
        let guard = Remove(path.clone());
        let s = State {
            unhealthy_file: Box::leak(path.into_boxed_path()),
            ..state(false)
        };
        assert_eq!(route("/healthz", &s).0, 200);
        std::fs::write(&guard.0, "").unwrap();
        let (status, body) = route("/healthz", &s);
        assert_eq!(status, 500);
        assert!(body.contains("exists"), "{body}");
        drop(guard);
        assert_eq!(route("/healthz", &s).0, 200);
    }

    #[test]
    fn unknown_path_is_404() {
        assert_eq!(route("/nope", &state(false)).0, 404);
    }
}
