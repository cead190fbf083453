//! `get URL [--count N] [--timeout SECONDS]`: a minimal HTTP/1.0 client for use inside
//! replicas, where no curl exists. Each request opens a new connection (so a service address
//! balances every one of them), resolves the host through the system resolver (so service
//! names are looked up as any program would), and records which `hostname=` answered.
//!
//! Output: with one request, the response body; with more, one line per answering hostname,
//! `HOSTNAME COUNT`, sorted, then `errors N` when some failed (with the first error on stderr).
//! Exit 0 when every request got a 200.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    /// Host name or address.
    pub host: String,
    /// TCP port (80 by default).
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
}

/// Parses an `http://` URL; nothing else is supported.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("get: {s:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("get: invalid port {p:?} in {s:?}"))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("get: no host in {s:?}"));
    }
    Ok(Url {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// One GET; returns the status code and body.
fn fetch(url: &Url, timeout: Duration) -> Result<(u16, String), String> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", url.host))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    write!(s, "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", url.path, url.host)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed response from {addr}"))?;
    Ok((code, body.to_string()))
}

/// Runs `count` requests; see the module doc for the output.
pub fn run(url: &str, count: u64, timeout: Duration) -> Result<bool, String> {
    let url = parse_url(url)?;
    if count == 1 {
        let (code, body) = fetch(&url, timeout)?;
        print!("{body}");
        return Ok(code == 200);
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let (mut errors, mut first_error) = (0u64, None);
    for _ in 0..count {
        match fetch(&url, timeout) {
            Ok((200, body)) => {
                let host = body
                    .lines()
                    .find_map(|l| l.strip_prefix("hostname="))
                    .unwrap_or("?")
                    .to_string();
                *seen.entry(host).or_default() += 1;
            }
            Ok((code, _)) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("HTTP {code}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    for (host, n) in &seen {
        println!("{host} {n}");
    }
    if errors > 0 {
        println!("errors {errors}");
        if let Some(e) = first_error {
            eprintln!("gantry-workload: get: first error: {e}");
        }
    }
    Ok(errors == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_with_and_without_port_and_path() {
        let u = parse_url("http://web").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("web", 80, "/"));
        let u = parse_url("http://10.0.0.1:8080/healthz").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.1", 8080, "/healthz")
        );
        assert!(parse_url("https://web").is_err());
        assert!(parse_url("http://:80").is_err());
        assert!(parse_url("http://web:x").is_err());
    }
}
