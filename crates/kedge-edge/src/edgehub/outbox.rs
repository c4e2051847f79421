//! The outbox: status reports that must reach the cloud even across a lost
//! link or an edgecore restart (ARCHITECTURE.md, "Reliability model").
//!
//! Durable reports ([`is_durable`]) are pod and node status reports
//! (`podstatus`, `podpatch`, `nodestatus`, `nodepatch`) and device twin
//! reports (`…/twin/edge_updated`). EdgeHub writes each one here *before*
//! it sends it, resends every waiting report with its original `msg_id`
//! after each reconnect, and deletes it when a cloud message whose
//! `parent_msg_id` is that id arrives (the cloud's reply to the report).
//!
//! Reports are coalesced: only the newest report per resource and
//! operation waits, since a newer status supersedes an older one. Twin
//! reports carry only the properties that changed, so when one replaces
//! another their `twin` maps are merged (the newer value of a property
//! wins) and no property's report is lost.
//!
//! The outbox is bounded by a count of reports (`outboxCapacity`). When a
//! report for a new resource arrives and the outbox is full, the report
//! that has waited longest without being replaced is dropped: the newest
//! information is the most useful, and a report stuck that long is most
//! likely stale. Each drop is counted (`outbox_full`).
//!
//! The store is one SQLite file of its own (by default `edgehub.db` beside
//! edgecore's database), so EdgeHub never contends with MetaManager for its
//! database lock. Writes use WAL with `synchronous=FULL`: a report is on
//! disk before it goes on the wire.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use kedge_message::resource::EdgeResource;
use kedge_message::{Message, operation, resource_type};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// Whether `msg`, sent by an edge module to the cloud, is a report that
/// must not be lost: a pod or node status report, or a device twin report.
/// Replies (such as MetaManager's `"OK"` acknowledgements, which reuse the
/// resource of what they acknowledge) never are.
pub fn is_durable(msg: &Message) -> bool {
    let op = msg.router.operation.as_str();
    if msg.is_reply()
        || op == operation::RESPONSE
        || op == operation::ERROR
        || op == operation::KEEPALIVE
    {
        return false;
    }
    let resource = msg.router.resource.as_str();
    if resource.contains(resource_type::TWIN_EDGE_UPDATED) {
        return true;
    }
    EdgeResource::parse(resource).is_some_and(|r| {
        matches!(
            r.resource_type,
            resource_type::POD_STATUS
                | resource_type::POD_PATCH
                | resource_type::NODE_STATUS
                | resource_type::NODE_PATCH
        )
    })
}

/// The coalescing key: reports with the same key supersede each other.
/// The operation is part of it so that, say, a legacy `nodestatus`
/// `insert` (which creates the Node) is not replaced by an `update`.
fn coalescing_key(msg: &Message) -> String {
    format!("{} {}", msg.router.operation, msg.router.resource)
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The directory of the outbox file could not be created.
    #[error("cannot create the directory of the outbox {path}")]
    CreateDir {
        /// The outbox file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// An SQLite operation failed.
    #[error("outbox {path}: cannot {action}")]
    Sql {
        /// The outbox file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task doing the outbox's I/O failed.
    #[error("the outbox task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What [`Outbox::put`] did with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The first report waiting for its resource. `evicted` is the id of
    /// the oldest report dropped to make room, when the outbox was full.
    Added {
        /// The dropped report's `msg_id`.
        evicted: Option<String>,
    },
    /// The report replaced an older one for the same resource.
    Replaced {
        /// The replaced report's `msg_id`.
        previous: String,
    },
    /// Nothing changed: this report is already stored (a resend) or is
    /// older than the one stored for its resource.
    Unchanged,
}

/// One waiting report, as the in-memory index knows it.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    timestamp: i64,
}

/// The connection and an index of what it holds, so that the common
/// question ("does this reply acknowledge a report?") needs no query.
struct Inner {
    conn: Connection,
    by_key: HashMap<String, Entry>,
    by_id: HashMap<String, String>,
    next_seq: i64,
}

/// The SQLite outbox. Clones share one connection.
///
/// Every method does blocking file I/O: call it from a blocking thread
/// (`tokio::task::spawn_blocking`), except [`contains`](Self::contains)
/// and [`len`](Self::len), which only read the in-memory index. A plain
/// mutex guards the connection; it is never held across an `.await`.
#[derive(Clone)]
pub struct Outbox {
    path: Arc<PathBuf>,
    capacity: usize,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS edgehub_outbox (
    key       TEXT PRIMARY KEY,
    msg_id    TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS edgehub_outbox_msg_id ON edgehub_outbox (msg_id);
CREATE INDEX IF NOT EXISTS edgehub_outbox_seq ON edgehub_outbox (seq);
";

impl Outbox {
    /// Opens (creating it and its directory if needed) the outbox at
    /// `path`, holding at most `capacity` reports (at least one).
    pub fn open(path: impl AsRef<Path>, capacity: usize) -> Result<Self, OutboxError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let sql = |action: &'static str| {
            let path = path.clone();
            move |source| OutboxError::Sql {
                path,
                action,
                source,
            }
        };
        let conn = crate::open_database(&path).map_err(sql("open the database"))?;
        conn.execute_batch(SCHEMA)
            .map_err(sql("create the table"))?;

        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        let mut next_seq = 1;
        {
            let mut stmt = conn
                .prepare("SELECT key, msg_id, timestamp, seq FROM edgehub_outbox")
                .map_err(sql("read the reports"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(sql("read the reports"))?;
            for row in rows {
                let (key, id, timestamp, seq) = row.map_err(sql("read a report"))?;
                next_seq = next_seq.max(seq.saturating_add(1));
                by_id.insert(id.clone(), key.clone());
                by_key.insert(key, Entry { id, timestamp });
            }
        }
        Ok(Self {
            path: Arc::new(path),
            capacity: capacity.max(1),
            inner: Arc::new(Mutex::new(Inner {
                conn,
                by_key,
                by_id,
                next_seq,
            })),
        })
    }

    /// The file the outbox lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many reports wait.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether no report waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a report with this `msg_id` waits.
    pub fn contains(&self, msg_id: &str) -> bool {
        self.lock().by_id.contains_key(msg_id)
    }

    /// Stores `msg`, replacing an older report for the same resource and
    /// operation.
    pub fn put(&self, msg: &Message) -> Result<PutOutcome, OutboxError> {
        let key = coalescing_key(msg);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let seq = inner.next_seq;
        let existing = inner.by_key.get(&key).cloned();
        if let Some(entry) = &existing
            && (entry.id == msg.header.id || msg.header.timestamp < entry.timestamp)
        {
            return Ok(PutOutcome::Unchanged);
        }

        let tx = inner
            .conn
            .transaction()
            .map_err(self.sql("begin a transaction"))?;
        let mut stored = msg.clone();
        let mut evicted = None;
        if existing.is_some()
            && msg
                .router
                .resource
                .contains(resource_type::TWIN_EDGE_UPDATED)
        {
            let previous: Option<String> = tx
                .query_row(
                    "SELECT message FROM edgehub_outbox WHERE key = ?1",
                    params![key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(self.sql("read the previous twin report"))?;
            if let Some(previous) = previous.and_then(|text| decode(&text)) {
                merge_twin(&previous.content, &mut stored.content);
            }
        } else if existing.is_none() && inner.by_key.len() >= self.capacity {
            let oldest: Option<(String, String)> = tx
                .query_row(
                    "SELECT key, msg_id FROM edgehub_outbox ORDER BY seq LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(self.sql("find the oldest report"))?;
            if let Some((oldest_key, oldest_id)) = oldest {
                tx.execute(
                    "DELETE FROM edgehub_outbox WHERE key = ?1",
                    params![oldest_key],
                )
                .map_err(self.sql("drop the oldest report"))?;
                evicted = Some((oldest_key, oldest_id));
            }
        }
        let text = serde_json::to_string(&stored).unwrap_or_else(|_| "null".to_owned());
        tx.execute(
            "INSERT INTO edgehub_outbox (key, msg_id, timestamp, seq, message)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET
                msg_id = excluded.msg_id, timestamp = excluded.timestamp,
                seq = excluded.seq, message = excluded.message",
            params![key, stored.header.id, stored.header.timestamp, seq, text],
        )
        .map_err(self.sql("store a report"))?;
        tx.commit().map_err(self.sql("commit a report"))?;

        inner.next_seq = seq.saturating_add(1);
        if let Some((oldest_key, oldest_id)) = &evicted {
            inner.by_key.remove(oldest_key);
            inner.by_id.remove(oldest_id);
        }
        inner.by_id.insert(stored.header.id.clone(), key.clone());
        inner.by_key.insert(
            key,
            Entry {
                id: stored.header.id.clone(),
                timestamp: stored.header.timestamp,
            },
        );
        Ok(match existing {
            Some(previous) => {
                inner.by_id.remove(&previous.id);
                PutOutcome::Replaced {
                    previous: previous.id,
                }
            }
            None => PutOutcome::Added {
                evicted: evicted.map(|(_, id)| id),
            },
        })
    }

    /// Deletes the report whose `msg_id` is `parent_id`, if one waits:
    /// the cloud has answered it. Returns whether one was deleted.
    pub fn ack(&self, parent_id: &str) -> Result<bool, OutboxError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(key) = inner.by_id.get(parent_id).cloned() else {
            return Ok(false);
        };
        inner
            .conn
            .execute(
                "DELETE FROM edgehub_outbox WHERE msg_id = ?1",
                params![parent_id],
            )
            .map_err(self.sql("delete an acknowledged report"))?;
        inner.by_id.remove(parent_id);
        inner.by_key.remove(&key);
        Ok(true)
    }

    /// Every waiting report, oldest first, exactly as it was sent (same
    /// `msg_id`). Rows that no longer decode are deleted with a warning.
    pub fn pending(&self) -> Result<Vec<Message>, OutboxError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let rows: Vec<(String, String, String)> = {
            let mut stmt = inner
                .conn
                .prepare("SELECT key, msg_id, message FROM edgehub_outbox ORDER BY seq")
                .map_err(self.sql("list the reports"))?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(self.sql("list the reports"))?;
            rows.collect::<Result<_, _>>()
                .map_err(self.sql("read a report"))?
        };
        let mut messages = Vec::with_capacity(rows.len());
        for (key, id, text) in rows {
            match decode(&text) {
                Some(msg) => messages.push(msg),
                None => {
                    tracing::warn!(outbox = %self.path.display(), msg_id = %id, "dropping an unreadable report");
                    inner
                        .conn
                        .execute("DELETE FROM edgehub_outbox WHERE key = ?1", params![key])
                        .map_err(self.sql("drop an unreadable report"))?;
                    inner.by_key.remove(&key);
                    inner.by_id.remove(&id);
                }
            }
        }
        Ok(messages)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held with the index half
        // updated: the index is changed only after the database commits.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sql(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> OutboxError + use<> {
        let path = self.path.as_ref().clone();
        move |source| OutboxError::Sql {
            path,
            action,
            source,
        }
    }
}

fn decode(text: &str) -> Option<Message> {
    serde_json::from_str(text).ok()
}

/// Lays the `twin` map of `newer` over that of `older`: properties only the
/// older report carried are kept, the newer value of the others wins.
fn merge_twin(older: &Value, newer: &mut Value) {
    let (Some(old_twin), Some(new_twin)) = (
        older.get("twin").and_then(Value::as_object),
        newer.get_mut("twin").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    for (property, value) in old_twin {
        if !new_twin.contains_key(property) {
            new_twin.insert(property.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(resource: &str, content: Value) -> Message {
        Message::new("edged", "meta", operation::PATCH, resource, content)
    }

    fn twin_report(device: &str, twin: Value) -> Message {
        Message::new(
            "twin",
            "resource",
            operation::UPDATE,
            format!("device/{device}/twin/edge_updated"),
            json!({"event_id": "e", "timestamp": 1, "twin": twin}),
        )
    }

    fn open(dir: &tempfile::TempDir, capacity: usize) -> Outbox {
        Outbox::open(dir.path().join("sub/edgehub.db"), capacity).expect("outbox opens")
    }

    #[test]
    fn durable_reports_are_recognised() {
        let durable = [
            report("default/podpatch/nginx", json!("{}")),
            report("default/nodepatch/edge-1", json!("{}")),
            Message::new(
                "edged",
                "meta",
                "update",
                "default/podstatus/nginx",
                json!({}),
            ),
            Message::new("edged", "meta", "update", "default/podstatus", json!([])),
            Message::new(
                "edged",
                "meta",
                "insert",
                "default/nodestatus/edge-1",
                json!({}),
            ),
            twin_report("dev-1", json!({})),
        ];
        for msg in &durable {
            assert!(is_durable(msg), "{:?}", msg.router);
        }
        let ack = Message::new(
            "metamanager",
            "resource",
            "update",
            "default/podpatch/x",
            json!({}),
        )
        .ack();
        let not_durable = [
            ack,
            Message::keepalive(),
            report("kube-node-lease/lease/edge-1", json!({})),
            Message::new("edged", "meta", "query", "default/configmap/c", Value::Null),
            Message::new("twin", "resource", "get", "membership/detail", json!("{}")),
            Message::new(
                "twin",
                "resource",
                "update",
                "device/d/state/update",
                json!({}),
            ),
        ];
        for msg in &not_durable {
            assert!(!is_durable(msg), "{:?}", msg.router);
        }
    }

    #[test]
    fn coalescing_keeps_only_the_newest_report_per_resource() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(&dir, 10);
        let first = report("default/podpatch/a", json!("1"));
        let mut second = report("default/podpatch/a", json!("2"));
        second.header.timestamp = first.header.timestamp + 1;
        let other = report("default/podpatch/b", json!("x"));
        assert_eq!(
            outbox.put(&first).expect("put"),
            PutOutcome::Added { evicted: None }
        );
        assert_eq!(
            outbox.put(&other).expect("put"),
            PutOutcome::Added { evicted: None }
        );
        assert_eq!(
            outbox.put(&second).expect("put"),
            PutOutcome::Replaced {
                previous: first.header.id.clone()
            }
        );
        // A resend of the replaced (older) report changes nothing.
        assert_eq!(outbox.put(&first).expect("put"), PutOutcome::Unchanged);
        assert_eq!(outbox.put(&second).expect("put"), PutOutcome::Unchanged);
        let pending = outbox.pending().expect("pending");
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0], other);
        assert_eq!(pending[1], second);
        assert!(!outbox.contains(first.id()));
        assert!(outbox.contains(second.id()));
        // The reply to the replaced report acknowledges nothing.
        assert!(!outbox.ack(first.id()).expect("ack"));
        assert!(outbox.ack(second.id()).expect("ack"));
        assert_eq!(outbox.pending().expect("pending"), [other]);
    }

    #[test]
    fn same_resource_different_operation_both_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(&dir, 10);
        let insert = Message::new("edged", "meta", "insert", "default/nodestatus/n", json!({}));
        let update = Message::new("edged", "meta", "update", "default/nodestatus/n", json!({}));
        outbox.put(&insert).expect("put");
        outbox.put(&update).expect("put");
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn twin_reports_merge_their_properties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(&dir, 10);
        let first = twin_report(
            "dev-1",
            json!({"temp": {"actual": {"value": "20"}}, "hum": {"actual": {"value": "40"}}}),
        );
        let mut second = twin_report("dev-1", json!({"temp": {"actual": {"value": "21"}}}));
        second.header.timestamp = first.header.timestamp + 1;
        outbox.put(&first).expect("put");
        outbox.put(&second).expect("put");
        let pending = outbox.pending().expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id(), second.id());
        assert_eq!(
            pending[0].content["twin"],
            json!({"temp": {"actual": {"value": "21"}}, "hum": {"actual": {"value": "40"}}})
        );
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(&dir, 2);
        let a = report("default/podpatch/a", json!("a"));
        let b = report("default/podpatch/b", json!("b"));
        let mut a2 = report("default/podpatch/a", json!("a2"));
        a2.header.timestamp = a.header.timestamp + 1;
        let c = report("default/podpatch/c", json!("c"));
        outbox.put(&a).expect("put");
        outbox.put(&b).expect("put");
        // Replacing a's report makes b the one that waited longest.
        outbox.put(&a2).expect("put");
        assert_eq!(
            outbox.put(&c).expect("put"),
            PutOutcome::Added {
                evicted: Some(b.header.id.clone())
            }
        );
        assert_eq!(outbox.pending().expect("pending"), [a2, c]);
    }

    #[test]
    fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = report(
            "default/podpatch/a",
            json!({"status": {"phase": "Running"}}),
        );
        let b = twin_report("dev-1", json!({"temp": {"actual": {"value": "20"}}}));
        {
            let outbox = open(&dir, 10);
            outbox.put(&a).expect("put");
            outbox.put(&b).expect("put");
        }
        let reopened = open(&dir, 10);
        assert_eq!(reopened.len(), 2);
        assert!(reopened.contains(a.id()));
        assert_eq!(reopened.pending().expect("pending"), [a.clone(), b.clone()]);
        // New reports queue behind the old ones.
        let c = report("default/podpatch/c", json!("c"));
        reopened.put(&c).expect("put");
        assert!(reopened.ack(a.id()).expect("ack"));
        drop(reopened);
        let again = open(&dir, 10);
        assert_eq!(again.pending().expect("pending"), [b, c]);
    }

    #[test]
    fn unreadable_rows_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(&dir, 10);
        let a = report("default/podpatch/a", json!("a"));
        outbox.put(&a).expect("put");
        outbox
            .lock()
            .conn
            .execute("UPDATE edgehub_outbox SET message = 'garbage'", [])
            .expect("corrupt");
        assert!(outbox.pending().expect("pending").is_empty());
        assert!(outbox.is_empty());
    }
}
