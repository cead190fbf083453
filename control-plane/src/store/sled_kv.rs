//! [`SledBackend`]: [`KvBackend`] on sled 0.34.

use super::kv::{BatchOp, KvBackend, WriteBatch};
use super::StoreError;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;

/// sled page cache size of [`SledBackend::open`].
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A sled database; one process per directory (sled locks it).
#[derive(Clone)]
pub struct SledBackend {
    db: sled::Db,
    /// sled's log file, for `fdatasync`: sled's own flush ends with `sync_file_range`, which
    /// neither flushes the device's write cache nor persists the file's size.
    file: Arc<std::fs::File>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, CACHE_BYTES)
    }

    /// [`SledBackend::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from explicit flushes; sled's own periodic flush only helps.
            .flush_every_ms(Some(1000))
            // sled's default page cache is 1 GiB; a member's working set is far smaller.
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        let log = dir.join("db");
        let file = std::fs::File::open(&log).map_err(|e| StoreError::Open {
            path: log.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SledBackend {
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
}

/// One write, atomic by itself. Not through `apply_batch`: every sled batch first seals the
/// current log buffer and writes it out with a `sync_file_range` (sled's `pin_log`), one disk
/// write per batch even when nothing asks for durability; a lone insert does not.
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
        if batch.ops.len() == 1 {
            if let Some(op) = batch.ops.pop() {
                return apply_one(&self.tree(tree)?, op);
            }
        }
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(k, v) => b.insert(k, v),
                BatchOp::Delete(k) => b.remove(k),
            }
        }
        Ok(self.tree(tree)?.apply_batch(b)?)
    }

    fn range(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let t = self.tree(tree)?;
        let iter = match end {
            Some(end) => t.range(start..end),
            None => t.range(start..),
        };
        iter.map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        })
        .collect()
    }

    fn last_in(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let t = self.tree(tree)?;
        let mut iter = match end {
            Some(end) => t.range(start..end),
            None => t.range(start..),
        };
        Ok(iter
            .next_back()
            .transpose()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn clear(&self, tree: &str) -> Result<(), StoreError> {
        Ok(self.tree(tree)?.clear()?)
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
