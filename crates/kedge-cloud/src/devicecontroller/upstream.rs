//! Edge → cloud: DeviceTwin's reports written to Device status
//! (devices.md §2.3).
//!
//! | resource (after `node/<node>/`) | does |
//! |---|---|
//! | `device/<id>/twin/edge_updated` | sets `reported` (from `actual`) and `observedDesired` (from `expected`) of each twin in `status.twins` |
//! | `device/<id>/state/update` | sets `status.state` and `status.lastOnlineTime` |
//! | `membership/detail` | nothing: the edge keeps what membership updates told it |
//!
//! `<id>` is a device name (KubeEdge v1.15) or `<namespace>/<name>`
//! (v1.16 on). Both reports are written with one JSON merge patch and
//! acknowledged with `"OK"` (parent id = the report's id, resource
//! `node/<node>/twin`); nothing is acknowledged unless written, so the edge
//! reports again. A twin is added when the Device's spec has the property
//! (KubeEdge v1.15 ignored properties missing from a seeded status). A
//! report that changes nothing is acknowledged without a write. A node may
//! report only devices bound to it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kedge_apis::devices::{Device, DeviceStatus, Twin, TwinProperty};
use kedge_message::{Message, group, module, operation, resource, resource_type};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde::Deserialize;
use serde_json::{Value, json};

use super::downstream::Caches;
use crate::cloudhub::objectsync::SyncRecords;

/// How many times a status write is tried when the Device changed under it.
const WRITE_ATTEMPTS: usize = 3;

/// Why a report was refused, or not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The resource or content cannot be read.
    Malformed,
    /// No such device.
    UnknownDevice,
    /// The device is bound to another node.
    Forbidden,
    /// No handler for this resource.
    Unsupported,
    /// The API refused or failed the write.
    WriteFailed,
}

impl Refusal {
    /// The label of the refusal counter.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownDevice => "unknown_device",
            Self::Forbidden => "forbidden",
            Self::Unsupported => "unsupported",
            Self::WriteFailed => "write_failed",
        }
    }
}

/// What an upstream resource asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report<'a> {
    /// Twin values of the device `id`.
    Twin {
        /// The reporting node.
        node: &'a str,
        /// The device id.
        id: &'a str,
    },
    /// The state of the device `id`.
    State {
        /// The reporting node.
        node: &'a str,
        /// The device id.
        id: &'a str,
    },
    /// The edge asks which devices it holds.
    MembershipDetail,
}

/// Reads `node/<node>/device/<id>/twin/edge_updated`,
/// `node/<node>/device/<id>/state/update` and
/// `node/<node>/membership/detail`; `<id>` may hold one slash.
pub fn parse_report(res: &str) -> Option<Report<'_>> {
    let rest = res.strip_prefix("node/")?;
    let (node, rest) = rest.split_once('/')?;
    if node.is_empty() {
        return None;
    }
    if rest == resource_type::MEMBERSHIP_DETAIL {
        return Some(Report::MembershipDetail);
    }
    let rest = rest.strip_prefix("device/")?;
    let (id, twin) = match rest.strip_suffix("/twin/edge_updated") {
        Some(id) => (id, true),
        None => (rest.strip_suffix("/state/update")?, false),
    };
    let segments = id.split('/').count();
    if id.is_empty() || segments > 2 || id.split('/').any(str::is_empty) {
        return None;
    }
    Some(if twin {
        Report::Twin { node, id }
    } else {
        Report::State { node, id }
    })
}

/// One twin of an edge report (KubeEdge's `MsgTwin`), as far as the cloud
/// reads it.
#[derive(Debug, Clone, Default, Deserialize)]
struct ReportedTwin {
    #[serde(default)]
    actual: Option<ReportedValue>,
    #[serde(default)]
    expected: Option<ReportedValue>,
    #[serde(default)]
    metadata: Option<ReportedMetadata>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ReportedValue {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    metadata: Option<ValueMetadata>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ValueMetadata {
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ReportedMetadata {
    #[serde(rename = "type", default)]
    value_type: Option<String>,
}

/// A twin report: `{"event_id","timestamp","twin":{name: MsgTwin}}`.
#[derive(Debug, Default, Deserialize)]
struct TwinReport {
    #[serde(default)]
    twin: HashMap<String, Option<ReportedTwin>>,
}

/// A state report: `{"state": …}` or, as DeviceTwin's result carries it,
/// `{"device": {"state": …, "last_online": …}}`.
#[derive(Debug, Default, Deserialize)]
struct StateReport {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    last_online: Option<String>,
    #[serde(default)]
    device: Option<Box<StateReport>>,
}

/// The content of an upstream message as JSON: an object, a string of
/// JSON, or a base64 string of JSON (a Go `[]byte`).
fn content_json(msg: &Message) -> Option<Value> {
    match &msg.content {
        Value::String(text) => serde_json::from_str(text).ok().or_else(|| {
            let bytes = kedge_message::content::decode_base64(&msg.content)?;
            serde_json::from_slice(&bytes).ok()
        }),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// `twins` with the values of `report` applied; properties neither in
/// `twins` nor in `spec_properties` are left out.
fn apply_twin_report(twins: &[Twin], spec_properties: &[String], report: &TwinReport) -> Vec<Twin> {
    let mut twins = twins.to_vec();
    let mut names: Vec<(String, ReportedTwin)> = report
        .twin
        .iter()
        .filter_map(|(name, twin)| Some((name.clone(), twin.clone()?)))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, reported) in names {
        let value_type = reported.metadata.and_then(|m| m.value_type);
        let property = |value: ReportedValue| -> Option<TwinProperty> {
            let mut metadata = std::collections::BTreeMap::new();
            if let Some(timestamp) = value.metadata.and_then(|m| m.timestamp) {
                metadata.insert("timestamp".to_owned(), timestamp.to_string());
            }
            if let Some(value_type) = &value_type {
                metadata.insert("type".to_owned(), value_type.clone());
            }
            Some(TwinProperty {
                value: value.value?,
                metadata,
            })
        };
        let actual = reported.actual.and_then(property);
        let expected = reported.expected.and_then(property);
        if actual.is_none() && expected.is_none() {
            continue;
        }
        let index = match twins.iter().position(|twin| twin.property_name == name) {
            Some(index) => index,
            None if spec_properties.contains(&name) => {
                twins.push(Twin {
                    property_name: name.clone(),
                    ..Twin::default()
                });
                twins.len() - 1
            }
            None => continue,
        };
        let twin = &mut twins[index];
        if let Some(actual) = actual {
            twin.reported = Some(actual);
        }
        if let Some(expected) = expected {
            twin.observed_desired = Some(expected);
        }
    }
    twins
}

/// Twins compared without their timestamps: a report that only renews
/// timestamps changes nothing worth a write.
fn same_values(a: &[Twin], b: &[Twin]) -> bool {
    let strip = |twins: &[Twin]| -> Vec<Twin> {
        twins
            .iter()
            .cloned()
            .map(|mut twin| {
                for side in [&mut twin.reported, &mut twin.observed_desired]
                    .into_iter()
                    .flatten()
                {
                    side.metadata.remove("timestamp");
                }
                twin
            })
            .collect()
    };
    strip(a) == strip(b)
}

/// The upstream handlers.
#[derive(Clone)]
pub struct Upstream {
    client: kube::Client,
    caches: Caches,
    /// The newest status this controller wrote, by device UID and with
    /// the resourceVersion it got, for reports that come before the
    /// watch shows the write.
    written: Arc<Mutex<HashMap<String, (u64, DeviceStatus)>>>,
    /// One write at a time per device.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The size of `written` at which entries of deleted devices are
    /// dropped ([`Upstream::prune`]).
    prune_at: Arc<AtomicUsize>,
    /// What each node acknowledged.
    records: SyncRecords,
}

/// The fewest entries `written` holds before it is pruned.
const PRUNE_FLOOR: usize = 1024;

impl Upstream {
    /// Handlers writing through `client`, reading devices from `caches`,
    /// moving `records` along with their writes.
    pub fn new(client: kube::Client, caches: Caches, records: SyncRecords) -> Self {
        Self {
            client,
            caches,
            written: Arc::default(),
            locks: Arc::default(),
            prune_at: Arc::new(AtomicUsize::new(PRUNE_FLOOR)),
            records,
        }
    }

    /// Drops the last-written status and the write lock of devices that
    /// are gone, once `written` has grown to twice its size after the last
    /// pruning (and at least [`PRUNE_FLOOR`]): the maps then hold at most
    /// about twice the live devices, at an amortised constant cost.
    fn prune(&self) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if written.len() < self.prune_at.load(Ordering::Relaxed) {
            return;
        }
        let live: HashSet<String> = self
            .caches
            .devices
            .state()
            .iter()
            .filter_map(|device| device.uid())
            .collect();
        written.retain(|uid, _| live.contains(uid));
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|uid, lock| live.contains(uid) || Arc::strong_count(lock) > 1);
        self.prune_at
            .store((written.len() * 2).max(PRUNE_FLOOR), Ordering::Relaxed);
    }

    /// Handles one message from an edge node: the reply to send, if any.
    pub async fn handle(&self, msg: &Message) -> Result<Option<Message>, Refusal> {
        match parse_report(&msg.router.resource).ok_or(Refusal::Unsupported)? {
            Report::MembershipDetail => Ok(None),
            Report::Twin { node, id } => {
                let report: TwinReport = content_json(msg)
                    .and_then(|content| serde_json::from_value(content).ok())
                    .ok_or(Refusal::Malformed)?;
                let device = self.device(node, id)?;
                let spec_properties: Vec<String> = device
                    .spec
                    .properties
                    .iter()
                    .map(|property| property.name.clone())
                    .collect();
                self.write_status(node, &device, |status| {
                    let twins = apply_twin_report(&status.twins, &spec_properties, &report);
                    if same_values(&twins, &status.twins) {
                        return None;
                    }
                    Some(json!({"status": {"twins": twins}}))
                })
                .await?;
                Ok(Some(ack(node, msg)))
            }
            Report::State { node, id } => {
                let report: StateReport = content_json(msg)
                    .and_then(|content| serde_json::from_value(content).ok())
                    .ok_or(Refusal::Malformed)?;
                let report = match report.device {
                    Some(inner) => *inner,
                    None => report,
                };
                let state = report.state.ok_or(Refusal::Malformed)?;
                let device = self.device(node, id)?;
                self.write_status(node, &device, |status| {
                    let last_online = report
                        .last_online
                        .clone()
                        .unwrap_or_else(|| status.last_online_time.clone());
                    if status.state == state && status.last_online_time == last_online {
                        return None;
                    }
                    Some(json!({"status": {"state": &state, "lastOnlineTime": last_online}}))
                })
                .await?;
                Ok(Some(ack(node, msg)))
            }
        }
    }

    /// The device `id` names for `node`: `<namespace>/<name>`, or a bare
    /// name (the one bound to `node` if several namespaces hold it).
    fn device(&self, node: &str, id: &str) -> Result<Arc<Device>, Refusal> {
        let found = match id.split_once('/') {
            Some((namespace, name)) => self
                .caches
                .devices
                .get(&ObjectRef::new(name).within(namespace)),
            None => {
                let named: Vec<Arc<Device>> = self
                    .caches
                    .devices
                    .state()
                    .into_iter()
                    .filter(|device| device.name_any() == id)
                    .collect();
                named
                    .iter()
                    .find(|device| device.spec.node_name == node)
                    .or(named.first())
                    .cloned()
            }
        };
        let device = found.ok_or(Refusal::UnknownDevice)?;
        if device.spec.node_name != node {
            return Err(Refusal::Forbidden);
        }
        Ok(device)
    }

    /// Writes the merge patch `change` makes of the device's newest known
    /// status, if it makes one, with that status's resourceVersion as a
    /// precondition (read again after a conflict, up to
    /// [`WRITE_ATTEMPTS`] times). The write moves `node`'s sync record
    /// along: the node need not be sent its own report back.
    async fn write_status(
        &self,
        node: &str,
        device: &Device,
        change: impl Fn(&DeviceStatus) -> Option<Value>,
    ) -> Result<(), Refusal> {
        let uid = device.uid().unwrap_or_default();
        let name = device.name_any();
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(uid.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let api: Api<Device> =
            Api::namespaced(self.client.clone(), &device.namespace().unwrap_or_default());
        // The cache's copy, or what this controller wrote if that is newer.
        let mut base = {
            let written = self
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match written.get(&uid) {
                Some((version, status)) if *version > version_of(device) => {
                    (*version, status.clone())
                }
                _ => (
                    version_of(device),
                    device.status.clone().unwrap_or_default(),
                ),
            }
        };
        for _ in 0..WRITE_ATTEMPTS {
            let (version, status) = &base;
            let Some(mut patch) = change(status) else {
                return Ok(());
            };
            patch["metadata"] = json!({"resourceVersion": version.to_string()});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    let new_version = version_of(&updated);
                    self.records.advance(node, &uid, *version, new_version);
                    self.written
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(uid, (new_version, updated.status.unwrap_or_default()));
                    self.prune();
                    return Ok(());
                }
                Err(kube::Error::Api(response)) if response.code == 409 => {
                    let fresh = api.get(&name).await.map_err(|error| {
                        tracing::info!(device = %name, %error, "cannot read a device");
                        Refusal::WriteFailed
                    })?;
                    if fresh.uid().as_deref() != Some(uid.as_str()) {
                        return Err(Refusal::UnknownDevice);
                    }
                    base = (version_of(&fresh), fresh.status.unwrap_or_default());
                }
                Err(error) => {
                    tracing::info!(device = %name, %error, "cannot write a device's status");
                    return Err(Refusal::WriteFailed);
                }
            }
        }
        Err(Refusal::WriteFailed)
    }
}

fn version_of(device: &Device) -> u64 {
    device
        .resource_version()
        .and_then(|version| version.parse().ok())
        .unwrap_or(0)
}

/// The acknowledgement of a report from `node`: content `"OK"`, resource
/// `node/<node>/twin`.
fn ack(node: &str, report: &Message) -> Message {
    let resource = resource::device_resource(node, resource_type::TWIN, None)
        .unwrap_or_else(|_| format!("node/{node}/twin"));
    Message::new(
        module::DEVICE_CONTROLLER,
        group::TWIN,
        operation::RESPONSE,
        resource,
        Value::String(kedge_message::content::OK.to_owned()),
    )
    .with_parent_id(report.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_in_both_id_forms() {
        assert_eq!(
            parse_report("node/e1/device/thermo-1/twin/edge_updated"),
            Some(Report::Twin {
                node: "e1",
                id: "thermo-1"
            })
        );
        assert_eq!(
            parse_report("node/e1/device/default/thermo-1/twin/edge_updated"),
            Some(Report::Twin {
                node: "e1",
                id: "default/thermo-1"
            })
        );
        assert_eq!(
            parse_report("node/e1/device/default/thermo-1/state/update"),
            Some(Report::State {
                node: "e1",
                id: "default/thermo-1"
            })
        );
        assert_eq!(
            parse_report("node/e1/membership/detail"),
            Some(Report::MembershipDetail)
        );
        for bad in [
            "node/e1/device//twin/edge_updated",
            "node/e1/device/a/b/c/twin/edge_updated",
            "node//device/d/twin/edge_updated",
            "node/e1/device/d/twin/cloud_updated",
            "device/d/twin/edge_updated",
        ] {
            assert_eq!(parse_report(bad), None, "{bad}");
        }
    }

    fn report(content: Value) -> TwinReport {
        serde_json::from_value(content).expect("report")
    }

    #[test]
    fn reported_and_observed_desired_values_are_set_with_their_metadata() {
        let seeded = vec![Twin {
            property_name: "temperature".into(),
            reported: Some(TwinProperty {
                value: "0".into(),
                metadata: Default::default(),
            }),
            observed_desired: None,
        }];
        let twins = apply_twin_report(
            &seeded,
            &["temperature".into(), "humidity".into()],
            &report(json!({"event_id": "e", "timestamp": 1, "twin": {
                "temperature": {"actual": {"value": "21", "metadata": {"timestamp": 1700}},
                                "expected": {"value": "20"}, "metadata": {"type": "int"}},
                "humidity": {"actual": {"value": "40"}},
                "unknown": {"actual": {"value": "1"}},
                "nothing": null,
            }})),
        );
        assert_eq!(
            serde_json::to_value(&twins).expect("json"),
            json!([
                {"propertyName": "temperature",
                 "reported": {"value": "21", "metadata": {"timestamp": "1700", "type": "int"}},
                 "observedDesired": {"value": "20", "metadata": {"type": "int"}}},
                {"propertyName": "humidity", "reported": {"value": "40"}},
            ])
        );
        let again = apply_twin_report(
            &twins,
            &[],
            &report(
                json!({"twin": {"temperature": {"actual": {"value": "21", "metadata": {"timestamp": 1800}},
                "metadata": {"type": "int"}}}}),
            ),
        );
        assert!(same_values(&again, &twins), "only the timestamp changed");
    }

    #[test]
    fn content_is_read_as_an_object_a_json_string_or_base64() {
        let object = json!({"twin": {}});
        for content in [
            object.clone(),
            Value::String(object.to_string()),
            kedge_message::content::from_bytes(object.to_string().as_bytes()),
        ] {
            let msg = Message::new("twin", "resource", "update", "r", content);
            assert_eq!(content_json(&msg), Some(object.clone()));
        }
    }

    #[test]
    fn the_ack_answers_the_report_on_the_twin_resource() {
        let report = Message::new(
            "twin",
            "resource",
            "update",
            "node/e1/device/d/twin/edge_updated",
            json!({}),
        );
        let ack = ack("e1", &report);
        assert_eq!(ack.parent_id(), report.id());
        assert_eq!(ack.router.resource, "node/e1/twin");
        assert_eq!(ack.router.operation, "response");
        assert_eq!(ack.router.source, "devicecontroller");
        assert_eq!(ack.content, json!("OK"));
        assert!(!kedge_message::delivery::needs_ack(&ack));
    }
}
