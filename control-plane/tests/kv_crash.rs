//! SIGKILL of a process writing multi-key batches through [`SledBackend`]: after every crash
//! each batch is in whole or not at all, and every batch flushed before the kill is there.
//!
//! The writer is this test binary run again with `GANTRY_TEST_KV_WRITER` set; it prints
//! `flushed N` once batch N is durable.

use gantry_control_plane::store::kv::BatchOp;
use gantry_control_plane::store::{KvBackend, SledBackend, WriteBatch};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 8;

/// Entry point of the writer process; a no-op in a normal test run.
#[test]
fn kv_writer_process() {
    let Some(dir) = std::env::var_os("GANTRY_TEST_KV_WRITER") else {
        return;
    };
    let kv = SledBackend::open(Path::new(&dir)).expect("open");
    let mut n = state(&kv).expect("consistent state at start").unwrap_or(0);
    // Flushes run on their own thread without pause, so sled writes its buffer out in the
    // middle of batches, and the kill finds batches half-written to disk.
    let applied = Arc::new(AtomicU64::new(n));
    {
        let kv = kv.clone();
        let applied = applied.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            loop {
                let upto = applied.load(Ordering::Acquire);
                rt.block_on(kv.flush()).expect("flush");
                println!("flushed {upto}");
            }
        });
    }
    loop {
        n += 1;
        let mut b = WriteBatch::default();
        for k in 0..KEYS {
            // Values of a few hundred bytes, like stored objects.
            b.put(format!("k{k}"), format!("{n:020}{}", "v".repeat(300)));
        }
        // A delete in every batch too: exactly one marker key survives.
        b.ops
            .push(BatchOp::Delete(format!("m{}", n - 1).into_bytes()));
        b.put(format!("m{n}"), n.to_string());
        kv.apply("t", b).expect("apply");
        applied.store(n, Ordering::Release);
        // Unrelated single writes in between, as the log store makes.
        kv.apply("other", one(format!("o{n}")))
            .expect("apply other");
    }
}

fn one(key: String) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.put(key, b"x".to_vec());
    b
}

/// The batch number every key agrees on (None before the first batch), or what disagrees.
fn state(kv: &SledBackend) -> Result<Option<u64>, String> {
    let mut seen = Vec::new();
    for k in 0..KEYS {
        let v = kv.get("t", format!("k{k}").as_bytes()).unwrap();
        seen.push(v.map(|v| String::from_utf8_lossy(&v[..20]).parse::<u64>().unwrap()));
    }
    let markers: Vec<u64> = kv
        .range("t", b"m", Some(b"n"))
        .unwrap()
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).parse().unwrap())
        .collect();
    let first = seen[0];
    if seen.iter().any(|s| *s != first) {
        return Err(format!("keys from different batches: {seen:?}"));
    }
    match (first, markers.as_slice()) {
        (None, []) => Ok(None),
        (Some(n), [m]) if *m == n => Ok(Some(n)),
        _ => Err(format!("keys at {first:?} but markers {markers:?}")),
    }
}

#[test]
fn sigkill_during_batches_leaves_each_batch_whole_and_every_flushed_one_in() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total = 0;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kv_writer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GANTRY_TEST_KV_WRITER", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a varying number of flushes, in the middle of later batches.
        let flushes = 20 + round * 37 % 60;
        let mut flushed = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < flushes {
            assert!(Instant::now() < deadline, "writer too slow");
            let line = lines.next().expect("writer ended").unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = n.parse().unwrap();
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let kv = SledBackend::open(dir.path()).unwrap();
        let n = state(&kv)
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .unwrap_or(0);
        assert!(n >= flushed, "round {round}: flushed {flushed}, found {n}");
        total = n;
    }
    assert!(total > 0);
}
