//! MetaManager's SQLite store: the edge's offline source of truth
//! (edged.md §2.1, §3.12).
//!
//! One file (`database.dataSource`, by default `/var/lib/kubeedge/edgecore.db`)
//! in WAL mode with `synchronous=FULL`, so an object is on disk before the
//! cloud is told it arrived. Tables:
//!
//! * `meta(key PK, type, value)`, as KubeEdge's: `key` is the edge resource
//!   `<namespace>/<type>/<name>`, `type` the resource type token, `value`
//!   the object's JSON as received. edged's queries read it. Status patch
//!   rows (`podpatch`, `nodepatch`) live here too.
//! * `meta_v2(key PK, groupversionresource, namespace, name,
//!   resourceversion, value)`, as KubeEdge's, plus a Kedge column
//!   `revision`: the local revision of the row's last change. The
//!   MetaServer lists and watches it. Only the [`SERVED_TYPES`] go there.
//! * `kedge_meta_revision(id, revision)`: the last local revision handed
//!   out, so revisions keep growing across restarts.
//!
//! Objects are kept as the JSON received, never through typed structs. An
//! object whose `metadata.resourceVersion` is lower than the stored one's
//! (both compared as integers) is refused; when either does not parse as
//! an integer the newer message wins. Every change of a served type gets
//! the next local revision and is published on a broadcast channel and
//! in a bounded in-memory log ([`CHANGE_LOG_CAPACITY`]) from which a watch
//! resumes.
//!
//! [`MetaStore`] is a cheap handle; all handles share one connection
//! behind a mutex, held only for one statement or transaction. MetaManager
//! is the only writer; the MetaServer only reads.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::broadcast;

use kedge_message::resource::NULL_NAMESPACE;
use kedge_message::resource_type;

/// How many changes the store remembers for watches that resume from a
/// revision; a watch from an older revision is told to relist.
pub const CHANGE_LOG_CAPACITY: usize = 1024;

/// A resource type the MetaServer serves, and how it is named on the bus,
/// in `meta_v2` and in API paths.
#[derive(Debug, PartialEq, Eq)]
pub struct ServedType {
    /// The resource type token of edge resources (`pod`).
    pub resource_type: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name in paths (`pods`).
    pub plural: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// The types kept in `meta_v2` and served by the MetaServer.
pub static SERVED_TYPES: [ServedType; 7] = [
    served(resource_type::POD, "", "pods", "Pod", true),
    served(
        resource_type::CONFIGMAP,
        "",
        "configmaps",
        "ConfigMap",
        true,
    ),
    served(resource_type::SECRET, "", "secrets", "Secret", true),
    served("service", "", "services", "Service", true),
    served("endpoints", "", "endpoints", "Endpoints", true),
    served(resource_type::NODE, "", "nodes", "Node", false),
    served(
        resource_type::LEASE,
        "coordination.k8s.io",
        "leases",
        "Lease",
        true,
    ),
];

const fn served(
    resource_type: &'static str,
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ServedType {
    ServedType {
        resource_type,
        group,
        version: "v1",
        plural,
        kind,
        namespaced,
    }
}

impl ServedType {
    /// The served type of an edge resource type token.
    pub fn by_resource_type(token: &str) -> Option<&'static Self> {
        SERVED_TYPES.iter().find(|t| t.resource_type == token)
    }

    /// The served type at `group`/`version`/`plural`.
    pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Self> {
        SERVED_TYPES
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `groupversionresource` column, as Go's `GroupVersionResource.String()`
    /// spells it: `/v1, Resource=pods`.
    pub fn gvr_column(&self) -> String {
        format!("{}/{}, Resource={}", self.group, self.version, self.plural)
    }

    /// The namespace column: [`NULL_NAMESPACE`] for cluster-scoped types.
    fn namespace_column<'a>(&self, namespace: &'a str) -> &'a str {
        if self.namespaced {
            namespace
        } else {
            NULL_NAMESPACE
        }
    }

    /// The `meta_v2` key: `/<group|core>/<version>/<plural>/<namespace|null>/<name>`.
    fn v2_key(&self, namespace: &str, name: &str) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!(
            "/{group}/{}/{}/{}/{name}",
            self.version,
            self.plural,
            self.namespace_column(namespace)
        )
    }
}

/// An object's address in the store: its edge resource, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    /// The namespace token (`default`, or `null` for cluster scope).
    pub namespace: String,
    /// The resource type token (`pod`, `configmap`...).
    pub resource_type: String,
    /// The object name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(
        namespace: impl Into<String>,
        resource_type: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            resource_type: resource_type.into(),
            name: name.into(),
        }
    }

    /// The `meta` key: `<namespace>/<type>/<name>`.
    pub fn meta_key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.resource_type, self.name)
    }
}

/// How a change altered the served view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new object.
    Added,
    /// A changed object.
    Modified,
    /// A removed object; the change carries its last state.
    Deleted,
}

/// One change of a served object, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The local revision of the change.
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The object's type.
    pub served: &'static ServedType,
    /// The object as served (see [`served_object`]).
    pub object: Arc<Value>,
    /// For a modification, the object as served before it, so a watch can
    /// tell an object entering or leaving its selection.
    pub previous: Option<Arc<Value>>,
}

/// What [`MetaStore::put_object`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Stored,
    /// Refused: the stored object has a newer resourceVersion.
    Stale,
}

/// A served object read from `meta_v2`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedObject {
    /// The local revision of its last change.
    pub revision: u64,
    /// The resourceVersion the cloud gave it.
    pub cloud_resource_version: String,
    /// The object as served (see [`served_object`]).
    pub object: Value,
}

/// Why a watch cannot resume from a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The changes after it are no longer in the log.
    #[error("revision {requested} is too old; the oldest available is {oldest}")]
    TooOld {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision the log can resume from.
        oldest: u64,
    },
    /// The store has not reached it.
    #[error("revision {requested} is newer than the current revision {current}")]
    TooNew {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory of the database could not be created.
    #[error("cannot create the directory of the database {path}")]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// An SQLite operation failed.
    #[error("database {path}: cannot {action}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value is not JSON.
    #[error("database {path}: the value of {key} is not JSON")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The row's key.
        key: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking task doing the store's I/O failed.
    #[error("the database task failed")]
    Task(#[source] tokio::task::JoinError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR(256) NOT NULL PRIMARY KEY,
    type  VARCHAR(32)  NOT NULL DEFAULT '',
    value TEXT
);
CREATE INDEX IF NOT EXISTS meta_type ON meta(type);
CREATE TABLE IF NOT EXISTS meta_v2 (
    key                  VARCHAR(256) NOT NULL PRIMARY KEY,
    groupversionresource VARCHAR(256) NOT NULL DEFAULT '',
    namespace            VARCHAR(256) NOT NULL DEFAULT '',
    name                 VARCHAR(256) NOT NULL DEFAULT '',
    resourceversion      INTEGER      NOT NULL DEFAULT 0,
    value                TEXT,
    revision             INTEGER      NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS meta_v2_gvr ON meta_v2(groupversionresource, namespace, name);
CREATE TABLE IF NOT EXISTS kedge_meta_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    revision INTEGER NOT NULL
);
";

/// The connection and what must change together with it.
struct State {
    connection: Connection,
    revision: u64,
    log: VecDeque<Change>,
}

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
}

/// A handle on the store; clones share one connection.
#[derive(Clone)]
pub struct MetaStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// An object's `metadata.resourceVersion`.
pub fn resource_version_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// Whether an object at resourceVersion `incoming` is older than one at
/// `stored`: only when both parse as integers and `incoming` is smaller.
pub fn is_older(incoming: Option<&str>, stored: Option<&str>) -> bool {
    let parse = |rv: Option<&str>| rv.and_then(|rv| rv.parse::<u64>().ok());
    matches!((parse(incoming), parse(stored)), (Some(i), Some(s)) if i < s)
}

/// The object as the MetaServer serves it: `apiVersion` and `kind` filled
/// in when missing, and `metadata.resourceVersion` set to the local
/// `revision` of its last change, so lists, objects and watch events
/// agree on one revision sequence that a watch can resume from.
pub fn served_object(served: &ServedType, mut object: Value, revision: u64) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(served.api_version()));
        map.entry("kind")
            .or_insert_with(|| Value::String(served.kind.to_owned()));
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert(
                "resourceVersion".to_owned(),
                Value::String(revision.to_string()),
            );
        }
    }
    object
}

impl MetaStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let sql = |action: &'static str| {
            let path = path.clone();
            move |source| StoreError::Sql {
                path,
                action,
                source,
            }
        };
        let connection = crate::open_database(&path).map_err(sql("open"))?;
        connection
            .execute_batch(SCHEMA)
            .map_err(sql("create the tables"))?;
        let stored: Option<i64> = connection
            .query_row(
                "SELECT revision FROM kedge_meta_revision WHERE id = 0",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("read the revision"))?;
        let highest_row: i64 = connection
            .query_row(
                "SELECT COALESCE(MAX(revision), 0) FROM meta_v2",
                [],
                |row| row.get(0),
            )
            .map_err(sql("read the revision"))?;
        let revision = u64::try_from(stored.unwrap_or(0).max(highest_row)).unwrap_or(0);
        let (changes, _) = broadcast::channel(CHANGE_LOG_CAPACITY);
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                state: Mutex::new(State {
                    connection,
                    revision,
                    log: VecDeque::new(),
                }),
                changes,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The current local revision.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Runs `work` on a blocking thread with a clone of this handle.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&MetaStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .unwrap_or_else(|join| Err(StoreError::Task(join)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock with the state half
        // changed (a failed transaction rolls back): take it back.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn sql(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql {
            path: self.shared.path.clone(),
            action,
            source,
        }
    }

    fn parse(&self, key: &str, text: &str) -> Result<Value, StoreError> {
        serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
            path: self.shared.path.clone(),
            key: key.to_owned(),
            source,
        })
    }

    /// Stores `object` under `key` in `meta` and, for a served type, in
    /// `meta_v2`, unless the stored object is newer.
    pub fn put_object(&self, key: &ObjectKey, object: &Value) -> Result<PutOutcome, StoreError> {
        let meta_key = key.meta_key();
        let text = object.to_string();
        let incoming_rv = resource_version_of(object);
        let served = ServedType::by_resource_type(&key.resource_type);
        let mut state = self.lock();
        let State {
            connection,
            revision,
            log,
        } = &mut *state;
        // IMMEDIATE: the write lock from the start, so that another
        // connection's write (DeviceTwin's) between this read and write
        // makes it wait instead of failing with "database is locked".
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.sql("begin a transaction"))?;
        let previous: Option<Option<String>> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [&meta_key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sql("read an object"))?;
        let previous = previous.flatten();
        if let Some(previous) = &previous {
            let stored = self.parse(&meta_key, previous)?;
            if is_older(incoming_rv, resource_version_of(&stored)) {
                return Ok(PutOutcome::Stale);
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, ?2, ?3)",
            params![meta_key, key.resource_type, text],
        )
        .map_err(self.sql("write an object"))?;
        let mut change = None;
        if let Some(served) = served {
            let v2_key = served.v2_key(&key.namespace, &key.name);
            let before: Option<(Option<String>, i64)> = tx
                .query_row(
                    "SELECT value, revision FROM meta_v2 WHERE key = ?1",
                    [&v2_key],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(self.sql("read an object"))?;
            let served_before = match before {
                Some((Some(text), revision)) => {
                    let raw = self.parse(&v2_key, &text)?;
                    Some(Arc::new(self.served_row(served, raw, revision).object))
                }
                _ => None,
            };
            let next = *revision + 1;
            let cloud_rv = incoming_rv
                .and_then(|rv| rv.parse::<i64>().ok())
                .unwrap_or(0);
            tx.execute(
                "INSERT OR REPLACE INTO meta_v2 \
                 (key, groupversionresource, namespace, name, resourceversion, value, revision) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    v2_key,
                    served.gvr_column(),
                    served.namespace_column(&key.namespace),
                    key.name,
                    cloud_rv,
                    text,
                    i64::try_from(next).unwrap_or(i64::MAX),
                ],
            )
            .map_err(self.sql("write an object"))?;
            save_revision(&tx, next).map_err(self.sql("write the revision"))?;
            change = Some(Change {
                revision: next,
                kind: if previous.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                },
                served,
                object: Arc::new(served_object(served, object.clone(), next)),
                previous: served_before,
            });
        }
        tx.commit().map_err(self.sql("commit"))?;
        if let Some(change) = change {
            *revision = change.revision;
            self.publish(log, change);
        }
        Ok(PutOutcome::Stored)
    }

    /// Stores a row that is not an object (a status patch) in `meta`.
    pub fn put_row(&self, key: &ObjectKey, value: &str) -> Result<(), StoreError> {
        self.lock()
            .connection
            .execute(
                "INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, ?2, ?3)",
                params![key.meta_key(), key.resource_type, value],
            )
            .map_err(self.sql("write a row"))?;
        Ok(())
    }

    /// Deletes the object at `key` from both tables. With `uid`, a stored
    /// object whose `metadata.uid` differs is kept (it is a re-created
    /// object of the same name). Deleting a pod also deletes its
    /// `podpatch` row. Returns whether an object was deleted.
    pub fn delete_object(&self, key: &ObjectKey, uid: Option<&str>) -> Result<bool, StoreError> {
        let meta_key = key.meta_key();
        let served = ServedType::by_resource_type(&key.resource_type);
        let mut state = self.lock();
        let State {
            connection,
            revision,
            log,
        } = &mut *state;
        // IMMEDIATE: the write lock from the start, so that another
        // connection's write (DeviceTwin's) between this read and write
        // makes it wait instead of failing with "database is locked".
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.sql("begin a transaction"))?;
        let stored: Option<Option<String>> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [&meta_key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sql("read an object"))?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let stored = match stored {
            Some(text) => self.parse(&meta_key, &text)?,
            None => Value::Null,
        };
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            let stored_uid = stored.pointer("/metadata/uid").and_then(Value::as_str);
            if stored_uid.is_some_and(|s| s != uid) {
                return Ok(false);
            }
        }
        tx.execute("DELETE FROM meta WHERE key = ?1", [&meta_key])
            .map_err(self.sql("delete an object"))?;
        if key.resource_type == resource_type::POD {
            let patch = ObjectKey::new(&key.namespace, resource_type::POD_PATCH, &key.name);
            tx.execute("DELETE FROM meta WHERE key = ?1", [patch.meta_key()])
                .map_err(self.sql("delete a pod patch"))?;
        }
        let mut change = None;
        if let Some(served) = served {
            let deleted = tx
                .execute(
                    "DELETE FROM meta_v2 WHERE key = ?1",
                    [served.v2_key(&key.namespace, &key.name)],
                )
                .map_err(self.sql("delete an object"))?;
            if deleted > 0 {
                let next = *revision + 1;
                save_revision(&tx, next).map_err(self.sql("write the revision"))?;
                change = Some(Change {
                    revision: next,
                    kind: ChangeKind::Deleted,
                    served,
                    object: Arc::new(served_object(served, stored, next)),
                    previous: None,
                });
            }
        }
        tx.commit().map_err(self.sql("commit"))?;
        if let Some(change) = change {
            *revision = change.revision;
            self.publish(log, change);
        }
        Ok(true)
    }

    /// Adds a change to the log and tells the watches.
    fn publish(&self, log: &mut VecDeque<Change>, change: Change) {
        if log.len() == CHANGE_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(change.clone());
        // No receivers is fine: nobody watches.
        let _ = self.shared.changes.send(change);
    }

    /// The `meta` value at `key`, parsed.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let meta_key = key.meta_key();
        let text: Option<Option<String>> = self
            .lock()
            .connection
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [&meta_key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sql("read an object"))?;
        match text.flatten() {
            Some(text) => self.parse(&meta_key, &text).map(Some),
            None => Ok(None),
        }
    }

    /// Every `meta` value of `resource_type`, in every namespace (as
    /// KubeEdge's query by type), ordered by key.
    pub fn list_type(&self, resource_type: &str) -> Result<Vec<Value>, StoreError> {
        let state = self.lock();
        let mut statement = state
            .connection
            .prepare_cached("SELECT key, value FROM meta WHERE type = ?1 ORDER BY key")
            .map_err(self.sql("list objects"))?;
        let rows = statement
            .query_map([resource_type], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
            })
            .map_err(self.sql("list objects"))?;
        let mut values = Vec::new();
        for row in rows {
            let (key, text) = row.map_err(self.sql("list objects"))?;
            if let Some(text) = text {
                values.push(self.parse(&key, &text)?);
            }
        }
        Ok(values)
    }

    /// One served object.
    pub fn get_served(
        &self,
        served: &'static ServedType,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ServedObject>, StoreError> {
        let key = served.v2_key(namespace, name);
        let row: Option<(i64, Option<String>, i64)> = self
            .lock()
            .connection
            .query_row(
                "SELECT resourceversion, value, revision FROM meta_v2 WHERE key = ?1",
                [&key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(self.sql("read an object"))?;
        let Some((_, Some(text), revision)) = row else {
            return Ok(None);
        };
        let raw = self.parse(&key, &text)?;
        Ok(Some(self.served_row(served, raw, revision)))
    }

    fn served_row(&self, served: &'static ServedType, raw: Value, revision: i64) -> ServedObject {
        let revision = u64::try_from(revision).unwrap_or(0);
        let cloud_resource_version = resource_version_of(&raw).unwrap_or("").to_owned();
        ServedObject {
            revision,
            cloud_resource_version,
            object: served_object(served, raw, revision),
        }
    }

    /// The served objects of a type, in one namespace or all, ordered by
    /// namespace and name, with the store's revision at that moment.
    pub fn list_served(
        &self,
        served: &'static ServedType,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let state = self.lock();
        let items = self.list_locked(&state, served, namespace)?;
        Ok((items, state.revision))
    }

    fn list_locked(
        &self,
        state: &State,
        served: &'static ServedType,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut statement = state
            .connection
            .prepare_cached(
                "SELECT key, value, revision FROM meta_v2 \
                 WHERE groupversionresource = ?1 AND (?2 IS NULL OR namespace = ?2) \
                 ORDER BY namespace, name",
            )
            .map_err(self.sql("list objects"))?;
        let rows = statement
            .query_map(params![served.gvr_column(), namespace], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.sql("list objects"))?;
        let mut items = Vec::new();
        for row in rows {
            let (key, text, revision) = row.map_err(self.sql("list objects"))?;
            if let Some(text) = text {
                let raw = self.parse(&key, &text)?;
                items.push(self.served_row(served, raw, revision).object);
            }
        }
        Ok(items)
    }

    /// For a watch without a revision: the served objects now, the
    /// revision they are at, and the changes after it.
    pub fn snapshot_and_subscribe(
        &self,
        served: &'static ServedType,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64, broadcast::Receiver<Change>), StoreError> {
        let state = self.lock();
        let items = self.list_locked(&state, served, namespace)?;
        // Subscribed under the lock: no change falls between the two.
        Ok((items, state.revision, self.shared.changes.subscribe()))
    }

    /// For a watch from `revision`: the logged changes after it and the
    /// changes to come.
    pub fn changes_since(
        &self,
        revision: u64,
    ) -> Result<(Vec<Change>, broadcast::Receiver<Change>), ResumeError> {
        let state = self.lock();
        if revision > state.revision {
            return Err(ResumeError::TooNew {
                requested: revision,
                current: state.revision,
            });
        }
        // The log resumes from the revision just before its first change.
        let oldest = state.log.front().map_or(state.revision, |c| c.revision - 1);
        if revision < oldest {
            return Err(ResumeError::TooOld {
                requested: revision,
                oldest,
            });
        }
        let missed = state
            .log
            .iter()
            .filter(|c| c.revision > revision)
            .cloned()
            .collect();
        Ok((missed, self.shared.changes.subscribe()))
    }
}

fn save_revision(tx: &rusqlite::Transaction<'_>, revision: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO kedge_meta_revision (id, revision) VALUES (0, ?1)",
        [i64::try_from(revision).unwrap_or(i64::MAX)],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, rv: &str, uid: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": uid},
               "spec": {"nodeName": "edge-1"}, "x-unknown": {"kept": true}})
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", "pod", name)
    }

    #[test]
    fn objects_are_kept_as_received_and_older_versions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path().join("edgecore.db")).unwrap();
        assert_eq!(
            store.put_object(&key("a"), &pod("a", "10", "u1")).unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.put_object(&key("a"), &pod("a", "9", "u1")).unwrap(),
            PutOutcome::Stale
        );
        assert_eq!(store.get(&key("a")).unwrap(), Some(pod("a", "10", "u1")));
        // Not an integer: the newer message wins.
        assert_eq!(
            store.put_object(&key("a"), &pod("a", "x", "u1")).unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(store.list_type("pod").unwrap().len(), 1);
        assert_eq!(store.revision(), 2, "one revision per stored change");
    }

    #[test]
    fn deletes_are_uid_guarded_and_take_the_patch_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path().join("edgecore.db")).unwrap();
        store.put_object(&key("a"), &pod("a", "1", "u1")).unwrap();
        let patch = ObjectKey::new("default", "podpatch", "a");
        store.put_row(&patch, "{\"status\":{}}").unwrap();
        assert!(!store.delete_object(&key("a"), Some("other")).unwrap());
        assert!(store.delete_object(&key("a"), Some("u1")).unwrap());
        assert_eq!(store.get(&key("a")).unwrap(), None);
        assert_eq!(store.get(&patch).unwrap(), None);
        assert!(!store.delete_object(&key("a"), None).unwrap());
    }

    #[test]
    fn served_view_and_watch_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path().join("edgecore.db")).unwrap();
        let pods = ServedType::by_resource_type("pod").unwrap();
        store.put_object(&key("a"), &pod("a", "100", "u1")).unwrap();
        let (items, revision, _) = store.snapshot_and_subscribe(pods, None).unwrap();
        assert_eq!(revision, 1);
        assert_eq!(items[0]["metadata"]["resourceVersion"], "1");
        store.put_object(&key("b"), &pod("b", "101", "u2")).unwrap();
        store.delete_object(&key("a"), None).unwrap();
        let (missed, _) = store.changes_since(1).unwrap();
        let kinds: Vec<_> = missed.iter().map(|c| (c.revision, c.kind)).collect();
        assert_eq!(
            kinds,
            [(2, ChangeKind::Added), (3, ChangeKind::Deleted)],
            "changes after the revision, in order"
        );
        assert!(matches!(
            store.changes_since(9),
            Err(ResumeError::TooNew { .. })
        ));
        let served = store.get_served(pods, "default", "b").unwrap().unwrap();
        assert_eq!(served.cloud_resource_version, "101");
        assert_eq!(served.object["metadata"]["resourceVersion"], "2");
        assert_eq!(served.object["x-unknown"]["kept"], true);
    }

    #[test]
    fn reopening_keeps_objects_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("edgecore.db");
        {
            let store = MetaStore::open(&path).unwrap();
            store.put_object(&key("a"), &pod("a", "1", "u1")).unwrap();
            store.delete_object(&key("a"), None).unwrap();
            store.put_object(&key("b"), &pod("b", "2", "u2")).unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.revision(), 3);
        assert_eq!(store.get(&key("b")).unwrap(), Some(pod("b", "2", "u2")));
        // Nothing logged since the restart: only the current revision resumes.
        assert!(store.changes_since(3).is_ok());
        assert!(matches!(
            store.changes_since(2),
            Err(ResumeError::TooOld { .. })
        ));
        let nodes = ServedType::by_resource_type("node").unwrap();
        store
            .put_object(
                &ObjectKey::new("default", "node", "edge-1"),
                &json!({"metadata": {"name": "edge-1"}}),
            )
            .unwrap();
        let (items, _) = store.list_served(nodes, None).unwrap();
        assert_eq!(items[0]["kind"], "Node");
        assert!(
            store
                .get_served(nodes, "other", "edge-1")
                .unwrap()
                .is_some()
        );
    }
}
