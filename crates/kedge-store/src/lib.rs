//! Revisioned key-value storage with watch: what kube-apiserver relies on
//! etcd for, behind one trait with two backends.
//!
//! - one global revision, increased by every write and used as the
//!   Kubernetes `resourceVersion`;
//! - get, and list of a key prefix at the current or an earlier revision,
//!   in key order, with a limit and a key to resume after;
//! - create if absent, update and delete conditional on the revision;
//! - watch of a prefix from a revision: the history after it, then live
//!   changes, each put carrying the previous value;
//! - compaction, after which older revisions answer [`StoreError::Compacted`].
//!
//! [`sqlite::SqliteStore`] keeps everything in one SQLite file (WAL, one
//! writer thread, one transaction per batch of writes);
//! [`etcd::EtcdStore`] talks to etcd v3.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

pub mod etcd;
pub mod sqlite;
pub mod testing;

/// One key's value at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of this value.
    pub mod_revision: i64,
}

/// A list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// Keys starting with this prefix.
    pub prefix: String,
    /// The revision to read at; the current one when `None`.
    pub revision: Option<i64>,
    /// At most this many items; all when `None`.
    pub limit: Option<usize>,
    /// Only keys after this one (to resume a paged list).
    pub start_after: Option<String>,
}

/// A list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResponse {
    /// The items, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: i64,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or updated.
    Put {
        /// The new value.
        kv: KeyValue,
        /// The value before, if the key existed.
        prev: Option<KeyValue>,
    },
    /// A key was deleted.
    Delete {
        /// The last value before the deletion.
        prev: KeyValue,
        /// The revision of the deletion.
        revision: i64,
    },
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            Self::Put { kv, .. } => kv.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { kv, .. } => &kv.key,
            Self::Delete { prev, .. } => &prev.key,
        }
    }
}

/// The changes of a watch, in revision order. It ends with an error when
/// the watch cannot go on (it fell behind, or the backend failed).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// The key exists already.
    #[error("key already exists")]
    AlreadyExists,
    /// The key's revision is not the expected one.
    #[error("revision conflict: the key is at revision {current}")]
    Conflict {
        /// The key's current revision.
        current: i64,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        /// The compaction revision.
        compacted: i64,
        /// The requested revision.
        requested: i64,
    },
    /// The requested revision is newer than the store's.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        /// The requested revision.
        requested: i64,
        /// The current revision.
        current: i64,
    },
    /// A watcher fell too far behind the writes and was dropped.
    #[error("the watch fell too far behind")]
    TooSlow,
    /// The store is closed.
    #[error("the store is closed")]
    Closed,
    /// The backend failed.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// A revisioned key-value store with watch.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The name of the backend, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// The latest revision.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// The keys under a prefix, at a revision.
    async fn list(&self, request: ListRequest) -> Result<ListResponse, StoreError>;

    /// Creates `key`; [`StoreError::AlreadyExists`] if it exists. Returns
    /// the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError>;

    /// Replaces `key`'s value if its revision is `expected` (any revision
    /// when `None`). Returns the new revision.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<i64, StoreError>;

    /// Deletes `key` if its revision is `expected` (any when `None`).
    /// Returns its last value; the deletion's revision is the store's
    /// current revision right after.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue, StoreError>;

    /// The changes under `prefix` after revision `after`.
    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError>;

    /// Forgets the history before `revision`.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;
}

/// Keeps history bounded as kube-apiserver does with etcd: every `interval`
/// it compacts up to the revision it saw one interval earlier, so watches
/// and lists may go back at least one interval. Runs until `store` reports
/// [`StoreError::Closed`] or the task is aborted.
pub async fn run_compactor(store: Arc<dyn Store>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<i64> = None;
    loop {
        ticker.tick().await;
        let current = match store.current_revision().await {
            Ok(revision) => revision,
            Err(StoreError::Closed) => return,
            Err(error) => {
                tracing::warn!(%error, "compactor cannot read the revision");
                continue;
            }
        };
        if let Some(revision) = previous.filter(|r| *r > 0) {
            match store.compact(revision).await {
                Ok(()) => tracing::debug!(revision, "compacted"),
                Err(StoreError::Closed) => return,
                Err(error) => tracing::warn!(%error, revision, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's
/// range end); empty, meaning "no end", when there is none.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
        assert_eq!(prefix_end(""), Vec::<u8>::new());
    }
}
