//! DeviceTwin's tables in edgecore's SQLite database, as KubeEdge's
//! (devices.md §3.2):
//!
//! * `device(id PK, name, description, state, last_online)`;
//! * `device_twin(id, deviceid, name, description, expected, actual,
//!   expected_meta, actual_meta, expected_version, actual_version,
//!   optional, attr_type, metadata)`, values as text and metadata and
//!   versions as JSON, a deleted twin kept as a row of type `deleted`;
//! * `device_attr(id, deviceid, name, description, value, optional,
//!   attr_type, metadata)`, KubeEdge's attribute table, created so the
//!   file has KubeEdge's layout; v1beta1 Devices carry no attributes, so
//!   it stays empty.
//!
//! A device's rows change in one transaction, which takes the write lock
//! when it begins (MetaManager writes the same file); deleting a device
//! deletes its twins and attributes with it.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use super::types::{MemberDevice, MsgTwin, TwinValue, TypeMetadata, ValueMetadata};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device (
    id TEXT(64) PRIMARY KEY NOT NULL,
    name TEXT, description TEXT, state TEXT, last_online TEXT);
CREATE TABLE IF NOT EXISTS device_twin (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deviceid TEXT, name TEXT, description TEXT,
    expected TEXT, actual TEXT, expected_meta TEXT, actual_meta TEXT,
    expected_version TEXT, actual_version TEXT,
    optional INTEGER, attr_type TEXT, metadata TEXT);
CREATE INDEX IF NOT EXISTS device_twin_deviceid ON device_twin(deviceid, name);
CREATE TABLE IF NOT EXISTS device_attr (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deviceid TEXT, name TEXT, description TEXT, value TEXT,
    optional INTEGER, attr_type TEXT, metadata TEXT);
";

/// A device and its twins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDevice {
    /// Id, name, description, state, last online.
    pub device: MemberDevice,
    /// Twins by name.
    pub twins: BTreeMap<String, MsgTwin>,
}

/// The tables, on one connection.
pub struct TwinStore {
    connection: Connection,
}

impl std::fmt::Debug for TwinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinStore").finish_non_exhaustive()
    }
}

fn json<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value
        .as_ref()
        .and_then(|value| serde_json::to_string(value).ok())
}

fn parse<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

impl TwinStore {
    /// Opens (creating the tables if needed) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory shows as the open error below.
            let _ = std::fs::create_dir_all(dir);
        }
        let connection = crate::open_database(path)?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self { connection })
    }

    /// Every device with its twins.
    pub fn load(&self) -> rusqlite::Result<BTreeMap<String, StoredDevice>> {
        let mut devices = BTreeMap::new();
        let mut statement = self
            .connection
            .prepare("SELECT id, name, description, state, last_online FROM device")?;
        let rows = statement.query_map([], |row| {
            Ok(MemberDevice {
                id: row.get(0)?,
                name: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                description: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                state: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                last_online: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
            })
        })?;
        for device in rows {
            let device = device?;
            devices.insert(
                device.id.clone(),
                StoredDevice {
                    device,
                    twins: BTreeMap::new(),
                },
            );
        }
        let mut statement = self.connection.prepare(
            "SELECT deviceid, name, expected, actual, expected_meta, actual_meta,
                    expected_version, actual_version, optional, attr_type
             FROM device_twin",
        )?;
        let rows = statement.query_map([], |row| {
            let value = |value: Option<String>, meta: Option<String>| {
                value.map(|value| TwinValue {
                    value: Some(value),
                    metadata: parse::<ValueMetadata>(meta),
                })
            };
            let twin = MsgTwin {
                expected: value(row.get(2)?, row.get(4)?),
                actual: value(row.get(3)?, row.get(5)?),
                expected_version: parse(row.get(6)?),
                actual_version: parse(row.get(7)?),
                optional: row.get::<_, Option<bool>>(8)?,
                metadata: row
                    .get::<_, Option<String>>(9)?
                    .map(|value_type| TypeMetadata { value_type }),
            };
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, twin))
        })?;
        for row in rows {
            let (id, name, twin) = row?;
            if let Some(device) = devices.get_mut(&id) {
                device.twins.insert(name, twin);
            }
        }
        Ok(devices)
    }

    /// Writes `device` (its row and every twin) in one transaction.
    pub fn save(&mut self, device: &StoredDevice) -> rusqlite::Result<()> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let d = &device.device;
        tx.execute(
            "INSERT INTO device (id, name, description, state, last_online)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET name = ?2, description = ?3, state = ?4,
                 last_online = ?5",
            params![d.id, d.name, d.description, d.state, d.last_online],
        )?;
        tx.execute("DELETE FROM device_twin WHERE deviceid = ?1", params![d.id])?;
        for (name, twin) in &device.twins {
            let value = |v: &Option<TwinValue>| v.as_ref().and_then(|v| v.value.clone());
            let meta = |v: &Option<TwinValue>| json(&v.as_ref().and_then(|v| v.metadata));
            tx.execute(
                "INSERT INTO device_twin (deviceid, name, description, expected, actual,
                     expected_meta, actual_meta, expected_version, actual_version,
                     optional, attr_type, metadata)
                 VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '{}')",
                params![
                    d.id,
                    name,
                    value(&twin.expected),
                    value(&twin.actual),
                    meta(&twin.expected),
                    meta(&twin.actual),
                    json(&twin.expected_version),
                    json(&twin.actual_version),
                    twin.optional,
                    twin.value_type(),
                ],
            )?;
        }
        tx.commit()
    }

    /// Deletes device `id` and its twins in one transaction.
    pub fn delete(&mut self, id: &str) -> rusqlite::Result<()> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM device_twin WHERE deviceid = ?1", params![id])?;
        tx.execute("DELETE FROM device_attr WHERE deviceid = ?1", params![id])?;
        tx.execute("DELETE FROM device WHERE id = ?1", params![id])?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::TwinVersion;
    use super::*;

    #[test]
    fn devices_and_twins_survive_a_reopen_and_deletes_take_twins_and_attributes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("edgecore.db");
        let mut store = TwinStore::open(&path).expect("open");
        let mut device = StoredDevice {
            device: MemberDevice {
                id: "thermo-1".into(),
                name: "thermo-1".into(),
                description: "demo".into(),
                ..MemberDevice::default()
            },
            twins: BTreeMap::new(),
        };
        device.twins.insert(
            "temperature".into(),
            MsgTwin {
                expected: Some(TwinValue {
                    value: Some("20".into()),
                    metadata: Some(ValueMetadata { timestamp: 7 }),
                }),
                optional: Some(true),
                metadata: Some(TypeMetadata {
                    value_type: "int".into(),
                }),
                expected_version: Some(TwinVersion { cloud: 0, edge: 1 }),
                ..MsgTwin::default()
            },
        );
        store.save(&device).expect("save");
        // An attribute row, as KubeEdge's table holds them.
        store
            .connection
            .execute(
                "INSERT INTO device_attr (deviceid, name, value) VALUES ('thermo-1', 'vendor', 'x')",
                [],
            )
            .expect("attribute");
        drop(store);
        let mut store = TwinStore::open(&path).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.get("thermo-1"), Some(&device));
        store.delete("thermo-1").expect("delete");
        assert!(store.load().expect("load").is_empty());
        for table in ["device_twin", "device_attr"] {
            let rows: i64 = store
                .connection
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })
                .expect("count");
            assert_eq!(rows, 0, "{table}");
        }
    }

    /// MetaManager and DeviceTwin write the same file from two
    /// connections: neither write may fail with "database is locked".
    #[test]
    fn writes_beside_metamanager_wait_for_each_other() {
        use crate::metamanager::store::{MetaStore, ObjectKey};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("edgecore.db");
        let meta = MetaStore::open(&path).expect("meta store");
        let mut twins = TwinStore::open(&path).expect("twin store");
        let writer = std::thread::spawn(move || {
            for i in 0..200 {
                let key = ObjectKey::new("default", "device", format!("d{i}"));
                let object = serde_json::json!({"metadata": {"name": format!("d{i}"),
                    "resourceVersion": "1"}});
                meta.put_object(&key, &object).expect("MetaManager write");
            }
        });
        for i in 0..200 {
            let device = StoredDevice {
                device: MemberDevice {
                    id: format!("d{i}"),
                    name: format!("d{i}"),
                    ..MemberDevice::default()
                },
                twins: BTreeMap::new(),
            };
            twins.save(&device).expect("DeviceTwin write");
        }
        writer.join().expect("writer thread");
        assert_eq!(twins.load().expect("load").len(), 200);
    }
}
