//! [`SledBackend`]: [`KvBackend`] on sled 0.34.

use super::kv::{BatchOp, KvBackend, WriteBatch};
use super::StoreError;
use futures::future::BoxFuture;
use std::path::Path;

/// sled page cache size.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A sled database; one process per directory (sled locks it).
#[derive(Clone)]
pub struct SledBackend {
    db: sled::Db,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from explicit flushes; sled's own periodic flush only helps.
            .flush_every_ms(Some(1000))
            // sled's default page cache is 1 GiB; a member's working set is far smaller.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(SledBackend { db })
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
        Box::pin(async move {
            self.db.flush_async().await?;
            Ok(())
        })
    }
}
