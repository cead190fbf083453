//! Waiting on the cluster for `apply --wait`, `scale --wait`, `delete --wait` and
//! `drain --wait`: list Services and Replicas, watch both from the lists' revisions, and judge
//! the condition after every change (and once a second, for conditions that depend on how long
//! something has lasted). Nothing polls the server.
//!
//! Progress goes to stdout: on a terminal as one live line per service, rewritten in place;
//! otherwise as plain lines, printed only when they change.

use super::get::str_at;
use super::output::{client_error, format_timeout, user_error};
use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How long a replica may stay `Unschedulable` before `--wait` gives up early: long enough for
/// a rolling update or a drain to free room, short enough not to wait out a long timeout for
/// a cluster that cannot fit the service.
pub const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(15);

/// What the cluster looks like, as far as the watches have seen.
#[derive(Debug, Default)]
pub struct State {
    /// Services by name.
    pub services: BTreeMap<String, Object>,
    /// Replicas by name.
    pub replicas: BTreeMap<String, Object>,
}

impl State {
    /// The replicas of service `name` (by `spec.service`, else the service label), by name.
    pub fn replicas_of(&self, name: &str) -> Vec<&Object> {
        self.replicas
            .values()
            .filter(|r| replica_service(r) == name)
            .collect()
    }
}

/// The service a replica belongs to.
pub fn replica_service(replica: &Object) -> &str {
    let s = str_at(&replica.spec, "/service");
    if s.is_empty() {
        replica
            .metadata
            .labels
            .get(super::get::LABEL_SERVICE)
            .map(String::as_str)
            .unwrap_or("")
    } else {
        s
    }
}

/// A judgement of the state.
pub enum Verdict {
    /// The condition holds.
    Done(Vec<String>),
    /// Not yet; the progress lines to show.
    Waiting(Vec<String>),
    /// It never will (or not soon): the one-line reason.
    Failed(String),
}

/// Live progress lines.
struct Progress {
    terminal: bool,
    shown: Vec<String>,
}

impl Progress {
    fn show(&mut self, lines: &[String]) {
        if lines == self.shown.as_slice() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.terminal {
            if !self.shown.is_empty() {
                let _ = write!(out, "\x1b[{}A", self.shown.len());
            }
            for l in lines {
                let _ = writeln!(out, "\r\x1b[2K{l}");
            }
        } else {
            for (i, l) in lines.iter().enumerate() {
                if self.shown.get(i) != Some(l) {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        let _ = out.flush();
        self.shown = lines.to_vec();
    }
}

/// Waits until `judge` says done or failed, or `timeout` passes (then the error is
/// `timed_out(state)`). `judge` sees the state after every change.
///
/// # Errors
/// A [`super::output::UserError`] on failure or timeout; the client's error when the
/// cluster cannot be read.
pub async fn wait_until(
    client: &mut Client,
    timeout: Duration,
    mut judge: impl FnMut(&State) -> Verdict,
    timed_out: impl Fn(&State, &str) -> String,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = Progress {
        terminal: std::io::stdout().is_terminal(),
        shown: Vec::new(),
    };
    let mut state = State::default();
    let mut failures = 0u32;
    'relist: loop {
        let (services, srev) = client
            .list(Kind::Service)
            .await
            .map_err(|e| client_error(e, "list services"))?;
        let (replicas, rrev) = client
            .list(Kind::Replica)
            .await
            .map_err(|e| client_error(e, "list replicas"))?;
        state.services = by_name(services);
        state.replicas = by_name(replicas);
        let mut other = client.clone();
        let (mut sw, mut rw) = match (
            client.watch(Kind::Service, srev).await,
            other.watch(Kind::Replica, rrev).await,
        ) {
            (Ok(s), Ok(r)) => (s, r),
            (Err(e), _) | (_, Err(e)) => {
                if e.is_transient() || matches!(e, ClientError::Expired(_)) {
                    failures += 1;
                    if failures < 20 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'relist;
                    }
                }
                return Err(client_error(e, "watch"));
            }
        };
        loop {
            match judge(&state) {
                Verdict::Done(lines) => {
                    progress.show(&lines);
                    return Ok(());
                }
                Verdict::Failed(message) => return Err(user_error(message)),
                Verdict::Waiting(lines) => progress.show(&lines),
            }
            let change = tokio::select! {
                c = sw.next() => c,
                c = rw.next() => c,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(user_error(timed_out(&state, &format_timeout(timeout))));
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            match change {
                Ok(Some(change)) => {
                    failures = 0;
                    let map = match change.object.kind {
                        Kind::Service => &mut state.services,
                        _ => &mut state.replicas,
                    };
                    let name = change.object.metadata.name.clone();
                    if change.change == gantry_api::proto::EventType::Deleted {
                        map.remove(&name);
                    } else {
                        map.insert(name, change.object);
                    }
                }
                Ok(None) | Err(ClientError::Expired(_)) => continue 'relist,
                Err(e) if e.is_transient() && failures < 20 => {
                    failures += 1;
                    continue 'relist;
                }
                Err(e) => return Err(client_error(e, "watch")),
            }
        }
    }
}

fn by_name(objects: Vec<Object>) -> BTreeMap<String, Object> {
    objects
        .into_iter()
        .map(|o| (o.metadata.name.clone(), o))
        .collect()
}

/// Judges "every one of `names` has all its replicas ready and up to date", failing early on
/// a deleted service or a replica unschedulable for longer than [`UNSCHEDULABLE_GRACE`].
pub struct ReadyJudge {
    names: Vec<String>,
    unschedulable_since: HashMap<String, Instant>,
}

impl ReadyJudge {
    /// A judge of `names`.
    pub fn new(names: Vec<String>) -> ReadyJudge {
        ReadyJudge {
            names,
            unschedulable_since: HashMap::new(),
        }
    }

    /// The verdict on `state`.
    pub fn judge(&mut self, state: &State) -> Verdict {
        let mut lines = Vec::new();
        let mut done = true;
        let now = Instant::now();
        for name in &self.names {
            let Some(svc) = state.services.get(name) else {
                return Verdict::Failed(format!("{name}: the service was deleted while waiting"));
            };
            let counts = Counts::of(svc);
            lines.push(format!("{name}: {}", counts.summary()));
            if counts.ready() {
                continue;
            }
            done = false;
            for r in state.replicas_of(name) {
                let rname = &r.metadata.name;
                if str_at(&r.status, "/reason") == "Unschedulable" {
                    let since = *self.unschedulable_since.entry(rname.clone()).or_insert(now);
                    if now.duration_since(since) >= UNSCHEDULABLE_GRACE {
                        return Verdict::Failed(format!(
                            "{name}: {} and replica unschedulable for {}s: {}",
                            counts.summary(),
                            UNSCHEDULABLE_GRACE.as_secs(),
                            replica_reason(r)
                        ));
                    }
                } else {
                    self.unschedulable_since.remove(rname);
                }
            }
        }
        if done {
            Verdict::Done(lines)
        } else {
            Verdict::Waiting(lines)
        }
    }

    /// The timeout message: every service not ready, with its not-ready replicas' reasons.
    pub fn timed_out(&self, state: &State, after: &str) -> String {
        let mut parts = Vec::new();
        for name in &self.names {
            let Some(svc) = state.services.get(name) else {
                parts.push(format!("{name}: not found after {after}"));
                continue;
            };
            let counts = Counts::of(svc);
            if counts.ready() {
                continue;
            }
            let reasons: Vec<String> = state
                .replicas_of(name)
                .into_iter()
                .filter(|r| !super::get::bool_at(&r.status, "/ready"))
                .map(replica_reason)
                .collect();
            let why = match reasons.len() {
                0 => "no replicas yet".to_string(),
                n if n > 3 => format!("{} and {} more", reasons[..3].join(", "), n - 3),
                _ => reasons.join(", "),
            };
            parts.push(format!("{name}: {} after {after}: {why}", counts.summary()));
        }
        parts.join("; ")
    }
}

/// `web-abcde CrashLoopBackOff (exit 1)`: why a replica is not ready.
pub fn replica_reason(r: &Object) -> String {
    let name = &r.metadata.name;
    let status = super::get::replica_status(r);
    let message = str_at(&r.status, "/message");
    let detail = if !message.is_empty() {
        Some(message.to_string())
    } else if let Some(code) = r.status.pointer("/lastExitCode").and_then(|v| v.as_i64()) {
        Some(format!("exit {code}"))
    } else if str_at(&r.spec, "/nodeName").is_empty() {
        Some("not scheduled".to_string())
    } else {
        None
    };
    match detail {
        Some(d) => format!("{name} {status} ({d})"),
        None => format!("{name} {status}"),
    }
}

/// A service's desired and observed replica counts.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    desired: u64,
    total: u64,
    ready: u64,
    updated: u64,
    current_template: bool,
}

impl Counts {
    /// The counts of `svc`.
    pub fn of(svc: &Object) -> Counts {
        let status = &svc.status;
        let hash = str_at(status, "/templateHash");
        let current_template = hash.is_empty()
            || svc
                .spec_as::<gantry_api::model::ServiceSpec>()
                .map(|s| {
                    gantry_control_plane::controllers::service::template_hash(&s.template) == hash
                })
                .unwrap_or(true);
        Counts {
            desired: svc
                .spec
                .pointer("/replicas")
                .and_then(|v| v.as_u64())
                .unwrap_or(1),
            total: super::get::u64_at(status, "/replicas"),
            ready: super::get::u64_at(status, "/readyReplicas"),
            updated: super::get::u64_at(status, "/updatedReplicas"),
            current_template,
        }
    }

    /// All replicas exist, run the current template and are ready, and no old one is left.
    pub fn ready(&self) -> bool {
        self.current_template
            && self.ready == self.desired
            && self.updated == self.desired
            && self.total == self.desired
    }

    /// `2/3 ready` (plus what is not up to date).
    pub fn summary(&self) -> String {
        let mut s = format!("{}/{} ready", self.ready, self.desired);
        if self.updated != self.desired || !self.current_template {
            s.push_str(&format!(", {}/{} up-to-date", self.updated, self.desired));
        }
        if self.total > self.desired {
            s.push_str(&format!(", {} old left", self.total - self.desired));
        }
        s
    }
}
