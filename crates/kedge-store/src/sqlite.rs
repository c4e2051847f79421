//! The SQLite backend: one file, write-ahead logging, one writer thread.
//!
//! Every write appends a row to table `kv` whose id is the revision (as
//! kine does): a put stores the new value, a delete stores a tombstone with
//! the last value. The latest row of a key at a revision is its state
//! then, so lists at old revisions and watches from old revisions read the
//! table directly. The writer thread takes writes from a queue and commits
//! them in batches, one transaction per batch, so nothing is ever half
//! written; readers use their own connections and see whole transactions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Event, EventStream, KeyValue, ListRequest, ListResponse, Store, StoreError};

/// How many writes one transaction takes at most.
const MAX_BATCH: usize = 256;

/// Rows read per query when replaying history to a watch.
const REPLAY_PAGE: i64 = 1000;

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Events buffered for each watcher; a watcher further behind is
    /// dropped with [`StoreError::TooSlow`].
    pub watch_buffer: usize,
    /// Writes queued for the writer thread before senders wait.
    pub write_queue: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            watch_buffer: 16 * 1024,
            write_queue: 4096,
        }
    }
}

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Write>,
}

struct Shared {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    current: AtomicI64,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

enum Write {
    Create {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<i64>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
        reply: oneshot::Sender<Result<KeyValue, StoreError>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_name_id ON kv (name, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    // FULL: a committed write survives a power cut, as etcd's fsync does.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    Ok(conn)
}

/// The revision as the sequence of `kv` (ids are never reused).
fn sequence(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'kv'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(backend)
    .map(|seq| seq.unwrap_or(0))
}

fn compacted(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = 'compacted'", [], |r| {
        r.get(0)
    })
    .optional()
    .map_err(backend)
    .map(|v| v.unwrap_or(0))
}

/// `name >= prefix AND name < end` bounds; `None` end means unbounded.
fn range(prefix: &str) -> Option<String> {
    String::from_utf8(crate::prefix_end(prefix))
        .ok()
        .filter(|end| !end.is_empty())
}

/// The latest row of a key: (id, deleted, create_revision, value).
type Row = (i64, bool, i64, Vec<u8>);

/// The latest row of `name`.
fn latest(conn: &Connection, name: &str) -> Result<Option<Row>, StoreError> {
    conn.query_row(
        "SELECT id, deleted, create_revision, value FROM kv WHERE name = ?1 ORDER BY id DESC LIMIT 1",
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(backend)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the file at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the store with explicit options.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> Result<(Connection, i64), StoreError> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
                }
                let conn = connect(&path)?;
                conn.execute_batch(SCHEMA).map_err(backend)?;
                // Revisions start at 1, as etcd's: 0 means "any" to clients.
                if sequence(&conn)? == 0 {
                    conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) SELECT 'kv', 1 \
                         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'kv')",
                        [],
                    )
                    .map_err(backend)?;
                }
                let current = sequence(&conn)?;
                Ok((conn, current))
            }
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        let (conn, current) = opened;
        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            path,
            readers: Mutex::new(Vec::new()),
            current: AtomicI64::new(current),
            events,
        });
        let (writes, queue) = mpsc::channel(options.write_queue.max(1));
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("kedge-store-writer".to_owned())
            .spawn(move || writer(conn, queue, &writer_shared))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer: {e}")))?;
        Ok(Self { shared, writes })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let pooled = shared
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => connect(&shared.path)?,
            };
            let result = f(&mut conn);
            shared
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// What one write in a batch produced.
enum Done {
    Revision(
        oneshot::Sender<Result<i64, StoreError>>,
        Result<i64, StoreError>,
    ),
    Deleted(
        oneshot::Sender<Result<KeyValue, StoreError>>,
        Result<KeyValue, StoreError>,
    ),
    Compacted(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

fn writer(mut conn: Connection, mut queue: mpsc::Receiver<Write>, shared: &Shared) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut failure: Option<String> = None;
        // IMMEDIATE: the write lock is taken at BEGIN, where a busy lock is
        // waited for. A deferred transaction takes it at its first write,
        // already holding a read snapshot, and there SQLite answers "database
        // is locked" at once instead of waiting (a reader takes that lock for
        // a moment when it re-reads a WAL index that changed under it): a
        // create failed so while 100,000 ObjectSyncs were created and read.
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => {
                for write in batch.drain(..) {
                    if let Some(error) = &failure {
                        // The batch is rolled back: later writes fail too.
                        done.push(refuse(write, error));
                    } else {
                        done.push(apply(&tx, write, &mut events, &mut failure));
                    }
                }
                if failure.is_none()
                    && let Err(error) = tx.commit()
                {
                    failure = Some(error.to_string());
                }
            }
            Err(error) => failure = Some(error.to_string()),
        }
        if let Some(error) = &failure {
            tracing::error!(%error, "store transaction failed; nothing of it was written");
            let failed = StoreError::Backend(error.clone());
            for write in batch.drain(..) {
                done.push(refuse(write, error));
            }
            for item in done {
                match item {
                    Done::Revision(reply, _) => drop(reply.send(Err(failed.clone()))),
                    Done::Deleted(reply, _) => drop(reply.send(Err(failed.clone()))),
                    Done::Compacted(reply, _) => drop(reply.send(Err(failed.clone()))),
                }
            }
            continue;
        }
        if let Some(last) = events.last() {
            let last: &Arc<Event> = last;
            shared.current.store(last.revision(), Ordering::SeqCst);
        }
        for event in events {
            // No receivers is fine: nobody watches.
            let _ = shared.events.send(event);
        }
        for item in done {
            match item {
                Done::Revision(reply, result) => drop(reply.send(result)),
                Done::Deleted(reply, result) => drop(reply.send(result)),
                Done::Compacted(reply, result) => drop(reply.send(result)),
            }
        }
    }
}

/// A write not applied because its batch failed.
fn refuse(write: Write, error: &str) -> Done {
    let failed = || StoreError::Backend(error.to_owned());
    match write {
        Write::Create { reply, .. } | Write::Update { reply, .. } => {
            Done::Revision(reply, Err(failed()))
        }
        Write::Delete { reply, .. } => Done::Deleted(reply, Err(failed())),
        Write::Compact { reply, .. } => Done::Compacted(reply, Err(failed())),
    }
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    deleted: bool,
    create_revision: Option<i64>,
    prev_revision: i64,
    value: &[u8],
) -> Result<i64, rusqlite::Error> {
    tx.execute(
        "INSERT INTO kv (name, deleted, create_revision, prev_revision, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, deleted, create_revision.unwrap_or(0), prev_revision, value],
    )?;
    let id = tx.last_insert_rowid();
    if create_revision.is_none() {
        tx.execute(
            "UPDATE kv SET create_revision = id WHERE id = ?1",
            params![id],
        )?;
    }
    Ok(id)
}

fn latest_in(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<Option<Row>, rusqlite::Error> {
    tx.query_row(
        "SELECT id, deleted, create_revision, value FROM kv WHERE name = ?1 ORDER BY id DESC LIMIT 1",
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
}

/// Applies one write inside the batch transaction. Logical refusals
/// (exists, conflict, not found) are results; an SQL failure is recorded in
/// `failure`, and the caller rolls the whole batch back.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    write: Write,
    events: &mut Vec<Arc<Event>>,
    failure: &mut Option<String>,
) -> Done {
    match write {
        Write::Create { key, value, reply } => {
            Done::Revision(reply, settle(create(tx, key, value, events), failure))
        }
        Write::Update {
            key,
            value,
            expected,
            reply,
        } => Done::Revision(
            reply,
            settle(update(tx, key, value, expected, events), failure),
        ),
        Write::Delete {
            key,
            expected,
            reply,
        } => Done::Deleted(reply, settle(delete(tx, key, expected, events), failure)),
        Write::Compact { revision, reply } => {
            Done::Compacted(reply, settle(compact(tx, revision, events), failure))
        }
    }
}

/// The result of one write, with an SQL failure turned into a backend
/// error and recorded.
fn settle<T>(
    outcome: Result<Result<T, StoreError>, rusqlite::Error>,
    failure: &mut Option<String>,
) -> Result<T, StoreError> {
    match outcome {
        Ok(result) => result,
        Err(error) => {
            let text = error.to_string();
            *failure = Some(text.clone());
            Err(StoreError::Backend(text))
        }
    }
}

fn create(
    tx: &rusqlite::Transaction<'_>,
    key: String,
    value: Vec<u8>,
    events: &mut Vec<Arc<Event>>,
) -> Result<Result<i64, StoreError>, rusqlite::Error> {
    let result = match latest_in(tx, &key)? {
        Some((_, false, _, _)) => Err(StoreError::AlreadyExists),
        _ => {
            let id = insert(tx, &key, false, None, 0, &value)?;
            events.push(Arc::new(Event::Put {
                kv: KeyValue {
                    key,
                    value,
                    create_revision: id,
                    mod_revision: id,
                },
                prev: None,
            }));
            Ok(id)
        }
    };
    Ok(result)
}

fn update(
    tx: &rusqlite::Transaction<'_>,
    key: String,
    value: Vec<u8>,
    expected: Option<i64>,
    events: &mut Vec<Arc<Event>>,
) -> Result<Result<i64, StoreError>, rusqlite::Error> {
    let result = match latest_in(tx, &key)? {
        None | Some((_, true, _, _)) => Err(StoreError::NotFound),
        Some((current, false, _, _)) if expected.is_some_and(|e| e != current) => {
            Err(StoreError::Conflict { current })
        }
        Some((current, false, created, old)) => {
            let id = insert(tx, &key, false, Some(created), current, &value)?;
            events.push(Arc::new(Event::Put {
                kv: KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: created,
                    mod_revision: id,
                },
                prev: Some(KeyValue {
                    key,
                    value: old,
                    create_revision: created,
                    mod_revision: current,
                }),
            }));
            Ok(id)
        }
    };
    Ok(result)
}

fn delete(
    tx: &rusqlite::Transaction<'_>,
    key: String,
    expected: Option<i64>,
    events: &mut Vec<Arc<Event>>,
) -> Result<Result<KeyValue, StoreError>, rusqlite::Error> {
    let result = match latest_in(tx, &key)? {
        None | Some((_, true, _, _)) => Err(StoreError::NotFound),
        Some((current, false, _, _)) if expected.is_some_and(|e| e != current) => {
            Err(StoreError::Conflict { current })
        }
        Some((current, false, created, old)) => {
            let id = insert(tx, &key, true, Some(created), current, &old)?;
            let prev = KeyValue {
                key,
                value: old,
                create_revision: created,
                mod_revision: current,
            };
            events.push(Arc::new(Event::Delete {
                prev: prev.clone(),
                revision: id,
            }));
            Ok(prev)
        }
    };
    Ok(result)
}

fn compact(
    tx: &rusqlite::Transaction<'_>,
    revision: i64,
    _events: &mut Vec<Arc<Event>>,
) -> Result<Result<(), StoreError>, rusqlite::Error> {
    let current: i64 = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'kv'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let done: i64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'compacted'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let result = if revision > current {
        Err(StoreError::FutureRevision {
            requested: revision,
            current,
        })
    } else if revision <= done {
        Ok(())
    } else {
        tx.execute(
            "DELETE FROM kv WHERE id <= ?1 AND (deleted = 1 OR id < \
             (SELECT MAX(k2.id) FROM kv k2 WHERE k2.name = kv.name AND k2.id <= ?1))",
            params![revision],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('compacted', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![revision],
        )?;
        Ok(())
    };
    Ok(result)
}

fn check_revision(conn: &Connection, requested: i64, current: i64) -> Result<(), StoreError> {
    if requested > current {
        return Err(StoreError::FutureRevision { requested, current });
    }
    let compacted = compacted(conn)?;
    if requested < compacted {
        return Err(StoreError::Compacted {
            compacted,
            requested,
        });
    }
    Ok(())
}

/// Reads, in one snapshot, the rows after `after` (at most `upto`) under
/// `prefix`, as events.
fn replay(
    conn: &mut Connection,
    prefix: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<Event>, StoreError> {
    let end = range(prefix);
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.id, k.name, k.deleted, k.create_revision, k.value, k.prev_revision, p.value, p.deleted \
             FROM kv k LEFT JOIN kv p ON p.id = k.prev_revision \
             WHERE k.id > ?1 AND k.id <= ?2 AND k.name >= ?3 AND (?4 IS NULL OR k.name < ?4) \
             ORDER BY k.id LIMIT ?5",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![after, upto, prefix, end, REPLAY_PAGE], |r| {
            let id: i64 = r.get(0)?;
            let name: String = r.get(1)?;
            let deleted: bool = r.get(2)?;
            let created: i64 = r.get(3)?;
            let value: Vec<u8> = r.get(4)?;
            let prev_revision: i64 = r.get(5)?;
            let prev_value: Option<Vec<u8>> = r.get(6)?;
            let prev_deleted: Option<bool> = r.get(7)?;
            Ok(if deleted {
                Event::Delete {
                    prev: KeyValue {
                        key: name,
                        value,
                        create_revision: created,
                        mod_revision: prev_revision,
                    },
                    revision: id,
                }
            } else {
                let prev = match (prev_value, prev_deleted) {
                    (Some(value), Some(false)) if prev_revision > 0 => Some(KeyValue {
                        key: name.clone(),
                        value,
                        create_revision: created,
                        mod_revision: prev_revision,
                    }),
                    _ => None,
                };
                Event::Put {
                    kv: KeyValue {
                        key: name,
                        value,
                        create_revision: created,
                        mod_revision: id,
                    },
                    prev,
                }
            })
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let event = row.map_err(backend)?;
        if event.key().starts_with(prefix) {
            out.push(event);
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        if self.writes.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(self.shared.current.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(match latest(conn, &key)? {
                Some((id, false, created, value)) => Some(KeyValue {
                    key,
                    value,
                    create_revision: created,
                    mod_revision: id,
                }),
                _ => None,
            })
        })
        .await
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse, StoreError> {
        self.read(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let current = sequence(&tx)?;
            let revision = match request.revision {
                Some(revision) if revision > 0 => {
                    check_revision(&tx, revision, current)?;
                    revision
                }
                _ => current,
            };
            let end = range(&request.prefix);
            let after = request.start_after.clone().unwrap_or_default();
            let limit = request
                .limit
                .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX - 1) + 1);
            let mut stmt = tx
                .prepare_cached(
                    "SELECT k.id, k.name, k.create_revision, k.value FROM kv k \
                     WHERE k.name >= ?1 AND (?2 IS NULL OR k.name < ?2) AND k.name > ?3 \
                     AND k.id = (SELECT MAX(k2.id) FROM kv k2 WHERE k2.name = k.name AND k2.id <= ?4) \
                     AND k.deleted = 0 ORDER BY k.name LIMIT ?5",
                )
                .map_err(backend)?;
            let mut items = Vec::new();
            let rows = stmt
                .query_map(params![request.prefix, end, after, revision, limit], |r| {
                    Ok(KeyValue {
                        mod_revision: r.get(0)?,
                        key: r.get(1)?,
                        create_revision: r.get(2)?,
                        value: r.get(3)?,
                    })
                })
                .map_err(backend)?;
            for row in rows {
                let kv = row.map_err(backend)?;
                if kv.key.starts_with(&request.prefix) {
                    items.push(kv);
                }
            }
            let more = request.limit.is_some_and(|l| items.len() > l);
            if let Some(limit) = request.limit {
                items.truncate(limit);
            }
            Ok(ListResponse {
                items,
                revision,
                more,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Write::Create { key, value, reply })
            .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Write::Update {
            key,
            value,
            expected,
            reply,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue, StoreError> {
        let key = key.to_owned();
        self.write(|reply| Write::Delete {
            key,
            expected,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError> {
        // Subscribe before reading history, so no change falls between.
        let mut live = self.shared.events.subscribe();
        let upto = self.shared.current.load(Ordering::SeqCst);
        let check_after = after;
        self.read(move |conn| {
            let compacted = compacted(conn)?;
            if check_after < compacted {
                return Err(StoreError::Compacted {
                    compacted,
                    requested: check_after,
                });
            }
            Ok(())
        })
        .await?;
        let prefix = prefix.to_owned();
        let store_path = self.shared.path.clone();
        Ok(Box::pin(async_stream::stream! {
            let mut last = after;
            // History up to the revision current at subscription.
            while last < upto {
                let page_prefix = prefix.clone();
                let from = last;
                let page = tokio::task::spawn_blocking({
                    let path = store_path.clone();
                    move || -> Result<Vec<Event>, StoreError> {
                        let mut conn = connect(&path)?;
                        replay(&mut conn, &page_prefix, from, upto)
                    }
                })
                .await
                .map_err(|e| StoreError::Backend(e.to_string()));
                let page = match page {
                    Ok(Ok(page)) => page,
                    Ok(Err(error)) | Err(error) => {
                        yield Err(error);
                        return;
                    }
                };
                if page.is_empty() {
                    break;
                }
                for event in page {
                    last = event.revision();
                    yield Ok(event);
                }
            }
            last = last.max(upto);
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.revision() > last && event.key().starts_with(&prefix) {
                            last = event.revision();
                            yield Ok(Event::clone(&event));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        yield Err(StoreError::TooSlow);
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.write(|reply| Write::Compact { revision, reply }).await
    }
}
