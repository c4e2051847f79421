//! Device benchmark: twin reports from the edge to Device status, with
//! release builds of cloudcore and edgecore and a mosquitto broker on this
//! machine. Prints the figures; asserts only that every step completes.
//!
//! ```sh
//! cargo bench -p kedge-bins --bench devices
//! ```
//!
//! `KEDGE_BENCH_DEVICES` (default 1000) Devices are bound to one edge
//! node. The reports come over MQTT, as a mapper that publishes
//! `$hw/events/device/<id>/twin/update` sends them (DMI mappers are not
//! built yet): one client publishes one new reported value for every
//! device at once (QoS 1), and the harness polls the Devices until every
//! status shows it. Measured:
//!
//! * the time until the edge holds every device (membership);
//! * edgecore's resident memory (VmRSS) with them, after a settling time;
//! * per round of reports: the time from the first publish until every
//!   Device's `status.twins` shows the new value, and the reports per
//!   second that makes.
//!
//! EdgeHub sends at most `messageQPS` messages a second to the cloud
//! (KubeEdge's default, 30, burst 60), reports and acknowledgements
//! alike, which bounds both figures. `KEDGE_BENCH_MESSAGE_QPS` sets it
//! (and the burst) to measure what is behind that limit:
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
use kube::api::{Api, ListParams, PostParams};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use support::edgecore::EdgeCore;
use support::mqtt::Mosquitto;
use support::{Backend, Cloud, rss_kib};
use tokio::time::Instant;

const NODE: &str = "edge-bench";
const MODEL: &str = "bench-model";
const ROUNDS: u32 = 3;
const CONCURRENT_CREATES: usize = 64;
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
    let cloud = Cloud::start(Backend::start(false).await).await;
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
    let _mosquitto = Mosquitto::start(&edge.mqtt).await;
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

    // Membership: until the edge lists every device.
    let deadline = Instant::now() + DEADLINE;
    loop {
        mqtt.publish(&membership, QoS::AtLeastOnce, false, "{}")
            .await
            .expect("publish");
        if let Ok(Some(listed)) = tokio::time::timeout(POLL, listed_rx.recv()).await
            && listed >= count
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never held every device"
        );
    }
    let joined = started.elapsed();
    println!("edge holds all {count} devices after {joined:.1?} (edgecore start included)");
    tokio::time::sleep(SETTLE).await;
    let rss = rss_kib(edge.pid().expect("edgecore runs"));

    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let value = (100 + round).to_string();
        let started = Instant::now();
        for i in 0..count {
            let payload = json!({"event_id": format!("r{round}-{i}"), "twin": {"temperature": {
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
    println!("| device benchmark, {count} devices on one node, messageQPS {limit} | |");
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
