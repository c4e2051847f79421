//! Device benchmark: twin reports from a mapper to Device status, with
//! release builds of cloudcore and edgecore on this machine. Prints the
//! figures; asserts only that every step completes.
//!
//! ```sh
//! cargo bench -p kedge-bins --bench devices
//! ```
//!
//! `KEDGE_BENCH_DEVICES` (default 1000) Devices are bound to one edge
//! node. The harness plays the mapper. `KEDGE_BENCH_REPORTS` says how it
//! reports:
//!
//! * `dmi` (the default): as a DMI mapper does, over edgecore's DMI socket
//!   (`MapperRegister`, then one `ReportDeviceStatus` per device, 64 at a
//!   time);
//! * `mqtt`: as an MQTT mapper does, one QoS 1 publish per device on
//!   `$hw/events/device/<id>/twin/update`, through a mosquitto broker.
//!
//! Measured:
//!
//! * the time until the edge holds every device (for `dmi`: until
//!   `MapperRegister` hands the mapper every device; for `mqtt`: until
//!   membership get lists every device);
//! * edgecore's resident memory (VmRSS) with them, after a settling time;
//! * per round of reports: the time from the first report until every
//!   Device's `status.twins` shows the new value, and the reports per
//!   second that makes.
//!
//! EdgeHub sends at most `messageQPS` messages a second to the cloud
//! (KubeEdge's default, 30, burst 60), reports and acknowledgements
//! alike, which bounds both figures. `KEDGE_BENCH_MESSAGE_QPS` sets it
//! (and the burst), and CloudHub's per-node limit (`nodeMessageQPS`, 100 by
//! default) with it, to measure what is behind those limits:
//!
//! ```sh
//! KEDGE_BENCH_MESSAGE_QPS=100000 cargo bench -p kedge-bins --bench devices
//! ```

// Printing the figures is what this harness is for.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use futures::{StreamExt, stream};
use kedge_apis::devices::Device;
use kedge_dmi::v1beta1 as dmi;
use kedge_dmi::v1beta1::device_manager_service_client::DeviceManagerServiceClient;
use kube::api::{Api, ListParams, PostParams};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use support::edgecore::EdgeCore;
use support::mqtt::Mosquitto;
use support::{Backend, Cloud, rss_kib};
use tokio::time::Instant;
use tonic::transport::Channel;

const NODE: &str = "edge-bench";
const MODEL: &str = "bench-model";
const ROUNDS: u32 = 3;
const CONCURRENT_CREATES: usize = 64;
/// DMI reports in flight at once.
const CONCURRENT_REPORTS: usize = 64;
/// The protocol the devices name, and the harness registers for.
const PROTOCOL: &str = "bench";
const SETTLE: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(250);

fn device_name(i: usize) -> String {
    format!("bench-device-{i}")
}

/// The reported value of `temperature` in each Device that has one.
async fn reported(devices: &Api<Device>) -> Vec<String> {
    devices
        .list(&ListParams::default())
        .await
        .expect("devices listed")
        .items
        .into_iter()
        .filter_map(|device| {
            device
                .status?
                .twins
                .into_iter()
                .find(|twin| twin.property_name == "temperature")?
                .reported
                .map(|value| value.value)
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("KEDGE_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let message_qps: Option<i32> = std::env::var("KEDGE_BENCH_MESSAGE_QPS")
        .ok()
        .and_then(|v| v.parse().ok());
    let limit = message_qps.map_or("30 (default)".to_owned(), |qps| qps.to_string());
    println!("device benchmark: {count} devices on one edge node, EdgeHub messageQPS {limit}");
    let cloud = Cloud::start_with(Backend::start(false).await, |config| {
        // The cloud's per-node limit follows, or it would drop the excess.
        if let Some(qps) = message_qps {
            config.modules.cloud_hub.node_message_qps = qps;
            config.modules.cloud_hub.node_message_burst = qps;
        }
    })
    .await;
    let client = cloud.client().await;
    cloud.ok_with_input(
        &["create", "-f", "-"],
        &json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": MODEL, "namespace": "default"},
            "spec": {"protocol": "modbus", "properties": [
                {"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}]},
        })
        .to_string(),
    );
    let devices: Api<Device> = Api::namespaced(client.clone(), "default");
    stream::iter(0..count)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let device: Device = serde_json::from_value(json!({
                    "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                    "metadata": {"name": device_name(i), "namespace": "default"},
                    "spec": {"deviceModelRef": {"name": MODEL}, "nodeName": NODE,
                        "protocol": {"protocolName": PROTOCOL},
                        "properties": [{"name": "temperature", "reportToCloud": true}]},
                }))
                .expect("device");
                devices
                    .create(&PostParams::default(), &device)
                    .await
                    .expect("device created");
            }
        })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<()>>()
        .await;

    let started = Instant::now();
    let edge = EdgeCore::start(&cloud, NODE, None, |config| {
        if let Some(qps) = message_qps {
            config.modules.edge_hub.message_qps = qps;
            config.modules.edge_hub.message_burst = qps;
        }
    });
    let mapper = match std::env::var("KEDGE_BENCH_REPORTS").as_deref() {
        Ok("mqtt") => Reporter::mqtt(&edge, count).await,
        Ok("dmi") | Err(_) => Reporter::dmi(&edge, count).await,
        Ok(other) => panic!("KEDGE_BENCH_REPORTS is dmi or mqtt, not {other:?}"),
    };
    let joined = started.elapsed();
    println!(
        "edge holds all {count} devices after {joined:.1?} (edgecore start included), reports over {}",
        mapper.name()
    );
    tokio::time::sleep(SETTLE).await;
    let rss = rss_kib(edge.pid().expect("edgecore runs"));

    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let value = (100 + round).to_string();
        let started = Instant::now();
        mapper.report_all(count, &value).await;
        loop {
            let done = reported(&devices)
                .await
                .iter()
                .filter(|reported| **reported == value)
                .count();
            if done >= count {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "round {round}: {done}/{count} reported"
            );
            tokio::time::sleep(POLL).await;
        }
        let elapsed = started.elapsed();
        println!("round {round}: {count} reports in Device status after {elapsed:.1?}");
        rounds.push(elapsed);
    }

    println!();
    println!(
        "| device benchmark, {count} devices on one node, reports over {}, messageQPS {limit} | |",
        mapper.name()
    );
    println!("| --- | --- |");
    println!("| edge holds every device (edgecore start included) | {joined:.1?} |");
    println!(
        "| edgecore RSS with {count} devices | {:.1} MiB |",
        rss as f64 / 1024.0
    );
    for (round, elapsed) in rounds.iter().enumerate() {
        println!(
            "| round {}: all reports in Device status | {elapsed:.1?} ({:.0} reports/s) |",
            round + 1,
            count as f64 / elapsed.as_secs_f64()
        );
    }
}

/// The harness's mapper: how it learns that the edge holds every device,
/// and how it reports.
enum Reporter {
    /// A DMI mapper: edgecore's DeviceManagerService.
    Dmi(DeviceManagerServiceClient<Channel>),
    /// An MQTT mapper, with the broker it publishes to (stopped when
    /// dropped).
    Mqtt {
        client: AsyncClient,
        _broker: Mosquitto,
    },
}

impl Reporter {
    fn name(&self) -> &'static str {
        match self {
            Self::Dmi(_) => "DMI",
            Self::Mqtt { .. } => "MQTT",
        }
    }

    /// Registers with edgecore's DMI socket until the answer carries every
    /// device.
    async fn dmi(edge: &EdgeCore, count: usize) -> Self {
        let socket = edge.dir().join("dmi.sock");
        let deadline = Instant::now() + DEADLINE;
        let channel = loop {
            if let Ok(channel) = kedge_dmi::socket::connect(&socket).await {
                break channel;
            }
            assert!(Instant::now() < deadline, "edgecore never served DMI");
            tokio::time::sleep(POLL).await;
        };
        let mut client = DeviceManagerServiceClient::new(channel);
        loop {
            let answer = client
                .mapper_register(dmi::MapperRegisterRequest {
                    with_data: true,
                    mapper: Some(dmi::MapperInfo {
                        name: "bench-mapper".into(),
                        protocol: PROTOCOL.into(),
                        address: edge
                            .dir()
                            .join("bench-mapper.sock")
                            .into_os_string()
                            .into_encoded_bytes(),
                        ..dmi::MapperInfo::default()
                    }),
                })
                .await
                .expect("registered")
                .into_inner();
            if answer.device_list.len() >= count {
                return Self::Dmi(client);
            }
            assert!(
                Instant::now() < deadline,
                "the edge never held every device"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Connects to a mosquitto broker EventBus uses, until membership get
    /// lists every device.
    async fn mqtt(edge: &EdgeCore, count: usize) -> Self {
        let mosquitto = Mosquitto::start(&edge.mqtt).await;
        let (host, port) = edge.mqtt.split_once(':').expect("host:port");
        let mut options = MqttOptions::new("kedge-bench-mapper", host, port.parse().expect("port"));
        options.set_keep_alive(Duration::from_secs(30));
        // The membership list of every device is one large message.
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (mqtt, mut events) = AsyncClient::new(options, count + 16);
        let membership = format!("$hw/events/node/{NODE}/membership/get");
        let (listed_tx, mut listed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let body: serde_json::Value =
                            serde_json::from_slice(&publish.payload).unwrap_or_default();
                        let listed = body["devices"].as_array().map_or(0, Vec::len);
                        if listed_tx.send(listed).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        });
        mqtt.subscribe(format!("{membership}/result"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let deadline = Instant::now() + DEADLINE;
        loop {
            mqtt.publish(&membership, QoS::AtLeastOnce, false, "{}")
                .await
                .expect("publish");
            if let Ok(Some(listed)) = tokio::time::timeout(POLL, listed_rx.recv()).await
                && listed >= count
            {
                return Self::Mqtt {
                    client: mqtt,
                    _broker: mosquitto,
                };
            }
            assert!(
                Instant::now() < deadline,
                "the edge never held every device"
            );
        }
    }

    /// Reports `value` for every device's `temperature` once.
    async fn report_all(&self, count: usize, value: &str) {
        match self {
            Self::Dmi(client) => {
                stream::iter(0..count)
                    .map(|i| {
                        let mut client = client.clone();
                        async move {
                            let twin = dmi::Twin {
                                property_name: "temperature".into(),
                                reported: Some(dmi::TwinProperty {
                                    value: value.to_owned(),
                                    ..dmi::TwinProperty::default()
                                }),
                                observed_desired: None,
                            };
                            client
                                .report_device_status(dmi::ReportDeviceStatusRequest {
                                    device_name: device_name(i),
                                    device_namespace: "default".into(),
                                    reported_device: Some(dmi::DeviceStatus {
                                        twins: vec![twin],
                                        ..dmi::DeviceStatus::default()
                                    }),
                                })
                                .await
                                .expect("report accepted");
                        }
                    })
                    .buffer_unordered(CONCURRENT_REPORTS)
                    .collect::<Vec<()>>()
                    .await;
            }
            Self::Mqtt { client: mqtt, .. } => {
                for i in 0..count {
                    let payload = json!({"event_id": format!("{value}-{i}"), "twin": {"temperature": {
                        "actual": {"value": value}, "metadata": {"type": "int"}}}});
                    mqtt.publish(
                        format!("$hw/events/device/{}/twin/update", device_name(i)),
                        QoS::AtLeastOnce,
                        false,
                        payload.to_string(),
                    )
                    .await
                    .expect("publish");
                }
            }
        }
    }
}
