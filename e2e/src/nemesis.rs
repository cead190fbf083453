//! A seeded randomized fault run against a real cluster: clients read, write and
//! compare-and-swap a few registers while a nemesis kills, stops and partitions members; the
//! recorded history is then checked for linearizability and for acknowledged writes lost.
//!
//! Registers are services `lin-k0`…: the register's value is the label `v` (absent = 0). A
//! write or CAS is a read of `(value, resourceVersion)` followed by an update carrying that
//! version, so it applies exactly when nothing changed since the read; the leader's controllers
//! also write the services' status (bumping the version), which makes some updates conflict —
//! a conflict is a definite failure, a timeout or a lost connection an unknown outcome.
//!
//! Invariants: the fault schedule is a pure function of the seed, the duration and the number
//! of servers; at most one member is faulty at any time, so a quorum remains; every fault is
//! healed before the final reads.

use crate::linearizability::{self, Call, Limits, Operation, Outcome, Time, INFINITY};
use crate::{eventually, TestCluster};
use anyhow::Context;
use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// A small deterministic RNG (SplitMix64): enough for schedules, no dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// A duration in `lo..hi`, at millisecond resolution.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        Duration::from_millis(self.range(lo.as_millis() as u64, hi.as_millis() as u64))
    }
}

/// What the nemesis does to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL, then start again.
    Kill,
    /// SIGTERM, then start again.
    Stop,
    /// Cut off from the other members and clients, then heal.
    Partition,
}

impl FaultKind {
    fn actions(self) -> (&'static str, &'static str) {
        match self {
            FaultKind::Kill => ("kill", "start"),
            FaultKind::Stop => ("stop", "start"),
            FaultKind::Partition => ("partition", "heal"),
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When to inject it, from the start of the run.
    pub at: Duration,
    /// What to do.
    pub kind: FaultKind,
    /// To which member (`s1`…).
    pub member: String,
    /// How long before it is undone.
    pub lasts: Duration,
}

/// The faults of a run: one every 1–3 s after the previous one is undone; a kill or stop
/// lasts 1–2 s, a partition 1–3 s.
pub fn schedule(seed: u64, duration: Duration, servers: u8) -> Vec<Fault> {
    let mut rng = SplitMix64::new(seed);
    let mut at = Duration::ZERO;
    let mut faults = Vec::new();
    loop {
        at += rng.duration(Duration::from_secs(1), Duration::from_secs(3));
        if at >= duration {
            return faults;
        }
        let kind = match rng.range(0, 3) {
            0 => FaultKind::Kill,
            1 => FaultKind::Stop,
            _ => FaultKind::Partition,
        };
        let member = format!("s{}", rng.range(1, u64::from(servers.max(1)) + 1));
        let lasts = match kind {
            FaultKind::Partition => rng.duration(Duration::from_secs(1), Duration::from_secs(3)),
            _ => rng.duration(Duration::from_secs(1), Duration::from_secs(2)),
        };
        faults.push(Fault {
            at,
            kind,
            member,
            lasts,
        });
        at += lasts;
    }
}

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Seeds the fault schedule and the clients' choices.
    pub seed: u64,
    /// How long clients run and faults are injected.
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers.
    pub keys: usize,
    /// Control-plane members.
    pub servers: u8,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Operations that completed.
    pub ok: usize,
    /// Operations that definitely did not take effect.
    pub failed: usize,
    /// Operations of unknown outcome.
    pub unknown: usize,
    /// Faults injected (and undone).
    pub faults: Vec<Fault>,
    /// Faults whose injection or undoing failed, with the error.
    pub nemesis_errors: Vec<String>,
    /// Acknowledged writes never observed nor overwritten, as `key=value`.
    pub lost: Vec<String>,
    /// Value of every register read at the end, after healing.
    pub final_values: BTreeMap<String, u64>,
    /// The checker's verdicts.
    pub check: linearizability::Report,
}

impl RunReport {
    /// Keys whose history is not linearizable.
    pub fn anomalies(&self) -> usize {
        self.check.violations()
    }

    /// No anomaly, no lost write, every key decided, every fault injected and undone.
    pub fn is_clean(&self) -> bool {
        self.anomalies() == 0
            && self.lost.is_empty()
            && self.check.inconclusive() == 0
            && self.nemesis_errors.is_empty()
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |k: FaultKind| self.faults.iter().filter(|x| x.kind == k).count();
        writeln!(f, "seed:        {}", self.seed)?;
        writeln!(
            f,
            "operations:  {} ({} ok, {} failed, {} unknown)",
            self.ok + self.failed + self.unknown,
            self.ok,
            self.failed,
            self.unknown
        )?;
        writeln!(
            f,
            "faults:      {} ({} kill, {} stop, {} partition), {} nemesis errors",
            self.faults.len(),
            count(FaultKind::Kill),
            count(FaultKind::Stop),
            count(FaultKind::Partition),
            self.nemesis_errors.len()
        )?;
        for e in &self.nemesis_errors {
            writeln!(f, "  nemesis error: {e}")?;
        }
        writeln!(f, "final:       {:?}", self.final_values)?;
        writeln!(f, "lost writes: {}", self.lost.len())?;
        for l in &self.lost {
            writeln!(f, "  lost: {l}")?;
        }
        writeln!(
            f,
            "anomalies:   {} ({} keys inconclusive)",
            self.anomalies(),
            self.check.inconclusive()
        )?;
        for (key, v) in &self.check.keys {
            if *v != linearizability::Verdict::Linearizable {
                writeln!(f, "  {key}: {v:?}")?;
            }
        }
        write!(
            f,
            "verdict:     {}",
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// The value a read reports for a register that does not exist (never written by anyone, so
/// such a read is always an anomaly).
const MISSING: u64 = u64::MAX - 1;

fn key_name(i: usize) -> String {
    format!("lin-k{i}")
}

fn register(key: &str) -> Object {
    let mut o = Object::new(Kind::Service, key);
    o.spec = serde_json::json!({"replicas": 0, "template": {"image": "gantry/sample:latest"}});
    o.metadata.labels.insert("v".into(), "0".into());
    o
}

fn value_of(o: &Object) -> u64 {
    o.metadata
        .labels
        .get("v")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Brings up a cluster, runs clients and nemesis for `config.duration`, heals, reads every
/// register one last time and checks the history.
pub fn run(config: &RunConfig) -> anyhow::Result<RunReport> {
    let cluster = TestCluster::up(config.servers, 0).context("cluster up")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let keys: Vec<String> = (0..config.keys).map(key_name).collect();
    rt.block_on(async {
        cluster.leader().await?;
        let mut c = cluster.client().await?;
        for key in &keys {
            eventually(&format!("register {key}"), Duration::from_secs(30), || {
                let mut c = c.clone();
                let key = key.clone();
                async move {
                    match c.create(&register(&key)).await {
                        Ok(_) | Err(ClientError::AlreadyExists(_)) => Some(()),
                        Err(_) => None,
                    }
                }
            })
            .await?;
        }
        // Confirm the registers through a linearizable read before any fault.
        for key in &keys {
            c.get_existing(Kind::Service, key).await?;
        }
        anyhow::Ok(())
    })?;

    let faults = schedule(config.seed, config.duration, config.servers);
    let start = Instant::now();
    let until = start + config.duration;
    let (mut history, (injected, nemesis_errors)) = std::thread::scope(|s| {
        let nemesis = s.spawn(|| run_nemesis(&cluster, &faults, start));
        let history = rt.block_on(async {
            let tasks: Vec<_> = (0..config.clients)
                .map(|id| {
                    let servers = cluster.servers.clone();
                    let keys = keys.clone();
                    let seed = config.seed ^ (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
                    tokio::spawn(client_loop(id, servers, keys, seed, start, until))
                })
                .collect();
            let mut history = Vec::new();
            for t in tasks {
                history.extend(t.await.unwrap_or_default());
            }
            history
        });
        // Invariant: run_nemesis catches every error itself; a panic there is a bug to surface.
        let nemesis = nemesis.join().expect("nemesis thread panicked");
        (history, nemesis)
    });

    // Every fault is undone: the final reads must be served, and must explain the history.
    let final_values = rt.block_on(final_reads(
        &cluster,
        &keys,
        start,
        config.clients,
        &mut history,
    ))?;
    let mut report = RunReport {
        seed: config.seed,
        faults: injected,
        nemesis_errors,
        final_values,
        ..RunReport::default()
    };
    for op in &history {
        match op.outcome {
            Outcome::Ok(_) => report.ok += 1,
            Outcome::Fail => report.failed += 1,
            Outcome::Unknown => report.unknown += 1,
        }
    }
    report.lost = lost_writes(&history);
    report.check = linearizability::check(&history, Limits::default());
    Ok(report)
}

/// Injects `faults` in order, each undone before the next; returns those injected and the
/// errors met. A fault that could not be undone is retried, then reported.
fn run_nemesis(
    cluster: &TestCluster,
    faults: &[Fault],
    start: Instant,
) -> (Vec<Fault>, Vec<String>) {
    let mut injected = Vec::new();
    let mut errors = Vec::new();
    for fault in faults {
        if let Some(wait) = (start + fault.at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (inject, undo) = fault.kind.actions();
        eprintln!(
            "nemesis: t={:.1}s {inject} {} for {:?}",
            start.elapsed().as_secs_f64(),
            fault.member,
            fault.lasts
        );
        if let Err(e) = cluster.member(inject, &fault.member) {
            errors.push(format!("{inject} {}: {e:#}", fault.member));
            continue;
        }
        injected.push(fault.clone());
        std::thread::sleep(fault.lasts);
        let mut last = None;
        for _ in 0..5 {
            match cluster.member(undo, &fault.member) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        if let Some(e) = last {
            errors.push(format!("{undo} {}: {e:#}", fault.member));
        }
    }
    (injected, errors)
}

fn nanos_since(start: Instant) -> Time {
    start.elapsed().as_nanos() as Time
}

/// One client: random reads, writes (retried on conflict) and CASes until `until`.
async fn client_loop(
    id: usize,
    servers: Vec<String>,
    keys: Vec<String>,
    seed: u64,
    start: Instant,
    until: Instant,
) -> Vec<Operation> {
    let mut rng = SplitMix64::new(seed);
    let mut history = Vec::new();
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    while Instant::now() < until {
        let Some(c) = client.as_mut() else {
            match Client::connect(&servers).await {
                Ok(c) => client = Some(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let key = &keys[rng.range(0, keys.len() as u64) as usize];
        let choice = rng.range(0, 10);
        // Values are unique over the run, so a read tells which write it saw.
        seq += 1;
        let new = (id as u64 + 1) * 1_000_000_000 + seq;
        let healthy = if choice < 4 {
            read(c, id, key, start, &mut history).await.is_some()
        } else {
            let attempts = if choice < 7 { 5 } else { 1 };
            let blind = attempts > 1;
            read_modify_write(c, id, key, new, blind, attempts, start, &mut history).await
        };
        if !healthy {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    history
}

/// A linearizable read, recorded when it completed; returns the object.
async fn read(
    c: &mut Client,
    id: usize,
    key: &str,
    start: Instant,
    history: &mut Vec<Operation>,
) -> Option<Object> {
    let invoke = nanos_since(start);
    match c.get(Kind::Service, key).await {
        Ok(found) => {
            let complete = nanos_since(start);
            let value = found.as_ref().map_or(MISSING, value_of);
            history.push(Operation::read(id, key, invoke, complete, value));
            found
        }
        // A read of unknown outcome changes nothing: it is not recorded.
        Err(_) => None,
    }
}

/// Reads the register then updates it to `new` with the version read. `blind` records it as
/// a write (retried on conflict up to `attempts` times); otherwise as a CAS from the value
/// read. Returns false after an error other than a conflict.
#[allow(clippy::too_many_arguments)]
async fn read_modify_write(
    c: &mut Client,
    id: usize,
    key: &str,
    new: u64,
    blind: bool,
    attempts: usize,
    start: Instant,
    history: &mut Vec<Operation>,
) -> bool {
    for _ in 0..attempts {
        let Some(mut o) = read(c, id, key, start, history).await else {
            return false;
        };
        let call = if blind {
            Call::Write(new)
        } else {
            Call::Cas {
                expected: value_of(&o),
                new,
            }
        };
        o.metadata.labels.insert("v".into(), new.to_string());
        let invoke = nanos_since(start);
        let result = c.update(&o).await;
        let complete = nanos_since(start);
        let (outcome, done) = match result {
            Ok(_) => (Outcome::Ok(None), Some(true)),
            Err(ClientError::Conflict(_) | ClientError::NotFound(_) | ClientError::Invalid(_)) => {
                (Outcome::Fail, None)
            }
            Err(_) => (Outcome::Unknown, Some(false)),
        };
        let complete = if outcome == Outcome::Unknown {
            INFINITY
        } else {
            complete
        };
        history.push(Operation::new(id, key, call, invoke, complete, outcome));
        if let Some(healthy) = done {
            return healthy;
        }
    }
    true
}

/// Reads every register once the cluster serves again, appending the reads to `history`.
async fn final_reads(
    cluster: &TestCluster,
    keys: &[String],
    start: Instant,
    id: usize,
    history: &mut Vec<Operation>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut values = BTreeMap::new();
    for key in keys {
        let op = eventually(
            &format!("a final read of {key}"),
            Duration::from_secs(60),
            || async {
                let mut c = cluster.client().await.ok()?;
                let mut h = Vec::new();
                read(&mut c, id, key, start, &mut h).await?;
                h.pop()
            },
        )
        .await?;
        if let Outcome::Ok(Some(v)) = op.outcome {
            values.insert(key.clone(), v);
        }
        history.push(op);
    }
    Ok(values)
}

/// Writes acknowledged as applied whose value no read or CAS ever observed and that no other
/// write (completed or of unknown outcome) could have overwritten, as `key=value`.
pub fn lost_writes(history: &[Operation]) -> Vec<String> {
    let mut observed: HashSet<(&str, u64)> = HashSet::new();
    for op in history {
        match (op.call, op.outcome) {
            (Call::Read, Outcome::Ok(Some(v)))
            | (Call::Cas { expected: v, .. }, Outcome::Ok(_)) => {
                observed.insert((&op.key, v));
            }
            _ => {}
        }
    }
    let writes: Vec<(usize, &Operation, u64)> = history
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (op.call, op.outcome) {
            (Call::Write(v) | Call::Cas { new: v, .. }, Outcome::Ok(_) | Outcome::Unknown) => {
                Some((i, op, v))
            }
            _ => None,
        })
        .collect();
    let mut lost = Vec::new();
    for &(i, w, v) in &writes {
        if !matches!(w.outcome, Outcome::Ok(_)) || observed.contains(&(w.key.as_str(), v)) {
            continue;
        }
        let end = |o: &Operation| match o.outcome {
            Outcome::Unknown => INFINITY,
            _ => o.complete,
        };
        let overwritten = writes
            .iter()
            .any(|&(j, o, _)| j != i && o.key == w.key && end(o) > w.invoke);
        if !overwritten {
            lost.push(format!("{}={v}", w.key));
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let d = Duration::from_secs(60);
        assert_eq!(schedule(42, d, 3), schedule(42, d, 3));
        assert_ne!(schedule(42, d, 3), schedule(43, d, 3));
    }

    #[test]
    fn faults_keep_to_their_bounds_and_never_overlap() {
        let d = Duration::from_secs(600);
        let faults = schedule(7, d, 3);
        assert!(faults.len() > 100);
        let mut free_from = Duration::ZERO;
        for f in &faults {
            let gap = f.at - free_from;
            assert!(
                gap >= Duration::from_secs(1) && gap < Duration::from_secs(3),
                "{f:?}"
            );
            let max = match f.kind {
                FaultKind::Partition => Duration::from_secs(3),
                _ => Duration::from_secs(2),
            };
            assert!(f.lasts >= Duration::from_secs(1) && f.lasts < max, "{f:?}");
            assert!(["s1", "s2", "s3"].contains(&f.member.as_str()));
            assert!(f.at < d);
            free_from = f.at + f.lasts;
        }
        for kind in [FaultKind::Kill, FaultKind::Stop, FaultKind::Partition] {
            assert!(faults.iter().any(|f| f.kind == kind));
        }
    }

    #[test]
    fn an_acknowledged_write_never_seen_again_is_lost() {
        let h = vec![
            Operation::new(0, "k", Call::Write(5), 0, 10, Outcome::Ok(None)),
            Operation::read(1, "k", 20, 30, 0),
        ];
        assert_eq!(lost_writes(&h), vec!["k=5".to_string()]);
    }

    #[test]
    fn an_overwritten_or_observed_write_is_not_lost() {
        let h = vec![
            Operation::new(0, "k", Call::Write(5), 0, 10, Outcome::Ok(None)),
            Operation::new(0, "k", Call::Write(6), 20, 0, Outcome::Unknown),
            Operation::new(0, "j", Call::Write(7), 0, 10, Outcome::Ok(None)),
            Operation::read(1, "j", 20, 30, 7),
        ];
        assert!(lost_writes(&h).is_empty());
    }
}
