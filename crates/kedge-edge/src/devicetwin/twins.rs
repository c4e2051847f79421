//! The devices of this node and their twins: membership from the cloud,
//! and the `$hw/events/...` requests of mappers and applications, with
//! KubeEdge's payloads and merge rules (devices.md §3.4–3.8).
//!
//! Differences from KubeEdge v1.15, all on the safe side: an update is
//! checked whole before anything changes (one bad twin refuses the
//! request, and nothing is stored); a value equal to the stored one is
//! not a change, so it bumps no version and is not reported to the cloud
//! again; a failed write leaves memory as it was.

use std::collections::BTreeMap;
use std::path::Path;

use kedge_message::{Message, group, module, operation};
use serde_json::{Value, json};

use super::store::{StoredDevice, TwinStore};
use super::types::{
    DELETED, EventRequest, MAX_NAME, MAX_VALUE, MemberDevice, MembershipUpdate, MsgTwin, STATES,
    StateUpdate, TwinUpdate, TwinValue, TwinVersion, TypeMetadata, ValueMetadata, error_payload,
    is_twin_text, payload, value_fits,
};

/// What handling a request produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A payload to publish on an MQTT topic through EventBus.
    Publish {
        /// The topic.
        topic: String,
        /// The JSON payload.
        payload: Value,
    },
    /// A message for the cloud, through EdgeHub.
    ToCloud(Box<Message>),
}

/// A request topic DeviceTwin answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `$hw/events/device/<id>/twin/update`.
    TwinUpdate(&'a str),
    /// `$hw/events/device/<id>/twin/get`.
    TwinGet(&'a str),
    /// `$hw/events/device/<id>/state/update`.
    StateUpdate(&'a str),
    /// `$hw/events/node/<node>/membership/get`.
    MembershipGet(&'a str),
}

const DEVICE_PREFIX: &str = "$hw/events/device/";
const NODE_PREFIX: &str = "$hw/events/node/";

/// Reads a request topic; `<id>` is a device name or
/// `<namespace>/<name>`.
pub fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    if let Some(rest) = topic.strip_prefix(DEVICE_PREFIX) {
        let valid = |id: &str| {
            let segments: Vec<&str> = id.split('/').collect();
            segments.len() <= 2 && segments.iter().all(|s| !s.is_empty())
        };
        let id = |suffix: &str| rest.strip_suffix(suffix).filter(|id| valid(id));
        return if let Some(id) = id("/twin/update") {
            Some(Topic::TwinUpdate(id))
        } else if let Some(id) = id("/twin/get") {
            Some(Topic::TwinGet(id))
        } else {
            id("/state/update").map(Topic::StateUpdate)
        };
    }
    let node = topic
        .strip_prefix(NODE_PREFIX)?
        .strip_suffix("/membership/get")?;
    (!node.is_empty() && !node.contains('/')).then_some(Topic::MembershipGet(node))
}

/// Each changed twin as `(last, current)`, by name; `None` is absent or
/// deleted.
type Changes = BTreeMap<String, (Option<MsgTwin>, Option<MsgTwin>)>;

/// A request refused with a code and reason.
#[derive(Debug)]
struct Refused {
    code: u16,
    reason: String,
}

fn refused(code: u16, reason: impl Into<String>) -> Refused {
    Refused {
        code,
        reason: reason.into(),
    }
}

/// Local time as KubeEdge writes `last_online`.
fn local_time_text() -> String {
    jiff::ZonedDateTime::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The devices of this node, in memory and in SQLite.
#[derive(Debug)]
pub struct Twins {
    node: String,
    store: TwinStore,
    devices: BTreeMap<String, StoredDevice>,
}

impl Twins {
    /// The devices of `node` stored at `database`.
    pub fn open(node: &str, database: &Path) -> rusqlite::Result<Self> {
        let store = TwinStore::open(database)?;
        let devices = store.load()?;
        Ok(Self {
            node: node.to_owned(),
            store,
            devices,
        })
    }

    /// The devices known, by id.
    pub fn devices(&self) -> &BTreeMap<String, StoredDevice> {
        &self.devices
    }

    fn membership_topic(&self) -> String {
        format!("{NODE_PREFIX}{}/membership/updated", self.node)
    }

    /// Applies a membership update from the cloud: devices added are
    /// stored, removed ones deleted with their twins; each is announced on
    /// `…/membership/updated`.
    pub fn membership(&mut self, update: MembershipUpdate, now: i64) -> Vec<Output> {
        let mut out = Vec::new();
        for added in update.added_devices.unwrap_or_default() {
            if added.id.is_empty() {
                continue;
            }
            let known = self.devices.get(&added.id).cloned();
            let mut device = known.clone().unwrap_or_default();
            device.device.id = added.id.clone();
            device.device.name = added.name.clone();
            device.device.description = added.description.clone();
            if known.as_ref() == Some(&device) {
                continue;
            }
            if let Err(error) = self.store.save(&device) {
                tracing::warn!(device = %added.id, %error, "cannot store a device");
                continue;
            }
            self.devices.insert(added.id.clone(), device.clone());
            if known.is_none() {
                out.push(Output::Publish {
                    topic: self.membership_topic(),
                    payload: payload(
                        &uuid::Uuid::new_v4().to_string(),
                        now,
                        json!({"added_devices": [device.device], "removed_devices": null}),
                    ),
                });
            }
        }
        for removed in update.removed_devices.unwrap_or_default() {
            let Some(device) = self.devices.get(&removed.id).cloned() else {
                continue;
            };
            if let Err(error) = self.store.delete(&removed.id) {
                tracing::warn!(device = %removed.id, %error, "cannot delete a device");
                continue;
            }
            self.devices.remove(&removed.id);
            out.push(Output::Publish {
                topic: self.membership_topic(),
                payload: payload(
                    &uuid::Uuid::new_v4().to_string(),
                    now,
                    json!({"added_devices": null, "removed_devices": [device.device]}),
                ),
            });
        }
        out
    }

    /// Handles a request published on `topic`; other topics produce
    /// nothing.
    pub fn on_topic(&mut self, topic: &str, body: &[u8], now: i64) -> Vec<Output> {
        match parse_topic(topic) {
            Some(Topic::TwinUpdate(id)) => {
                let id = self.known_id(id).to_owned();
                self.twin_update(topic, &id, body, now)
            }
            Some(Topic::TwinGet(id)) => {
                let id = self.known_id(id).to_owned();
                self.twin_get(topic, &id, body, now)
            }
            Some(Topic::StateUpdate(id)) => {
                let id = self.known_id(id).to_owned();
                self.state_update(&id, body, now)
            }
            Some(Topic::MembershipGet(node)) => self.membership_get(topic, node, body, now),
            None => Vec::new(),
        }
    }

    /// The desired values a Device object from the cloud carries
    /// (`spec.properties[].desired.value`, by property), merged as the
    /// cloud's (KubeEdge's `twin/cloud_updated`): a changed desired value
    /// is stored with its cloud version bumped, and announced on
    /// `$hw/events/device/<id>/twin/update/document` and, when it differs
    /// from the reported value, `…/delta`, so that MQTT mappers see it.
    /// Nothing goes back to the cloud. A value that is not valid twin text
    /// or does not fit the twin's type is skipped and logged.
    pub fn cloud_desired(
        &mut self,
        id: &str,
        desired: &BTreeMap<String, String>,
        now: i64,
    ) -> Vec<Output> {
        let Some(device) = self.devices.get(id) else {
            return Vec::new();
        };
        let mut twins = device.twins.clone();
        let mut changes = Changes::new();
        for (name, value) in desired {
            let current = twins.get(name).filter(|twin| !twin.is_deleted()).cloned();
            let held = current
                .as_ref()
                .and_then(|twin| twin.expected.as_ref())
                .and_then(|expected| expected.value.as_deref());
            if held == Some(value.as_str()) {
                continue;
            }
            let mut next = current.clone().unwrap_or(MsgTwin {
                optional: Some(true),
                ..MsgTwin::default()
            });
            let valid = is_twin_text(name, MAX_NAME)
                && is_twin_text(value, MAX_VALUE)
                && value_fits(next.value_type(), value).is_ok();
            if !valid {
                tracing::warn!(device = id, twin = %name, value = %value, "devicetwin: desired value from the cloud not taken");
                continue;
            }
            if next.metadata.is_none() {
                next.metadata = Some(TypeMetadata {
                    value_type: "string".to_owned(),
                });
            }
            next.expected = Some(TwinValue {
                value: Some(value.clone()),
                metadata: Some(ValueMetadata { timestamp: now }),
            });
            let mut version = next.expected_version.unwrap_or_default();
            version.cloud += 1;
            next.expected_version = Some(version);
            changes.insert(name.clone(), (current, Some(next.clone())));
            twins.insert(name.clone(), next);
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let mut device = device.clone();
        device.twins = twins;
        if let Err(error) = self.store.save(&device) {
            tracing::error!(device = id, %error, "devicetwin: cannot store desired values from the cloud");
            return Vec::new();
        }
        let event_id = uuid::Uuid::new_v4().to_string();
        let topic = format!("{DEVICE_PREFIX}{id}/twin/update");
        let document: BTreeMap<&String, Value> = changes
            .iter()
            .map(|(name, (last, current))| (name, json!({"last": last, "current": current})))
            .collect();
        let mut out = vec![Output::Publish {
            topic: format!("{topic}/document"),
            payload: payload(&event_id, now, json!({"twin": document})),
        }];
        if let Some(delta) = delta(&device.twins) {
            out.push(Output::Publish {
                topic: format!("{topic}/delta"),
                payload: payload(&event_id, now, delta),
            });
        }
        self.devices.insert(id.to_owned(), device);
        out
    }

    /// The id under which this node holds the device a request names:
    /// `<namespace>/<name>` and `<name>` name the same device, whichever
    /// form its membership used.
    fn known_id<'a>(&self, id: &'a str) -> &'a str {
        if self.devices.contains_key(id) {
            return id;
        }
        match id.split_once('/') {
            Some((_, name)) if self.devices.contains_key(name) => name,
            _ => id,
        }
    }

    fn twin_update(&mut self, topic: &str, id: &str, body: &[u8], now: i64) -> Vec<Output> {
        let result_topic = format!("{topic}/result");
        let request: TwinUpdate = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => {
                return vec![Output::Publish {
                    topic: result_topic,
                    payload: error_payload("", now, 400, &format!("malformed update: {error}")),
                }];
            }
        };
        let event_id = request.event_id.clone();
        let outcome = self.apply_update(id, request, now);
        let (result, changes) = match outcome {
            Ok(done) => done,
            Err(refusal) => {
                return vec![Output::Publish {
                    topic: result_topic,
                    payload: error_payload(&event_id, now, refusal.code, &refusal.reason),
                }];
            }
        };
        let mut out = vec![Output::Publish {
            topic: result_topic,
            payload: payload(&event_id, now, json!({"twin": result})),
        }];
        if changes.is_empty() {
            return out;
        }
        let device = &self.devices[id];
        // Answered in the form the request used.
        let device_topic = topic;
        let document: BTreeMap<&String, Value> = changes
            .iter()
            .map(|(name, (last, current))| (name, json!({"last": last, "current": current})))
            .collect();
        out.push(Output::Publish {
            topic: format!("{device_topic}/document"),
            payload: payload(&event_id, now, json!({"twin": document})),
        });
        if let Some(delta) = delta(&device.twins) {
            out.push(Output::Publish {
                topic: format!("{device_topic}/delta"),
                payload: payload(&event_id, now, delta),
            });
        }
        let sync: BTreeMap<&String, &MsgTwin> = changes
            .keys()
            .filter_map(|name| Some((name, device.twins.get(name)?)))
            .collect();
        out.push(Output::ToCloud(Box::new(Message::new(
            module::DEVICE_TWIN,
            group::RESOURCE,
            operation::UPDATE,
            format!("device/{id}/twin/edge_updated"),
            payload(
                &uuid::Uuid::new_v4().to_string(),
                now,
                json!({"twin": sync}),
            ),
        ))));
        out
    }

    /// The twins of device `id` after `request`, stored: the changed
    /// twins without versions (for the result), and each change.
    fn apply_update(
        &mut self,
        id: &str,
        request: TwinUpdate,
        now: i64,
    ) -> Result<(BTreeMap<String, MsgTwin>, Changes), Refused> {
        let device = self
            .devices
            .get(id)
            .ok_or_else(|| refused(404, format!("device {id} not found")))?;
        let requested = request
            .twin
            .ok_or_else(|| refused(400, "the update has no twin"))?;
        let mut twins = device.twins.clone();
        let mut result = BTreeMap::new();
        let mut changes = BTreeMap::new();
        for (name, wanted) in requested {
            if !is_twin_text(&name, MAX_NAME) {
                return Err(refused(400, format!("twin name {name:?} is not valid")));
            }
            let current = twins.get(&name).filter(|twin| !twin.is_deleted()).cloned();
            let Some(wanted) = wanted else {
                let Some(current) = current else { continue };
                if current.optional == Some(false) {
                    return Err(refused(400, format!("twin {name} is not optional")));
                }
                let bump = |version: Option<TwinVersion>| {
                    let mut version = version.unwrap_or_default();
                    version.edge += 1;
                    Some(version)
                };
                let tombstone = MsgTwin {
                    expected: None,
                    actual: None,
                    optional: current.optional,
                    metadata: Some(TypeMetadata {
                        value_type: DELETED.to_owned(),
                    }),
                    expected_version: bump(current.expected_version),
                    actual_version: bump(current.actual_version),
                };
                result.insert(name.clone(), tombstone.without_versions());
                changes.insert(name.clone(), (Some(current), None));
                twins.insert(name, tombstone);
                continue;
            };
            let value_type = wanted
                .metadata
                .as_ref()
                .map(|m| m.value_type.clone())
                .filter(|t| !t.is_empty())
                .or_else(|| current.as_ref().map(|c| c.value_type().to_owned()))
                .unwrap_or_else(|| "string".to_owned());
            for value in [&wanted.expected, &wanted.actual]
                .into_iter()
                .flatten()
                .filter_map(|side| side.value.as_deref())
                .filter(|value| !value.is_empty())
            {
                if !is_twin_text(value, MAX_VALUE) {
                    return Err(refused(
                        400,
                        format!("twin {name}: value {value:?} is not valid"),
                    ));
                }
                value_fits(&value_type, value)
                    .map_err(|reason| refused(400, format!("twin {name}: {reason}")))?;
            }
            let mut next = current.clone().unwrap_or(MsgTwin {
                optional: Some(wanted.optional.unwrap_or(true)),
                ..MsgTwin::default()
            });
            let mut changed = current.is_none() || next.value_type() != value_type;
            next.metadata = Some(TypeMetadata { value_type });
            if current.is_some() && wanted.optional == Some(false) && next.optional != Some(false) {
                next.optional = Some(false);
                changed = true;
            }
            for (side, version, asked) in [
                (
                    &mut next.expected,
                    &mut next.expected_version,
                    &wanted.expected,
                ),
                (&mut next.actual, &mut next.actual_version, &wanted.actual),
            ] {
                let Some(value) = asked.as_ref().and_then(|v| v.value.clone()) else {
                    continue;
                };
                if side.as_ref().and_then(|v| v.value.as_deref()) == Some(value.as_str()) {
                    continue;
                }
                *side = Some(TwinValue {
                    value: Some(value),
                    metadata: Some(ValueMetadata { timestamp: now }),
                });
                let mut bumped = version.unwrap_or_default();
                bumped.edge += 1;
                *version = Some(bumped);
                changed = true;
            }
            if changed {
                result.insert(name.clone(), next.without_versions());
                changes.insert(name.clone(), (current, Some(next.clone())));
                twins.insert(name, next);
            }
        }
        if !changes.is_empty() {
            let mut device = device.clone();
            device.twins = twins;
            self.store
                .save(&device)
                .map_err(|error| refused(500, format!("cannot store the twins: {error}")))?;
            self.devices.insert(id.to_owned(), device);
        }
        Ok((result, changes))
    }

    fn twin_get(&self, topic: &str, id: &str, body: &[u8], now: i64) -> Vec<Output> {
        let request: EventRequest = serde_json::from_slice(body).unwrap_or_default();
        let payload = match self.devices.get(id) {
            Some(device) => {
                let twins: BTreeMap<&String, MsgTwin> = device
                    .twins
                    .iter()
                    .filter(|(_, twin)| !twin.is_deleted())
                    .map(|(name, twin)| (name, twin.without_versions()))
                    .collect();
                payload(&request.event_id, now, json!({"twin": twins}))
            }
            None => error_payload(
                &request.event_id,
                now,
                404,
                &format!("device {id} not found"),
            ),
        };
        vec![Output::Publish {
            topic: format!("{topic}/result"),
            payload,
        }]
    }

    fn state_update(&mut self, id: &str, body: &[u8], now: i64) -> Vec<Output> {
        let Ok(request) = serde_json::from_slice::<StateUpdate>(body) else {
            return Vec::new();
        };
        let state = request.state.to_ascii_lowercase();
        let Some(device) = self
            .devices
            .get(id)
            .filter(|_| STATES.contains(&state.as_str()))
        else {
            return Vec::new();
        };
        let mut device = device.clone();
        device.device.state = state;
        device.device.last_online = local_time_text();
        if let Err(error) = self.store.save(&device) {
            tracing::warn!(device = %id, %error, "cannot store a device's state");
            return Vec::new();
        }
        let result = payload(
            &request.event_id,
            now,
            json!({"device": {
                "name": device.device.name,
                "state": device.device.state,
                "last_online": device.device.last_online,
            }}),
        );
        self.devices.insert(id.to_owned(), device);
        vec![
            Output::Publish {
                topic: format!("{DEVICE_PREFIX}{id}/state/update/result"),
                payload: result.clone(),
            },
            Output::ToCloud(Box::new(Message::new(
                module::DEVICE_TWIN,
                group::RESOURCE,
                operation::UPDATE,
                format!("device/{id}/state/update"),
                result,
            ))),
        ]
    }

    fn membership_get(&self, topic: &str, node: &str, body: &[u8], now: i64) -> Vec<Output> {
        if node != self.node {
            return Vec::new();
        }
        let request: EventRequest = serde_json::from_slice(body).unwrap_or_default();
        let devices: Vec<&MemberDevice> = self.devices.values().map(|d| &d.device).collect();
        vec![Output::Publish {
            topic: format!("{topic}/result"),
            payload: payload(&request.event_id, now, json!({"devices": devices})),
        }]
    }
}

/// The delta payload's fields when some twin's desired value differs from
/// its reported one: every live twin with a desired value, and the
/// differing desired values.
fn delta(twins: &BTreeMap<String, MsgTwin>) -> Option<Value> {
    let value = |side: &Option<TwinValue>| side.as_ref().and_then(|v| v.value.clone());
    let with_expected: BTreeMap<&String, MsgTwin> = twins
        .iter()
        .filter(|(_, twin)| !twin.is_deleted() && value(&twin.expected).is_some())
        .map(|(name, twin)| (name, twin.without_versions()))
        .collect();
    let differing: BTreeMap<&String, String> = with_expected
        .iter()
        .filter(|(_, twin)| value(&twin.expected) != value(&twin.actual))
        .filter_map(|(name, twin)| Some((*name, value(&twin.expected)?)))
        .collect();
    (!differing.is_empty()).then(|| json!({"twin": with_expected, "delta": differing}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn twins(dir: &tempfile::TempDir) -> Twins {
        Twins::open("edge-1", &dir.path().join("edgecore.db")).expect("open")
    }

    fn add(twins: &mut Twins, id: &str) -> Vec<Output> {
        let update: MembershipUpdate = serde_json::from_value(json!({
            "event_id": "e", "timestamp": 1,
            "added_devices": [{"id": id, "name": id, "description": "demo"}],
            "removed_devices": null,
        }))
        .expect("update");
        twins.membership(update, NOW)
    }

    fn published<'a>(out: &'a [Output], topic: &str) -> Option<&'a Value> {
        out.iter().find_map(|o| match o {
            Output::Publish { topic: t, payload } if t == topic => Some(payload),
            _ => None,
        })
    }

    fn to_cloud(out: &[Output]) -> Vec<&Message> {
        out.iter()
            .filter_map(|o| match o {
                Output::ToCloud(msg) => Some(msg.as_ref()),
                Output::Publish { .. } => None,
            })
            .collect()
    }

    fn update(twins: &mut Twins, id: &str, body: Value) -> Vec<Output> {
        twins.on_topic(
            &format!("$hw/events/device/{id}/twin/update"),
            body.to_string().as_bytes(),
            NOW,
        )
    }

    #[test]
    fn topics_are_read_in_both_id_forms() {
        assert_eq!(
            parse_topic("$hw/events/device/d1/twin/update"),
            Some(Topic::TwinUpdate("d1"))
        );
        assert_eq!(
            parse_topic("$hw/events/device/default/d1/twin/get"),
            Some(Topic::TwinGet("default/d1"))
        );
        assert_eq!(
            parse_topic("$hw/events/device/d1/state/update"),
            Some(Topic::StateUpdate("d1"))
        );
        assert_eq!(
            parse_topic("$hw/events/node/edge-1/membership/get"),
            Some(Topic::MembershipGet("edge-1"))
        );
        for other in [
            "$hw/events/device/d1/twin/update/result",
            "$hw/events/device//twin/update",
            "$hw/events/device/a/b/c/twin/update",
            "$hw/events/upload/x",
            "user/topic",
        ] {
            assert_eq!(parse_topic(other), None, "{other}");
        }
    }

    #[test]
    fn desired_values_from_the_cloud_are_stored_and_announced_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        add(&mut twins, "thermo-1");
        update(
            &mut twins,
            "thermo-1",
            json!({"twin": {"setpoint": {"actual": {"value": "20"}, "metadata": {"type": "int"}}}}),
        );
        let desired = BTreeMap::from([("setpoint".to_owned(), "42".to_owned())]);
        let out = twins.cloud_desired("thermo-1", &desired, NOW);
        let delta = published(&out, "$hw/events/device/thermo-1/twin/update/delta").expect("delta");
        assert_eq!(delta["delta"]["setpoint"], "42");
        let document =
            published(&out, "$hw/events/device/thermo-1/twin/update/document").expect("document");
        assert_eq!(
            document["twin"]["setpoint"]["current"]["expected"]["value"],
            "42"
        );
        assert!(to_cloud(&out).is_empty(), "nothing goes back to the cloud");
        let stored = &twins.devices["thermo-1"].twins["setpoint"];
        assert_eq!(stored.expected_version.expect("version").cloud, 1);

        // The same value again, and a value that is not an int, change nothing.
        assert!(twins.cloud_desired("thermo-1", &desired, NOW).is_empty());
        let bad = BTreeMap::from([("setpoint".to_owned(), "warm".to_owned())]);
        assert!(twins.cloud_desired("thermo-1", &bad, NOW).is_empty());
        // Kept across a restart.
        let reopened = Twins::open("edge-1", &dir.path().join("edgecore.db")).expect("open");
        let twin = &reopened.devices["thermo-1"].twins["setpoint"];
        assert_eq!(
            twin.expected.as_ref().and_then(|v| v.value.as_deref()),
            Some("42")
        );
        // An unknown device is ignored.
        assert!(twins.cloud_desired("nobody", &desired, NOW).is_empty());
    }

    #[test]
    fn a_device_is_reached_by_its_namespaced_id_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        add(&mut twins, "thermo-1");
        let out = update(
            &mut twins,
            "default/thermo-1",
            json!({"event_id": "n", "twin": {"temperature": {"actual": {"value": "21"}}}}),
        );
        let result = published(
            &out,
            "$hw/events/device/default/thermo-1/twin/update/result",
        )
        .expect("answered on the topic asked");
        assert_eq!(result["twin"]["temperature"]["actual"]["value"], "21");
        assert!(
            published(
                &out,
                "$hw/events/device/default/thermo-1/twin/update/document"
            )
            .is_some()
        );
        let reports = to_cloud(&out);
        assert_eq!(reports.len(), 1);
        assert_eq!(
            reports[0].router.resource,
            "device/thermo-1/twin/edge_updated"
        );
        let out = twins.on_topic(
            "$hw/events/device/default/thermo-1/twin/get",
            br#"{"event_id":"g"}"#,
            NOW,
        );
        let got =
            published(&out, "$hw/events/device/default/thermo-1/twin/get/result").expect("got");
        assert_eq!(got["twin"]["temperature"]["actual"]["value"], "21");
    }

    #[test]
    fn membership_adds_and_removes_devices_and_announces_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        let out = add(&mut twins, "thermo-1");
        let announced =
            published(&out, "$hw/events/node/edge-1/membership/updated").expect("announced");
        assert_eq!(
            announced["added_devices"],
            json!([{"id": "thermo-1", "name": "thermo-1", "description": "demo"}])
        );
        assert_eq!(announced["timestamp"], NOW);
        assert!(add(&mut twins, "thermo-1").is_empty(), "nothing new");

        let out = twins.on_topic(
            "$hw/events/node/edge-1/membership/get",
            br#"{"event_id":"q"}"#,
            NOW,
        );
        let listed =
            published(&out, "$hw/events/node/edge-1/membership/get/result").expect("listed");
        assert_eq!(listed["event_id"], "q");
        assert_eq!(listed["devices"][0]["id"], "thermo-1");

        let update: MembershipUpdate = serde_json::from_value(
            json!({"added_devices": null, "removed_devices": [{"id": "thermo-1"}]}),
        )
        .expect("update");
        let out = twins.membership(update, NOW);
        let announced =
            published(&out, "$hw/events/node/edge-1/membership/updated").expect("announced");
        assert_eq!(announced["removed_devices"][0]["id"], "thermo-1");
        assert!(twins.devices().is_empty());
        assert!(
            self::twins(&dir).devices().is_empty(),
            "deleted on disk too"
        );
    }

    #[test]
    fn an_update_is_versioned_stored_published_and_reported_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        add(&mut twins, "thermo-1");
        let out = update(
            &mut twins,
            "thermo-1",
            json!({"event_id": "u1", "twin": {"temperature": {
                "expected": {"value": "20"}, "actual": {"value": "18"},
                "metadata": {"type": "int"}}}}),
        );
        let result =
            published(&out, "$hw/events/device/thermo-1/twin/update/result").expect("result");
        assert_eq!(result["event_id"], "u1");
        assert_eq!(result["twin"]["temperature"]["actual"]["value"], "18");
        assert!(
            result["twin"]["temperature"]
                .get("actual_version")
                .is_none()
        );
        let document =
            published(&out, "$hw/events/device/thermo-1/twin/update/document").expect("document");
        assert_eq!(document["twin"]["temperature"]["last"], Value::Null);
        assert_eq!(
            document["twin"]["temperature"]["current"]["expected"]["value"],
            "20"
        );
        let delta = published(&out, "$hw/events/device/thermo-1/twin/update/delta").expect("delta");
        assert_eq!(delta["delta"], json!({"temperature": "20"}));
        let sent = to_cloud(&out);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].router.resource, "device/thermo-1/twin/edge_updated");
        assert_eq!(sent[0].router.source, "twin");
        let reported = &sent[0].content["twin"]["temperature"];
        assert_eq!(reported["actual_version"], json!({"cloud": 0, "edge": 1}));
        assert_eq!(reported["actual"]["metadata"]["timestamp"], NOW);
        assert_eq!(reported["optional"], true);

        // The same values again: answered, but nothing changes or goes up.
        let out = update(
            &mut twins,
            "thermo-1",
            json!({"twin": {"temperature": {"actual": {"value": "18"}}}}),
        );
        assert!(published(&out, "$hw/events/device/thermo-1/twin/update/result").is_some());
        assert!(to_cloud(&out).is_empty());
        assert!(published(&out, "$hw/events/device/thermo-1/twin/update/document").is_none());

        // Reaching the desired value: version 2, no delta any more.
        let out = update(
            &mut twins,
            "thermo-1",
            json!({"twin": {"temperature": {"actual": {"value": "20"}}}}),
        );
        assert!(published(&out, "$hw/events/device/thermo-1/twin/update/delta").is_none());
        let reported = &to_cloud(&out)[0].content["twin"]["temperature"];
        assert_eq!(reported["actual_version"], json!({"cloud": 0, "edge": 2}));

        // Kept across a restart.
        let reopened = self::twins(&dir);
        let stored = &reopened.devices()["thermo-1"].twins["temperature"];
        assert_eq!(
            stored.actual.as_ref().and_then(|v| v.value.as_deref()),
            Some("20")
        );
        assert_eq!(
            stored.actual_version,
            Some(TwinVersion { cloud: 0, edge: 2 })
        );
    }

    #[test]
    fn bad_updates_are_refused_whole_with_kubeedges_codes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        add(&mut twins, "thermo-1");
        let result_topic = "$hw/events/device/thermo-1/twin/update/result";
        for (body, code) in [
            (
                json!({"twin": {"temperature": {"actual": {"value": "warm"}, "metadata": {"type": "int"}},
                             "humidity": {"actual": {"value": "40"}}}}),
                400,
            ),
            (
                json!({"twin": {"bad name": {"actual": {"value": "1"}}}}),
                400,
            ),
            (
                json!({"twin": {"t": {"actual": {"value": "with space"}}}}),
                400,
            ),
            (json!({"event_id": "x"}), 400),
        ] {
            let out = update(&mut twins, "thermo-1", body.clone());
            let result = published(&out, result_topic).expect("result");
            assert_eq!(result["code"], code, "{body}");
            assert!(to_cloud(&out).is_empty());
        }
        assert!(
            twins.devices()["thermo-1"].twins.is_empty(),
            "nothing stored"
        );
        let out = update(
            &mut twins,
            "unknown",
            json!({"twin": {"t": {"actual": {"value": "1"}}}}),
        );
        let result =
            published(&out, "$hw/events/device/unknown/twin/update/result").expect("result");
        assert_eq!(result["code"], 404);
    }

    #[test]
    fn get_state_and_delete_follow_kubeedge() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut twins = twins(&dir);
        add(&mut twins, "thermo-1");
        update(
            &mut twins,
            "thermo-1",
            json!({"twin": {"temperature": {"actual": {"value": "18"}, "metadata": {"type": "int"}},
                            "mode": {"expected": {"value": "auto"}}}}),
        );
        let out = twins.on_topic(
            "$hw/events/device/thermo-1/twin/get",
            br#"{"event_id":"g"}"#,
            NOW,
        );
        let got = published(&out, "$hw/events/device/thermo-1/twin/get/result").expect("got");
        assert_eq!(got["event_id"], "g");
        assert_eq!(got["twin"]["temperature"]["actual"]["value"], "18");
        assert_eq!(got["twin"]["mode"]["expected"]["value"], "auto");

        // A null twin deletes an optional one: gone from get, kept as a
        // tombstone that is reported.
        let out = update(&mut twins, "thermo-1", json!({"twin": {"mode": null}}));
        let reported = &to_cloud(&out)[0].content["twin"]["mode"];
        assert_eq!(reported["metadata"]["type"], "deleted");
        let out = twins.on_topic("$hw/events/device/thermo-1/twin/get", b"{}", NOW);
        let got = published(&out, "$hw/events/device/thermo-1/twin/get/result").expect("got");
        assert!(got["twin"].get("mode").is_none());

        let out = twins.on_topic(
            "$hw/events/device/thermo-1/state/update",
            br#"{"state":"Online"}"#,
            NOW,
        );
        let result = published(&out, "$hw/events/device/thermo-1/state/update/result")
            .expect("state result");
        assert_eq!(result["device"]["state"], "online");
        assert_eq!(result["device"]["name"], "thermo-1");
        assert_eq!(
            to_cloud(&out)[0].router.resource,
            "device/thermo-1/state/update"
        );
        let out = twins.on_topic(
            "$hw/events/device/thermo-1/state/update",
            br#"{"state":"sleeping"}"#,
            NOW,
        );
        assert!(out.is_empty(), "unknown states are ignored");
        let out = twins.on_topic("$hw/events/device/nobody/twin/get", b"{}", NOW);
        let got = published(&out, "$hw/events/device/nobody/twin/get/result").expect("got");
        assert_eq!(got["code"], 404);
    }
}
