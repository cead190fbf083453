//! [`SledBackend`]: [`KvBackend`] on sled 0.34.
//!
//! # Atomic batches without sled batches
//! Every sled batch (`apply_batch`, and transactions alike) first seals the current log buffer
//! and has it written out with a `sync_file_range` (sled's `pin_log`): a disk write per batch
//! even when nothing asks for durability, and the state machine applies one batch per Raft
//! entry, on every member. Those writes compete with the Raft log's flushes for the disk.
//!
//! So a multi-key batch up to [`REDO_MAX_BYTES`] is made atomic by a redo record instead: one
//! insert stores the whole batch under `r` of tree `__redo` with a sequence number, then each
//! write goes in as a plain insert or remove, then `d` records that sequence number as done;
//! plain inserts stay in sled's log buffer until a flush. sled recovers a prefix of the writes
//! after a crash, so on open either the record is missing (then so is every write of the
//! batch), or it is done, or it is not done and nothing written after it survived: its writes
//! are then applied again (each sets a final value, so applying twice is harmless). A larger
//! batch goes through sled's own `apply_batch`. Every write takes one lock, so the record,
//! the batch and its done mark are never interleaved with another write.
//!
//! Readers of other tasks may see a batch half-applied while it is being written (sled's own
//! batches hide that); the object store's readers do not rely on it (they read the store
//! revision first and take nothing beyond it as settled).

use super::kv::{BatchOp, Keys, KvBackend, WriteBatch};
use super::StoreError;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// sled page cache size of [`SledBackend::open`].
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Largest encoded batch made atomic by a redo record; a larger one uses sled's `apply_batch`
/// (sled 0.34 stores values above 128 KiB as blob files, much slower).
pub const REDO_MAX_BYTES: usize = 112 * 1024;

const REDO_TREE: &str = "__redo";
const REDO_RECORD: &[u8] = b"r";
const REDO_DONE: &[u8] = b"d";

/// A sled database; one process per directory (sled locks it).
#[derive(Clone)]
pub struct SledBackend {
    db: sled::Db,
    /// sled's log file, for `fdatasync`: sled's own flush ends with `sync_file_range`, which
    /// neither flushes the device's write cache nor persists the file's size.
    file: Arc<std::fs::File>,
    redo: Arc<Redo>,
}

/// The redo tree and, under the lock every write takes, the last sequence number used.
struct Redo {
    tree: sled::Tree,
    seq: Mutex<u64>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, CACHE_BYTES)
    }

    /// [`SledBackend::open`] with a page cache of `cache_bytes`. Completes a batch that a
    /// crash cut short (see the module documentation).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: dir.display().to_string(),
            message,
        };
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from explicit flushes; sled's own periodic flush only helps.
            .flush_every_ms(Some(1000))
            // sled's default page cache is 1 GiB; a member's working set is far smaller.
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let log = dir.join("db");
        let file = std::fs::File::open(&log).map_err(|e| StoreError::Open {
            path: log.display().to_string(),
            message: e.to_string(),
        })?;
        let redo = db.open_tree(REDO_TREE)?;
        let seq = recover(&db, &redo)
            .map_err(|e| open_err(format!("completing a cut-short batch: {e}")))?;
        Ok(SledBackend {
            redo: Arc::new(Redo {
                tree: redo,
                seq: Mutex::new(seq),
            }),
            db,
            file: Arc::new(file),
        })
    }

    /// Whether the database has a tree called `name` (trees are made on first use).
    pub fn has_tree(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == name.as_bytes())
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The write lock; a poisoned one is still good (every write is whole or redone).
    fn lock(&self) -> MutexGuard<'_, u64> {
        self.redo.seq.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies the redo record in `redo` to its tree of `db` again if it is not marked done, and
/// returns its sequence number (0 with none).
fn recover(db: &sled::Db, redo: &sled::Tree) -> Result<u64, StoreError> {
    let Some(record) = redo.get(REDO_RECORD)? else {
        return Ok(0);
    };
    let (seq, tree, ops) = decode_redo(&record).ok_or_else(|| StoreError::Corrupt {
        key: "__redo/r".into(),
        message: "undecodable redo record".into(),
    })?;
    let done = redo
        .get(REDO_DONE)?
        .map_or(0, |d| read_u64(&d).unwrap_or(0));
    if done < seq {
        let t = db.open_tree(tree)?;
        for op in ops {
            apply_one(&t, op)?;
        }
        redo.insert(REDO_DONE, &seq.to_be_bytes())?;
        db.flush()?;
        tracing::info!(seq, "completed a batch that a crash cut short");
    }
    Ok(seq)
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// The redo record of a batch: sequence number, tree name, then each write as a tag (1 put,
/// 2 delete), key and (for a put) value, lengths as u32 big-endian. None when it would be
/// larger than [`REDO_MAX_BYTES`].
fn encode_redo(seq: u64, tree: &str, ops: &[BatchOp]) -> Option<Vec<u8>> {
    let size = ops.iter().fold(16 + tree.len(), |n, op| {
        n + match op {
            BatchOp::Put(k, v) => 9 + k.len() + v.len(),
            BatchOp::Delete(k) => 5 + k.len(),
        }
    });
    if size > REDO_MAX_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&seq.to_be_bytes());
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    field(&mut out, tree.as_bytes());
    for op in ops {
        match op {
            BatchOp::Put(k, v) => {
                out.push(1);
                field(&mut out, k);
                field(&mut out, v);
            }
            BatchOp::Delete(k) => {
                out.push(2);
                field(&mut out, k);
            }
        }
    }
    Some(out)
}

/// Reads what [`encode_redo`] wrote; None if it is malformed.
fn decode_redo(b: &[u8]) -> Option<(u64, String, Vec<BatchOp>)> {
    let seq = read_u64(b)?;
    let mut rest = b.get(8..)?;
    let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let v = rest.get(4..4usize.checked_add(len)?)?.to_vec();
        *rest = &rest[4 + len..];
        Some(v)
    };
    let tree = String::from_utf8(field(&mut rest)?).ok()?;
    let mut ops = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        ops.push(match tag {
            1 => {
                let k = field(&mut rest)?;
                BatchOp::Put(k, field(&mut rest)?)
            }
            2 => BatchOp::Delete(field(&mut rest)?),
            _ => return None,
        });
    }
    Some((seq, tree, ops))
}

/// The pairs of `t` with `start <= key < end` (`end = None`: to the end).
fn scan(t: &sled::Tree, start: &[u8], end: Option<&[u8]>) -> sled::Iter {
    match end {
        Some(end) => t.range(start..end),
        None => t.range(start..),
    }
}

/// One write, atomic by itself, left in sled's log buffer until a flush.
fn apply_one(tree: &sled::Tree, op: BatchOp) -> Result<(), StoreError> {
    match op {
        BatchOp::Put(k, v) => tree.insert(k, v)?,
        BatchOp::Delete(k) => tree.remove(k)?,
    };
    Ok(())
}

impl KvBackend for SledBackend {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn apply(&self, tree: &str, mut batch: WriteBatch) -> Result<(), StoreError> {
        let t = self.tree(tree)?;
        let mut seq = self.lock();
        if batch.ops.len() <= 1 {
            return batch.ops.pop().map_or(Ok(()), |op| apply_one(&t, op));
        }
        if let Some(record) = encode_redo(*seq + 1, tree, &batch.ops) {
            self.redo.tree.insert(REDO_RECORD, record)?;
            *seq += 1;
            for op in batch.ops {
                apply_one(&t, op)?;
            }
            self.redo.tree.insert(REDO_DONE, &seq.to_be_bytes())?;
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(k, v) => b.insert(k, v),
                BatchOp::Delete(k) => b.remove(k),
            }
        }
        Ok(t.apply_batch(b)?)
    }

    fn range(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        scan(&self.tree(tree)?, start, end)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }

    fn keys(&self, tree: &str, start: &[u8], end: Option<&[u8]>) -> Result<Keys, StoreError> {
        scan(&self.tree(tree)?, start, end)
            .map(|r| r.map(|(k, _)| k.to_vec()).map_err(StoreError::from))
            .collect()
    }

    fn last_in(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut iter = scan(&self.tree(tree)?, start, end);
        Ok(iter
            .next_back()
            .transpose()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn clear(&self, tree: &str) -> Result<(), StoreError> {
        let t = self.tree(tree)?;
        let _lock = self.lock();
        Ok(t.clear()?)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        let file = self.file.clone();
        Box::pin(async move {
            // One blocking thread does sled's write-out and then the fdatasync that makes it
            // durable as etcd's WAL is (fsync on commit).
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                db.flush()?;
                file.sync_data().map_err(|e| StoreError::Sled(e.into()))?;
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Flush(format!("flush task: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> BatchOp {
        BatchOp::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn batch(ops: Vec<BatchOp>) -> WriteBatch {
        WriteBatch { ops }
    }

    fn value(kv: &SledBackend, key: &str) -> Option<String> {
        kv.get("t", key.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn a_batch_cut_short_by_a_crash_is_completed_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledBackend::open(dir.path()).unwrap();
            kv.apply("t", batch(vec![put("a", "0"), put("b", "0")]))
                .unwrap();
        }
        // What a crash after the record and the first write of the next batch leaves.
        {
            let db = sled::open(dir.path()).unwrap();
            let record = encode_redo(2, "t", &[put("a", "1"), put("b", "1")]).unwrap();
            db.open_tree(REDO_TREE)
                .unwrap()
                .insert(REDO_RECORD, record)
                .unwrap();
            db.open_tree("t").unwrap().insert("a", "1").unwrap();
            db.flush().unwrap();
        }
        let kv = SledBackend::open(dir.path()).unwrap();
        assert_eq!(value(&kv, "a").as_deref(), Some("1"));
        assert_eq!(value(&kv, "b").as_deref(), Some("1"));
        // Sequence numbers go on from the completed record.
        assert_eq!(*kv.lock(), 2);
    }

    #[tokio::test]
    async fn a_completed_batch_is_not_applied_again_over_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledBackend::open(dir.path()).unwrap();
            kv.apply("t", batch(vec![put("a", "1"), put("b", "1")]))
                .unwrap();
            kv.apply("t", batch(vec![put("a", "2")])).unwrap();
            kv.apply(
                "t",
                batch(vec![BatchOp::Delete(b"b".to_vec()), put("c", "3")]),
            )
            .unwrap();
            kv.apply("t", batch(vec![put("c", "4")])).unwrap();
            kv.flush().await.unwrap();
        }
        let kv = SledBackend::open(dir.path()).unwrap();
        assert_eq!(value(&kv, "a").as_deref(), Some("2"));
        assert_eq!(value(&kv, "b"), None);
        assert_eq!(value(&kv, "c").as_deref(), Some("4"));
    }

    #[test]
    fn keys_lists_the_keys_of_a_range_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledBackend::open(dir.path()).unwrap();
        kv.apply(
            "t",
            batch(vec![
                put("c", "3"),
                put("a", "1"),
                put("b", "2"),
                put("d", "4"),
            ]),
        )
        .unwrap();
        let keys = kv.keys("t", b"b", Some(b"d")).unwrap();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(kv.keys("t", b"a", None).unwrap().len(), 4);
    }

    #[test]
    fn a_batch_too_large_for_a_redo_record_is_applied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledBackend::open(dir.path()).unwrap();
        let big = "x".repeat(REDO_MAX_BYTES / 2);
        let ops = vec![put("a", &big), put("b", &big), put("c", "small")];
        assert!(encode_redo(1, "t", &ops).is_none());
        kv.apply("t", batch(ops)).unwrap();
        assert_eq!(value(&kv, "a").map(|v| v.len()), Some(big.len()));
        assert_eq!(value(&kv, "c").as_deref(), Some("small"));
        // No redo record was used.
        assert_eq!(*kv.lock(), 0);
    }

    #[test]
    fn redo_records_decode_to_what_was_encoded_and_malformed_ones_are_refused() {
        let ops = vec![
            put("k1", "v1"),
            BatchOp::Delete(b"k2".to_vec()),
            BatchOp::Put(vec![], vec![0, 255]),
        ];
        let record = encode_redo(7, "tree", &ops).unwrap();
        let (seq, tree, back) = decode_redo(&record).unwrap();
        assert_eq!((seq, tree.as_str()), (7, "tree"));
        assert_eq!(format!("{back:?}"), format!("{ops:?}"));
        // Cut inside a field, or an unknown tag: refused, never a panic.
        for cut in [3, 10, 14, record.len() - 1] {
            assert!(decode_redo(&record[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad = record.clone();
        bad[8 + 4 + 4] = 9;
        assert!(decode_redo(&bad).is_none());
        // Any bytes at all: no panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_redo(&junk);
        }
    }
}
