//! [`KvBackend`]: the narrow embedded key-value interface the Raft store is written against, so
//! that another embedded store can replace sled in one module.

use super::StoreError;
use futures::future::BoxFuture;

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Keys, in order.
pub type Keys = Vec<Vec<u8>>;

/// One write of a [`WriteBatch`].
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

/// Writes applied to one tree atomically.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// The writes, in order.
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(key.into(), value.into()));
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(key.into()));
    }

    /// A batch deleting each of `keys`.
    pub fn deleting<K: Into<Vec<u8>>>(keys: impl IntoIterator<Item = K>) -> Self {
        WriteBatch {
            ops: keys
                .into_iter()
                .map(|k| BatchOp::Delete(k.into()))
                .collect(),
        }
    }
}

/// An ordered key-value store of named trees.
///
/// # Correctness
/// An implementation must guarantee:
/// - [`KvBackend::apply`] is atomic: after a crash either every write of the batch is visible
///   or none is.
/// - Writes are readable as soon as the call returns.
/// - Every write that returned before [`KvBackend::flush`] was called is durable when the
///   flush future resolves, and recovery after a crash yields a prefix of the write history
///   (never a later write without an earlier one).
pub trait KvBackend: Send + Sync + 'static {
    /// The value of `key` in `tree`.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `batch` to `tree` atomically.
    fn apply(&self, tree: &str, batch: WriteBatch) -> Result<(), StoreError>;
    /// Key-value pairs with `start <= key < end` (`end = None`: to the end), in key order.
    fn range(&self, tree: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Pair>, StoreError>;
    /// The keys with `start <= key < end`, in key order (an implementation may skip copying
    /// the values).
    fn keys(&self, tree: &str, start: &[u8], end: Option<&[u8]>) -> Result<Keys, StoreError> {
        Ok(self
            .range(tree, start, end)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
    /// The last pair with `start <= key < end`.
    fn last_in(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Option<Pair>, StoreError>;
    /// Removes every key of `tree`.
    fn clear(&self, tree: &str) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
