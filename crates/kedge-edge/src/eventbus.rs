//! EventBus (`eventbus`, group `bus`): edgecore's MQTT side
//! (devices.md §4).
//!
//! EventBus is an MQTT client (rumqttc) of the broker `mqttMode` names:
//! `2` (the default, as in KubeEdge) the external broker at
//! `mqttServerExternal` (`tcp://127.0.0.1:1883`), such as mosquitto; `1`
//! that one and the one at `mqttServerInternal`; `0` only the one at
//! `mqttServerInternal` (`tcp://127.0.0.1:1884`). KubeEdge embeds a broker
//! there; Kedge does not yet (rumqttd, the embeddable Rust broker, refuses
//! subscriptions to `$`-topics such as `$hw/...`), so with `0` or `1` a
//! broker must run at that address. EventBus subscribes to KubeEdge's
//! topics and
//!
//! * hands `$hw/events/device/...` and `$hw/events/node/...` messages to
//!   DeviceTwin (resource: the topic, base64url-encoded as KubeEdge does;
//!   content: the payload);
//! * uploads every other topic it subscribes to (`$hw/events/upload/#`,
//!   `SYS/dis/upload_records`, `+/user/#`) to the cloud through EdgeHub
//!   (operation `upload`, group `user`, resource: the topic);
//! * publishes what edge modules send it (operation `publish`, resource:
//!   the topic) with `mqttQOS` and `mqttRetain`.
//!
//! A broker that is down is dialled again every 5 s (KubeEdge's wait).
//! TLS towards the broker (`eventBusTLS`) and the cloud's `subscribe`
//! requests (extra topics kept in `sub_topics`) are not supported yet.

use std::time::Duration;

use base64::Engine as _;
use kedge_apis::config::edgecore::{EdgeCoreConfig, MqttMode};
use kedge_bus::{BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::{Message, group, module, operation};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// The topics EventBus subscribes to: KubeEdge v1.15's, plus the
/// `<namespace>/<name>` device forms of v1.17.
pub const SUBSCRIPTIONS: [&str; 8] = [
    "$hw/events/upload/#",
    "$hw/events/device/+/state/update",
    "$hw/events/device/+/twin/+",
    "$hw/events/device/+/+/state/update",
    "$hw/events/device/+/+/twin/+",
    "$hw/events/node/+/membership/get",
    "SYS/dis/upload_records",
    "+/user/#",
];

/// How long a broker that cannot be reached waits before the next dial.
const REDIAL: Duration = Duration::from_secs(5);

/// The largest MQTT packet EventBus reads or writes.
const MAX_PACKET: usize = 1 << 20;

/// Messages a client buffers towards its broker.
const CLIENT_CAPACITY: usize = 1024;

/// What EventBus needs from edgecore.yaml.
#[derive(Debug, Clone)]
pub struct EventBusSettings {
    /// The brokers to be a client of, as `host:port`.
    pub brokers: Vec<(String, u16)>,
    /// QoS of publishes.
    pub qos: QoS,
    /// Whether publishes are retained.
    pub retain: bool,
    /// Client id prefix.
    pub client_id: String,
    /// User name and password, when set.
    pub credentials: Option<(String, String)>,
}

/// A bad EventBus setting.
#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    /// A broker URL is not `tcp://host:port`.
    #[error("eventBus: {0:?} is not a tcp://host:port URL")]
    BadUrl(String),
}

/// `tcp://host:port` as `(host, port)`.
fn host_port(url: &str) -> Result<(String, u16), EventBusError> {
    let bad = || EventBusError::BadUrl(url.to_owned());
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

impl EventBusSettings {
    /// The settings edgecore.yaml gives.
    pub fn from_config(config: &EdgeCoreConfig) -> Result<Self, EventBusError> {
        let bus = &config.modules.event_bus;
        let internal = host_port(&bus.mqtt_server_internal)?;
        let external = host_port(&bus.mqtt_server_external)?;
        let brokers = match bus.mqtt_mode {
            MqttMode::Internal => vec![internal],
            MqttMode::Both => vec![internal, external],
            MqttMode::External => vec![external],
        };
        let qos = match bus.mqtt_qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let client_id = if bus.mqtt_pub_client_id.is_empty() {
            format!("hub-client-{}", std::process::id())
        } else {
            bus.mqtt_pub_client_id.clone()
        };
        let credentials = (!bus.mqtt_username.is_empty())
            .then(|| (bus.mqtt_username.clone(), bus.mqtt_password.clone()));
        Ok(Self {
            brokers,
            qos,
            retain: bus.mqtt_retain,
            client_id,
            credentials,
        })
    }
}

/// Where a message received on `topic` goes, and as what.
pub fn inbound_message(topic: &str, payload: &[u8]) -> (Destination, Message) {
    let content = Value::String(String::from_utf8_lossy(payload).into_owned());
    if topic.starts_with("$hw/events/device/") || topic.starts_with("$hw/events/node/") {
        let resource = base64::engine::general_purpose::URL_SAFE.encode(topic);
        (
            Destination::Twin,
            Message::new(
                group::BUS,
                group::USER,
                operation::RESPONSE,
                resource,
                content,
            ),
        )
    } else {
        (
            Destination::Cloud,
            Message::new(group::BUS, group::USER, operation::UPLOAD, topic, content),
        )
    }
}

/// Where a received MQTT message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// DeviceTwin.
    Twin,
    /// The cloud, through EdgeHub.
    Cloud,
}

/// The EventBus module.
#[derive(Debug)]
pub struct EventBus {
    settings: Result<EventBusSettings, EventBusError>,
}

impl EventBus {
    /// EventBus as edgecore.yaml configures it; a bad setting stops it at
    /// start with the error.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        Self {
            settings: EventBusSettings::from_config(config),
        }
    }
}

/// Reads one broker's events until its task is stopped: subscribes on
/// every connection, hands received messages on, dials again after
/// failures.
async fn follow(mut events: rumqttc::EventLoop, client: AsyncClient, bus: BusHandle) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for topic in SUBSCRIPTIONS {
                    if let Err(error) = client.subscribe(topic, QoS::AtLeastOnce).await {
                        tracing::warn!(%error, topic, "eventbus: cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let (to, msg) = inbound_message(&publish.topic, &publish.payload);
                let sent = match to {
                    Destination::Twin => bus.send_to_group(group::TWIN, msg).await.map(|_| ()),
                    Destination::Cloud => bus.send(module::EDGE_HUB, msg).await,
                };
                if let Err(error) = sent {
                    tracing::debug!(%error, topic = %publish.topic, "eventbus: message not handed on");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "eventbus: broker connection failed; dialling again");
                tokio::time::sleep(REDIAL).await;
            }
        }
    }
}

impl Module for EventBus {
    fn name(&self) -> &str {
        module::EVENT_BUS
    }

    fn group(&self) -> &str {
        group::BUS
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        let settings = self.settings?;
        let mut clients = Vec::new();
        for (index, (host, port)) in settings.brokers.iter().enumerate() {
            let mut options =
                MqttOptions::new(format!("{}-{index}", settings.client_id), host, *port);
            options.set_keep_alive(Duration::from_secs(30));
            options.set_clean_session(true);
            options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            if let Some((user, password)) = &settings.credentials {
                options.set_credentials(user, password);
            }
            let (client, events) = AsyncClient::new(options, CLIENT_CAPACITY);
            let (token, bus) = (ctx.token().clone(), ctx.bus().clone());
            let reader = client.clone();
            ctx.spawn("eventbus-broker", async move {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = follow(events, reader, bus) => {}
                }
            });
            clients.push(client);
        }
        ctx.set_ready();
        while let Some(msg) = ctx.recv().await {
            if msg.router.operation != operation::PUBLISH || msg.is_reply() {
                tracing::debug!(
                    operation = %msg.router.operation,
                    resource = %msg.router.resource,
                    "eventbus: message not handled"
                );
                continue;
            }
            let payload = msg.content_data().into_owned();
            for client in &clients {
                if let Err(error) = client
                    .publish(
                        msg.router.resource.clone(),
                        settings.qos,
                        settings.retain,
                        payload.clone(),
                    )
                    .await
                {
                    tracing::debug!(%error, topic = %msg.router.resource, "eventbus: not published");
                }
            }
        }
        for client in &clients {
            let _ = client.try_disconnect();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_apis::config::HostInfo;
    use serde_json::json;

    #[test]
    fn broker_urls_and_modes_give_the_brokers() {
        assert_eq!(
            host_port("tcp://127.0.0.1:1884").expect("url"),
            ("127.0.0.1".to_owned(), 1884)
        );
        assert!(host_port("127.0.0.1:1884").is_err());
        assert!(host_port("tcp://:1884").is_err());

        let mut config =
            EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()));
        let settings = EventBusSettings::from_config(&config).expect("settings");
        assert_eq!(settings.brokers, [("127.0.0.1".to_owned(), 1883)]);
        config.modules.event_bus.mqtt_mode = MqttMode::Internal;
        let settings = EventBusSettings::from_config(&config).expect("settings");
        assert_eq!(settings.brokers, [("127.0.0.1".to_owned(), 1884)]);
        config.modules.event_bus.mqtt_mode = MqttMode::Both;
        assert_eq!(
            EventBusSettings::from_config(&config)
                .expect("settings")
                .brokers
                .len(),
            2
        );
    }

    #[test]
    fn device_topics_go_to_the_twin_and_others_to_the_cloud() {
        let (to, msg) = inbound_message("$hw/events/device/d1/twin/update", b"{\"twin\":{}}");
        assert_eq!(to, Destination::Twin);
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE
                .decode(&msg.router.resource)
                .expect("base64"),
            b"$hw/events/device/d1/twin/update"
        );
        assert_eq!(msg.router.source, "bus");
        assert_eq!(msg.content, json!("{\"twin\":{}}"));
        let (to, msg) = inbound_message("factory/user/line-1", b"42");
        assert_eq!(to, Destination::Cloud);
        assert_eq!(msg.router.operation, "upload");
        assert_eq!(msg.router.resource, "factory/user/line-1");
    }
}
