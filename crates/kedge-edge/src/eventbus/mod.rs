//! EventBus (`eventbus`, group `bus`): edgecore's MQTT side
//! (devices.md §4).
//!
//! `mqttMode` says where devices and mappers publish: `0` (Kedge's
//! default) to the broker edgecore embeds ([`broker`]) at
//! `mqttServerInternal` (`tcp://127.0.0.1:1884`); `2` (KubeEdge's default)
//! to an external broker at `mqttServerExternal` (`tcp://127.0.0.1:1883`),
//! such as mosquitto, of which EventBus is an MQTT client (rumqttc); `1`
//! to both. From every broker EventBus takes the messages on KubeEdge's
//! topics ([`SUBSCRIPTIONS`]) and
//!
//! * hands `$hw/events/device/...` and `$hw/events/node/...` messages to
//!   DeviceTwin (resource: the topic, base64url-encoded as KubeEdge does;
//!   content: the payload);
//! * uploads every other one (`$hw/events/upload/#`,
//!   `SYS/dis/upload_records`, `+/user/#`) to the cloud through EdgeHub
//!   (operation `upload`, group `user`, resource: the topic);
//!
//! and it publishes to every broker what edge modules send it (operation
//! `publish`, resource: the topic) with `mqttQOS` and `mqttRetain`.
//!
//! The embedded broker is used in-process, as KubeEdge uses its own:
//! EventBus is the broker's in-process subscriber to [`SUBSCRIPTIONS`]
//! ([`broker::Broker::subscribe_internal`]), so a client's publish on one
//! of those topics is dispatched straight from the broker, and edgecore's
//! own publishes go straight into the broker ([`broker::Broker::publish`]).
//! That is simpler and more robust than dialling our own listener as a
//! client: no second MQTT session on loopback, no reconnect loop, no race
//! with the listener at start-up, no credentials to present to ourselves,
//! and a device's message waits in a bounded queue for EventBus instead of
//! in a client's buffers. Edgecore's publishes are not dispatched back to
//! EventBus (none of its topics are among the subscriptions anyway). When
//! `mqttUsername` is set, the embedded broker admits only clients that log
//! in with `mqttUsername` and `mqttPassword`; each client's outgoing queue
//! holds `mqttSessionQueueSize` messages. A broker that cannot listen at
//! `mqttServerInternal` stops edgecore, as in KubeEdge.
//!
//! An external broker that is down is dialled again every 5 s (KubeEdge's
//! wait); meanwhile up to 1024 publishes wait for it and further ones are
//! dropped, so a missing broker never stalls EventBus or the modules that
//! send to it (DeviceTwin, and DMI behind it). TLS towards a broker (`eventBusTLS`) and the cloud's `subscribe`
//! requests (extra topics kept in `sub_topics`) are not supported yet.

pub mod broker;

use std::time::Duration;

use base64::Engine as _;
use kedge_apis::config::edgecore::{EdgeCoreConfig, MqttMode};
use kedge_bus::{BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::{Message, group, module, operation};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use broker::{Broker, BrokerError, BrokerMetrics, BrokerSettings, Delivery};

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

/// The largest MQTT packet EventBus reads or writes, and the embedded
/// broker reads from a client.
const MAX_PACKET: usize = 1 << 20;

/// Messages a client buffers towards its broker, and the embedded broker
/// holds for EventBus.
const CLIENT_CAPACITY: usize = 1024;

/// What EventBus needs from edgecore.yaml.
#[derive(Debug, Clone)]
pub struct EventBusSettings {
    /// Where the embedded broker listens, as `(host, port)` (modes `0` and
    /// `1`).
    pub internal: Option<(String, u16)>,
    /// The external broker to be a client of, as `(host, port)` (modes `1`
    /// and `2`).
    pub external: Option<(String, u16)>,
    /// QoS of publishes.
    pub qos: QoS,
    /// Whether publishes are retained.
    pub retain: bool,
    /// Client id prefix.
    pub client_id: String,
    /// User name and password, when set: presented to the external
    /// broker, required by the embedded one.
    pub credentials: Option<(String, String)>,
    /// Messages the embedded broker queues for one client
    /// (`mqttSessionQueueSize`).
    pub session_queue: usize,
}

/// Why EventBus cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    /// A broker URL is not `tcp://host:port`.
    #[error("eventBus: {0:?} is not a tcp://host:port URL")]
    BadUrl(String),
    /// The embedded broker cannot listen at `mqttServerInternal`.
    #[error("eventBus: the embedded MQTT broker cannot listen on {address}")]
    Bind {
        /// The address, `host:port`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded broker refused EventBus's subscriptions.
    #[error("eventBus: the embedded MQTT broker refused a subscription")]
    Broker(#[from] BrokerError),
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
        let (internal, external) = match bus.mqtt_mode {
            MqttMode::Internal => (Some(internal), None),
            MqttMode::Both => (Some(internal), Some(external)),
            MqttMode::External => (None, Some(external)),
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
            internal,
            external,
            qos,
            retain: bus.mqtt_retain,
            client_id,
            credentials,
            // Validation keeps it above 0.
            session_queue: usize::try_from(bus.mqtt_session_queue_size).unwrap_or(1),
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
    metrics: BrokerMetrics,
}

impl EventBus {
    /// EventBus as edgecore.yaml configures it; a bad setting stops it at
    /// start with the error.
    pub fn from_config(config: &EdgeCoreConfig) -> Self {
        Self {
            settings: EventBusSettings::from_config(config),
            metrics: BrokerMetrics::default(),
        }
    }

    /// Counts the embedded broker's work in `metrics`.
    pub fn with_metrics(mut self, metrics: BrokerMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// Hands a message received on `topic` to DeviceTwin or the cloud.
async fn hand_on(bus: &BusHandle, topic: &str, payload: &[u8]) {
    let (to, msg) = inbound_message(topic, payload);
    let sent = match to {
        Destination::Twin => bus.send_to_group(group::TWIN, msg).await.map(|_| ()),
        Destination::Cloud => bus.send(module::EDGE_HUB, msg).await,
    };
    if let Err(error) = sent {
        tracing::debug!(%error, topic, "eventbus: message not handed on");
    }
}

/// Hands on what the embedded broker dispatches to EventBus.
async fn dispatch(mut inbox: mpsc::Receiver<Delivery>, bus: BusHandle) {
    while let Some(delivery) = inbox.recv().await {
        hand_on(&bus, &delivery.topic, &delivery.payload).await;
    }
}

/// Starts the embedded broker listening at `(host, port)`, with EventBus
/// as its in-process subscriber.
async fn start_broker(
    ctx: &ModuleContext,
    settings: &EventBusSettings,
    (host, port): &(String, u16),
    metrics: BrokerMetrics,
) -> Result<Broker, EventBusError> {
    let listener = TcpListener::bind((host.as_str(), *port))
        .await
        .map_err(|source| EventBusError::Bind {
            address: format!("{host}:{port}"),
            source,
        })?;
    let broker = Broker::new(
        BrokerSettings {
            credentials: settings.credentials.clone(),
            max_packet: MAX_PACKET,
            queue_messages: settings.session_queue,
            ..BrokerSettings::default()
        },
        metrics,
    );
    let inbox = broker.subscribe_internal(&SUBSCRIPTIONS, CLIENT_CAPACITY)?;
    tracing::info!(address = %format!("{host}:{port}"), "eventbus: embedded MQTT broker listening");
    ctx.spawn(
        "eventbus-embedded-broker",
        broker.clone().serve(listener, ctx.token().clone()),
    );
    let (token, bus) = (ctx.token().clone(), ctx.bus().clone());
    ctx.spawn("eventbus-dispatch", async move {
        tokio::select! {
            () = token.cancelled() => {}
            () = dispatch(inbox, bus) => {}
        }
    });
    Ok(broker)
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
                hand_on(&bus, &publish.topic, &publish.payload).await;
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
        let broker = match &settings.internal {
            Some(address) => Some(start_broker(&ctx, &settings, address, self.metrics).await?),
            None => None,
        };
        let client = settings.external.as_ref().map(|(host, port)| {
            let mut options = MqttOptions::new(settings.client_id.clone(), host, *port);
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
            client
        });
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
            let topic = &msg.router.resource;
            let payload = bytes::Bytes::from(msg.content_data().into_owned());
            if let Some(broker) = &broker
                && let Err(error) =
                    broker.publish(topic, payload.clone(), settings.qos, settings.retain)
            {
                tracing::debug!(%error, %topic, "eventbus: not published");
            }
            // Never waits: with the broker down and the client's queue
            // full, the message is dropped rather than stalling EventBus
            // and, behind it, DeviceTwin and DMI.
            if let Some(client) = &client
                && let Err(error) =
                    client.try_publish(topic.clone(), settings.qos, settings.retain, payload)
            {
                tracing::debug!(%error, %topic, "eventbus: not published");
            }
        }
        if let Some(client) = &client {
            let _ = client.try_disconnect();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_apis::config::HostInfo;
    use kedge_bus::{BusBuilder, BusConfig, RunningBus};
    use prometheus_client::registry::Registry;
    use serde_json::json;
    use tokio::sync::mpsc::UnboundedReceiver;

    use crate::testing::Recorder;

    /// How long anything awaited may take.
    const WAIT: Duration = Duration::from_secs(20);

    /// The default configuration with the embedded broker at `port`.
    fn embedded_at(port: u16) -> EdgeCoreConfig {
        let mut config =
            EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()));
        config.modules.event_bus.mqtt_server_internal = format!("tcp://127.0.0.1:{port}");
        config
    }

    /// EventBus with recording stand-ins for DeviceTwin and EdgeHub.
    fn start_bus(
        event_bus: EventBus,
    ) -> (
        RunningBus,
        UnboundedReceiver<Message>,
        UnboundedReceiver<Message>,
    ) {
        let (twin_tx, twin) = mpsc::unbounded_channel();
        let (hub_tx, hub) = mpsc::unbounded_channel();
        let mut builder = BusBuilder::new(BusConfig::default());
        builder
            .register(event_bus, true)
            .expect("eventbus registers");
        for (name, group, seen) in [
            (module::DEVICE_TWIN, group::TWIN, twin_tx),
            (module::EDGE_HUB, group::HUB, hub_tx),
        ] {
            builder
                .register(Recorder { name, group, seen }, true)
                .expect("recorder registers");
        }
        (builder.build(&mut Registry::default()).start(), twin, hub)
    }

    async fn next(rx: &mut UnboundedReceiver<Message>) -> Message {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a message in time")
            .expect("the channel is open")
    }

    /// Runs a rumqttc event loop on its own task; what it receives comes
    /// out of the returned channel.
    fn drive(mut events: rumqttc::EventLoop) -> UnboundedReceiver<Packet> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(packet) = event
                    && tx.send(packet).is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    /// The next packet `wanted` accepts.
    async fn next_packet(
        packets: &mut UnboundedReceiver<Packet>,
        wanted: impl Fn(&Packet) -> bool,
    ) -> Packet {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                match packets.recv().await {
                    Some(packet) if wanted(&packet) => return packet,
                    Some(_) => {}
                    None => panic!("the client stopped"),
                }
            }
        });
        found.await.expect("the packet arrives in time")
    }

    #[tokio::test]
    async fn a_missing_external_broker_never_stalls_what_sends_to_eventbus() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut config = embedded_at(port);
        // Nobody listens at the external address.
        config.modules.event_bus.mqtt_mode = MqttMode::External;
        config.modules.event_bus.mqtt_server_external = format!("tcp://127.0.0.1:{port}");
        let (bus, _twin, _hub) = start_bus(EventBus::from_config(&config));
        // Far more than the client's queue and EventBus's inbox hold.
        let sent = tokio::time::timeout(WAIT, async {
            for i in 0..(4 * CLIENT_CAPACITY) {
                let msg = Message::new(
                    module::DEVICE_TWIN,
                    group::BUS,
                    operation::PUBLISH,
                    format!("$hw/events/device/d{i}/twin/update/result"),
                    json!("{}"),
                );
                bus.handle()
                    .send(module::EVENT_BUS, msg)
                    .await
                    .expect("sent to eventbus");
            }
        });
        sent.await.expect("EventBus keeps taking messages");
    }

    #[tokio::test]
    async fn the_embedded_broker_dispatches_in_process_both_ways() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let metrics = BrokerMetrics::default();
        let event_bus = EventBus::from_config(&embedded_at(port)).with_metrics(metrics.clone());
        let (bus, mut twin, mut hub) = start_bus(event_bus);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !bus.readiness().all_ready() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "eventbus never ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A device: a plain MQTT client of the embedded broker.
        let (device, events) = AsyncClient::new(MqttOptions::new("device", "127.0.0.1", port), 16);
        let mut events = drive(events);
        let result = "$hw/events/device/d1/twin/update/result";
        device
            .subscribe(result, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        next_packet(&mut events, |p| matches!(p, Packet::SubAck(_))).await;

        // Its publishes go to DeviceTwin or to the cloud.
        let update = "$hw/events/device/d1/twin/update";
        for (topic, payload) in [(update, "{\"twin\":{}}"), ("factory/user/line-1", "42")] {
            device
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        let to_twin = next(&mut twin).await;
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE
                .decode(&to_twin.router.resource)
                .expect("base64"),
            update.as_bytes()
        );
        assert_eq!(to_twin.content, json!("{\"twin\":{}}"));
        let to_cloud = next(&mut hub).await;
        assert_eq!(to_cloud.router.operation, operation::UPLOAD);
        assert_eq!(to_cloud.router.resource, "factory/user/line-1");

        // What DeviceTwin publishes reaches the device.
        let answer = Message::new(
            module::DEVICE_TWIN,
            group::BUS,
            operation::PUBLISH,
            result,
            json!("{\"event_id\":\"e1\"}"),
        );
        bus.handle()
            .send(module::EVENT_BUS, answer)
            .await
            .expect("sent to eventbus");
        let Packet::Publish(got) =
            next_packet(&mut events, |p| matches!(p, Packet::Publish(_))).await
        else {
            unreachable!("next_packet returned a PUBLISH");
        };
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (result, &b"{\"event_id\":\"e1\"}"[..])
        );
        assert_eq!(metrics.clients(), 1);
        assert!(bus.shutdown(WAIT).await.is_clean());
    }

    #[tokio::test]
    async fn an_internal_address_in_use_stops_eventbus() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = taken.local_addr().expect("address").port();
        let (bus, _twin, _hub) = start_bus(EventBus::from_config(&embedded_at(port)));
        tokio::time::timeout(WAIT, bus.token().cancelled())
            .await
            .expect("the failure stops the bus");
        let report = bus.shutdown(WAIT).await;
        let (module, error) = report.failed.first().expect("a module failed");
        assert_eq!(module, module::EVENT_BUS);
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    }

    #[test]
    fn broker_urls_and_modes_give_the_brokers() {
        assert_eq!(
            host_port("tcp://127.0.0.1:1884").expect("url"),
            ("127.0.0.1".to_owned(), 1884)
        );
        assert!(host_port("127.0.0.1:1884").is_err());
        assert!(host_port("tcp://:1884").is_err());

        let internal = Some(("127.0.0.1".to_owned(), 1884));
        let external = Some(("127.0.0.1".to_owned(), 1883));
        let mut config =
            EdgeCoreConfig::default_config(&HostInfo::new("edge-1", [127, 0, 0, 1].into()));
        // Kedge's default: the embedded broker only.
        let settings = EventBusSettings::from_config(&config).expect("settings");
        assert_eq!((&settings.internal, &settings.external), (&internal, &None));
        assert_eq!(settings.session_queue, 100);
        config.modules.event_bus.mqtt_mode = MqttMode::Both;
        let settings = EventBusSettings::from_config(&config).expect("settings");
        assert_eq!(
            (&settings.internal, &settings.external),
            (&internal, &external)
        );
        config.modules.event_bus.mqtt_mode = MqttMode::External;
        let settings = EventBusSettings::from_config(&config).expect("settings");
        assert_eq!((&settings.internal, &settings.external), (&None, &external));
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
