//! Cloud → edge: one shared watch each of Devices and DeviceModels; every
//! device with a `spec.nodeName` is sent to that node (devices.md §2.1).
//!
//! * A device new to a node: a membership update adding it, then its
//!   model (`insert`), then the device (`insert`).
//! * A device whose spec, labels or annotations changed: its model and the
//!   device (`update`); a status-only change (twin reports) sends nothing.
//! * A device moved to another node, or deleted: a membership update
//!   removing it, the device (`delete`), and its model (`delete`) unless
//!   another device on that node still uses it.
//! * A model that changed: an `update` to every node holding a device of it
//!   (KubeEdge v1.15 waits for the next device change instead).
//!
//! Objects travel with their resourceVersion, so CloudHub resends them
//! until acknowledged and records what each node holds; membership needs
//! no acknowledgement (protocol.md §5.1).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use kedge_apis::devices::{Device, DeviceModel, device_id};
use kedge_bus::BusHandle;
use kedge_controllers::informer::{Cache, Informer};
use kedge_message::{Message, group, module, now_millis, operation, resource, resource_type};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::edgecontroller::downstream::object_message_from;

/// A device as membership lists it (KubeEdge's cloud `types.Device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberDevice {
    /// The device id at the edge.
    pub id: String,
    /// The device's name.
    pub name: String,
    /// The device's `description` label.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl MemberDevice {
    /// The membership entry of `device`.
    pub fn of(device: &Device) -> Self {
        Self {
            id: device_id(device),
            name: device.name_any(),
            description: device
                .labels()
                .get("description")
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// The membership update that adds `added` to and removes `removed` from
/// `node`: group `twin`, resource `node/<node>/membership`.
pub fn membership_message(
    node: &str,
    added: &[MemberDevice],
    removed: &[MemberDevice],
) -> Option<Message> {
    let list = |devices: &[MemberDevice]| {
        if devices.is_empty() {
            Value::Null
        } else {
            json!(devices)
        }
    };
    let resource = resource::device_resource(node, resource_type::MEMBERSHIP, None).ok()?;
    Some(Message::new(
        module::DEVICE_CONTROLLER,
        group::TWIN,
        operation::UPDATE,
        resource,
        json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "timestamp": now_millis(),
            "added_devices": list(added),
            "removed_devices": list(removed),
        }),
    ))
}

/// A device or model message from DeviceController to `node`.
pub fn device_object_message<K>(node: &str, op: &str, object: &K) -> Option<Message>
where
    K: kube::Resource<DynamicType = ()> + Serialize,
{
    let kind = K::kind(&());
    let resource_type = if kind == "DeviceModel" {
        resource_type::DEVICE_MODEL
    } else {
        resource_type::DEVICE
    };
    object_message_from(module::DEVICE_CONTROLLER, node, resource_type, op, object)
}

/// What was last sent of a device.
#[derive(Debug, Clone, PartialEq)]
struct Placed {
    node: String,
    uid: String,
    /// The model's name, in the device's namespace.
    model: String,
    /// What the edge sees change: labels, annotations and spec.
    fingerprint: Value,
    member: MemberDevice,
}

impl Placed {
    fn of(device: &Device) -> Self {
        Self {
            node: device.spec.node_name.clone(),
            uid: device.uid().unwrap_or_default(),
            model: model_name(device),
            fingerprint: fingerprint(device),
            member: MemberDevice::of(device),
        }
    }
}

fn model_name(device: &Device) -> String {
    device
        .spec
        .device_model_ref
        .as_ref()
        .map(|model| model.name.clone())
        .unwrap_or_default()
}

fn fingerprint(device: &Device) -> Value {
    json!({
        "labels": device.metadata.labels,
        "annotations": device.metadata.annotations,
        "spec": device.spec,
    })
}

/// The devices sent to nodes, by namespace and name.
#[derive(Debug, Default)]
struct Placements {
    devices: BTreeMap<(String, String), Placed>,
}

impl Placements {
    /// Whether a device other than `except` on `node` uses `model` in
    /// `namespace`.
    fn model_in_use(&self, node: &str, namespace: &str, model: &str, except: &str) -> bool {
        self.devices.iter().any(|((ns, name), placed)| {
            ns == namespace && name != except && placed.node == node && placed.model == model
        })
    }

    /// The nodes holding a device of `model` in `namespace`.
    fn nodes_using(&self, namespace: &str, model: &str) -> BTreeSet<String> {
        self.devices
            .iter()
            .filter(|((ns, _), placed)| ns == namespace && placed.model == model)
            .map(|(_, placed)| placed.node.clone())
            .collect()
    }
}

/// The caches DeviceController shares with its upstream handlers.
#[derive(Clone)]
pub struct Caches {
    /// Devices.
    pub devices: Cache<Device>,
    /// Device models.
    pub models: Cache<DeviceModel>,
}

/// The watches and what follows them.
pub struct Downstream {
    devices: Informer<Device>,
    models: Informer<DeviceModel>,
    caches: Caches,
    bus: BusHandle,
}

impl Downstream {
    /// Watches through `client`; sends to CloudHub through `bus`.
    pub fn new(client: &kube::Client, bus: BusHandle) -> Self {
        let devices = Informer::new(Api::all(client.clone()));
        let models = Informer::new(Api::all(client.clone()));
        let caches = Caches {
            devices: devices.store(),
            models: models.store(),
        };
        Self {
            devices,
            models,
            caches,
            bus,
        }
    }

    /// The caches, for the upstream handlers.
    pub fn caches(&self) -> Caches {
        self.caches.clone()
    }

    /// Follows the watches until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let Self {
            devices,
            models,
            caches,
            bus,
        } = self;
        let mut device_changes = std::pin::pin!(devices.subscribe());
        let mut model_changes = std::pin::pin!(models.subscribe());
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(devices.run(token.clone()));
        tasks.spawn(models.run(token.clone()));
        tasks.close();
        let mut sender = Sender {
            bus,
            caches,
            placements: Placements::default(),
        };
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                Some(device) = device_changes.next() => {
                    let gone = sender
                        .caches
                        .devices
                        .get(&ObjectRef::from_obj(device.as_ref()))
                        .is_none_or(|current| current.metadata.uid != device.metadata.uid);
                    sender.device_changed(&device, gone).await;
                }
                Some(model) = model_changes.next() => {
                    sender.model_changed(&model).await;
                }
                else => break,
            }
        }
        tasks.wait().await;
    }
}

/// Turns changes into messages for CloudHub.
struct Sender {
    bus: BusHandle,
    caches: Caches,
    placements: Placements,
}

impl Sender {
    async fn send(&self, msg: Option<Message>) {
        let Some(msg) = msg else { return };
        if let Err(error) = self.bus.send(module::CLOUD_HUB, msg).await {
            tracing::debug!(%error, "cannot hand a message to cloudhub");
        }
    }

    fn model(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<DeviceModel>> {
        self.caches
            .models
            .get(&ObjectRef::new(name).within(namespace))
    }

    async fn device_changed(&mut self, device: &Device, gone: bool) {
        let namespace = device.namespace().unwrap_or_default();
        let key = (namespace.clone(), device.name_any());
        let previous = self.placements.devices.get(&key).cloned();
        let now = Placed::of(device);
        if let Some(previous) = &previous
            && (gone || previous.node != now.node || previous.uid != now.uid)
        {
            self.placements.devices.remove(&key);
            self.remove(device, previous).await;
        }
        if gone || now.node.is_empty() {
            return;
        }
        let op = match &previous {
            Some(previous) if previous.node == now.node && previous.uid == now.uid => {
                if previous.fingerprint == now.fingerprint {
                    return;
                }
                operation::UPDATE
            }
            _ => {
                self.send(membership_message(
                    &now.node,
                    std::slice::from_ref(&now.member),
                    &[],
                ))
                .await;
                operation::INSERT
            }
        };
        match self.model(&namespace, &now.model) {
            Some(model) => {
                self.send(device_object_message(&now.node, op, model.as_ref()))
                    .await;
            }
            None => tracing::warn!(
                device = %key.1,
                namespace = %namespace,
                model = %now.model,
                "the device's model is unknown: it goes to its node without one"
            ),
        }
        self.send(device_object_message(&now.node, op, device))
            .await;
        self.placements.devices.insert(key, now);
    }

    /// Takes `device` off the node it was `placed` on.
    async fn remove(&self, device: &Device, placed: &Placed) {
        let namespace = device.namespace().unwrap_or_default();
        self.send(membership_message(
            &placed.node,
            &[],
            std::slice::from_ref(&placed.member),
        ))
        .await;
        self.send(device_object_message(
            &placed.node,
            operation::DELETE,
            device,
        ))
        .await;
        if !self.placements.model_in_use(
            &placed.node,
            &namespace,
            &placed.model,
            &device.name_any(),
        ) && let Some(model) = self.model(&namespace, &placed.model)
        {
            self.send(device_object_message(
                &placed.node,
                operation::DELETE,
                model.as_ref(),
            ))
            .await;
        }
    }

    async fn model_changed(&self, model: &DeviceModel) {
        let namespace = model.namespace().unwrap_or_default();
        let current = self.model(&namespace, &model.name_any());
        // A deleted model stays on the nodes whose devices still name it.
        let Some(current) = current.filter(|current| current.metadata.uid == model.metadata.uid)
        else {
            return;
        };
        for node in self.placements.nodes_using(&namespace, &model.name_any()) {
            self.send(device_object_message(
                &node,
                operation::UPDATE,
                current.as_ref(),
            ))
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(node: &str) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "thermo-1", "namespace": "default", "uid": "u1",
                "resourceVersion": "7", "labels": {"description": "demo"}},
            "spec": {"deviceModelRef": {"name": "thermo-model"}, "nodeName": node},
        }))
        .expect("device")
    }

    #[test]
    fn membership_names_the_node_and_lists_the_device() {
        let member = MemberDevice::of(&device("edge-1"));
        let msg = membership_message("edge-1", std::slice::from_ref(&member), &[]).expect("msg");
        assert_eq!(msg.router.resource, "node/edge-1/membership");
        assert_eq!(msg.router.group, "twin");
        assert_eq!(msg.router.source, "devicecontroller");
        assert_eq!(msg.router.operation, "update");
        assert_eq!(
            msg.content["added_devices"],
            json!([{"id": "thermo-1", "name": "thermo-1", "description": "demo"}])
        );
        assert_eq!(msg.content["removed_devices"], Value::Null);
        assert!(
            msg.content["event_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(!kedge_message::delivery::needs_ack(&msg));
    }

    #[test]
    fn device_and_model_messages_carry_their_version_and_kind() {
        let msg =
            device_object_message("edge-1", operation::INSERT, &device("edge-1")).expect("msg");
        assert_eq!(msg.router.resource, "node/edge-1/default/device/thermo-1");
        assert_eq!(msg.router.source, "devicecontroller");
        assert_eq!(msg.router.group, "resource");
        assert_eq!(msg.header.resource_version, "7");
        assert_eq!(msg.content["kind"], "Device");
        assert_eq!(msg.content["apiVersion"], "devices.kubeedge.io/v1beta1");
        assert!(kedge_message::delivery::needs_ack(&msg));

        let model: DeviceModel = serde_json::from_value(json!({
            "metadata": {"name": "thermo-model", "namespace": "default", "resourceVersion": "3"},
            "spec": {"protocol": "modbus"},
        }))
        .expect("model");
        let msg = device_object_message("edge-1", operation::INSERT, &model).expect("msg");
        assert_eq!(
            msg.router.resource,
            "node/edge-1/default/devicemodel/thermo-model"
        );
        assert_eq!(msg.content["kind"], "DeviceModel");
    }

    #[test]
    fn a_status_change_leaves_the_fingerprint_alone() {
        let before = device("edge-1");
        let mut after = before.clone();
        after.status = Some(kedge_apis::devices::DeviceStatus {
            state: "online".into(),
            ..Default::default()
        });
        after.metadata.resource_version = Some("8".into());
        assert_eq!(Placed::of(&before), Placed::of(&after));
        after
            .labels_mut()
            .insert("description".into(), "changed".into());
        assert_ne!(
            Placed::of(&before).fingerprint,
            Placed::of(&after).fingerprint
        );
    }
}
