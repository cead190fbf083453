//! Health probes of one running container: startup, liveness and readiness, each an `exec`
//! (a command inside the container), `httpGet` or `tcpSocket` check made from inside the
//! container's network namespace.
//!
//! Semantics follow Kubernetes: nothing is probed before `initialDelaySeconds`; a probe that
//! does not answer within `timeoutSeconds` fails; `failureThreshold` consecutive failures flip
//! a probe to failing and `successThreshold` consecutive passes back to passing. The startup
//! probe gates the others; its failure, like liveness failure, asks for the container to be
//! killed. Readiness starts false.

use crate::recorder::Recorder;
use crate::watcher::lock;
use gantry_api::model::{ContainerTemplate, EventType, PortRef, Probe};
use gantry_runtime::container::exec::{connect_tcp, exec_command};
use gantry_runtime::container::ContainerInfo;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the probes of one container concluded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// Ready to serve: the readiness probe passes (or there is none and it started).
    pub ready: bool,
    /// Why it is not ready, when it is not.
    pub not_ready_message: Option<String>,
    /// Set when liveness (or startup) failed: the container must be killed.
    pub kill: Option<String>,
}

/// The running probes of one container; dropping it stops them.
#[derive(Debug)]
pub struct Probes {
    /// The container probed.
    pub container_id: String,
    state: Arc<Mutex<ProbeState>>,
    cancel: CancellationToken,
}

impl Probes {
    /// The current conclusions.
    pub fn state(&self) -> ProbeState {
        lock(&self.state).clone()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts the probes of `template` against the running container `info`; `wake` is
/// notified whenever a conclusion changes.
pub fn start(
    replica: &str,
    info: ContainerInfo,
    template: &ContainerTemplate,
    wake: Arc<Notify>,
    recorder: Recorder,
) -> Probes {
    let cancel = CancellationToken::new();
    let has_startup = template.startup_probe.is_some();
    let state = Arc::new(Mutex::new(ProbeState {
        started: !has_startup,
        ready: template.readiness_probe.is_none() && !has_startup,
        not_ready_message: None,
        kill: None,
    }));
    let started = Arc::new(Notify::new());
    let ctx = Ctx {
        replica: replica.to_string(),
        info: Arc::new(info),
        template: Arc::new(template.clone()),
        state: state.clone(),
        wake,
        recorder,
        started: started.clone(),
        cancel: cancel.clone(),
    };
    for (kind, probe) in [
        (Kind::Startup, &template.startup_probe),
        (Kind::Liveness, &template.liveness_probe),
        (Kind::Readiness, &template.readiness_probe),
    ] {
        if let Some(p) = probe {
            tokio::spawn(run_probe(ctx.clone(), kind, p.clone()));
        }
    }
    Probes {
        container_id: ctx.info.spec.id.clone(),
        state,
        cancel,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

#[derive(Clone)]
struct Ctx {
    replica: String,
    info: Arc<ContainerInfo>,
    template: Arc<ContainerTemplate>,
    state: Arc<Mutex<ProbeState>>,
    wake: Arc<Notify>,
    recorder: Recorder,
    started: Arc<Notify>,
    cancel: CancellationToken,
}

impl Ctx {
    fn update(&self, f: impl FnOnce(&mut ProbeState)) {
        let changed = {
            let mut s = lock(&self.state);
            let before = s.clone();
            f(&mut s);
            *s != before
        };
        if changed {
            self.wake.notify_one();
        }
    }
}

async fn run_probe(ctx: Ctx, kind: Kind, probe: Probe) {
    if kind != Kind::Startup {
        // Startup gates the others.
        loop {
            let waiter = ctx.started.notified();
            if lock(&ctx.state).started {
                break;
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = waiter => {}
            }
        }
    }
    let delay = Duration::from_secs(u64::from(probe.initial_delay_seconds));
    tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        _ = tokio::time::sleep(delay) => {}
    }
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = check(&ctx, &probe, timeout) => r,
        };
        match result {
            Ok(()) => {
                passes += 1;
                failures = 0;
                if passes >= probe.success_threshold.max(1) {
                    match kind {
                        Kind::Startup => {
                            ctx.update(|s| {
                                s.started = true;
                                if ctx.template.readiness_probe.is_none() {
                                    s.ready = true;
                                }
                            });
                            ctx.started.notify_waiters();
                            return;
                        }
                        Kind::Readiness => ctx.update(|s| {
                            s.ready = true;
                            s.not_ready_message = None;
                        }),
                        Kind::Liveness => {}
                    }
                }
            }
            Err(msg) => {
                passes = 0;
                failures += 1;
                let message = format!("{} probe failed: {msg}", kind.name());
                tracing::debug!(replica = %ctx.replica, %message, "probe failed");
                ctx.recorder
                    .replica(&ctx.replica, EventType::Warning, "Unhealthy", &message);
                if kind == Kind::Readiness {
                    let m = message.clone();
                    ctx.update(|s| s.not_ready_message = Some(m));
                }
                if failures >= probe.failure_threshold.max(1) {
                    match kind {
                        Kind::Readiness => ctx.update(|s| s.ready = false),
                        Kind::Liveness | Kind::Startup => {
                            tracing::info!(replica = %ctx.replica, %message, "probe failing; container will be restarted");
                            ctx.update(|s| s.kill = Some(message));
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Runs one check; `Err` holds why it failed.
async fn check(ctx: &Ctx, probe: &Probe, timeout: Duration) -> Result<(), String> {
    let pid = ctx.info.state.as_ref().map_or(0, |s| s.pid);
    if let Some(exec) = &probe.exec {
        let cmd = exec_command(&ctx.info, &exec.command).map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", exec.command))?;
        return match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(format!(
                "command {:?} timed out after {timeout:?}",
                exec.command
            )),
            Ok(Err(e)) => Err(format!("command {:?}: {e}", exec.command)),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                let text: String = text.trim().chars().take(200).collect();
                Err(format!(
                    "command {:?} exited with {}: {text}",
                    exec.command,
                    out.status.code().unwrap_or(-1)
                ))
            }
        };
    }
    let (port, host, path) = if let Some(h) = &probe.http_get {
        (&h.port, &h.host, Some(h.path.clone()))
    } else if let Some(t) = &probe.tcp_socket {
        (&t.port, &t.host, None)
    } else {
        return Err("probe has no action".into());
    };
    let port = resolve_port(&ctx.template, port)?;
    let addr = resolve_host(host.as_deref(), port)?;
    let work = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut stream =
            connect_tcp(pid, addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        let Some(path) = path else {
            return Ok(());
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: gantry-probe\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("http {addr}{path}: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("http {addr}{path}: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("http {addr}{path}: malformed response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    });
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(format!("{addr}: timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("probe task failed: {e}")),
        Ok(Ok(r)) => r,
    }
}

fn resolve_port(template: &ContainerTemplate, port: &PortRef) -> Result<u16, String> {
    match port {
        PortRef::Number(n) => Ok(*n),
        PortRef::Name(name) => template
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

fn resolve_host(host: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    match host {
        None | Some("") => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        Some(h) => (h, port)
            .to_socket_addrs()
            .map_err(|e| format!("host {h:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("host {h:?} has no address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::model::ContainerPort;

    #[test]
    fn named_ports_resolve_through_the_template() {
        let t = ContainerTemplate {
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                protocol: Default::default(),
            }],
            ..Default::default()
        };
        assert_eq!(resolve_port(&t, &PortRef::Name("http".into())), Ok(8080));
        assert_eq!(resolve_port(&t, &PortRef::Number(9)), Ok(9));
        assert!(resolve_port(&t, &PortRef::Name("x".into())).is_err());
        assert_eq!(
            resolve_host(None, 80).unwrap(),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
    }
}
