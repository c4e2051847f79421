//! Pushing property values to HTTP endpoints and MQTT brokers
//! (devices.md §6.3, step 4), as KubeEdge's mapper framework does:
//!
//! * HTTP: `POST <hostName>:<port><requestPath>`, content type
//!   `application/x-www-form-urlencoded`, body `<property>=<value>&time=<YYYY-MM-DD HH:MM:SS>`
//!   (properly form-encoded here; the local time, as in KubeEdge). A
//!   `hostName` without a scheme gets `http://`. The `timeout` field is
//!   ignored, as in KubeEdge; every request has [`PUSH_TIMEOUT`].
//! * MQTT: connect to `address` (`tcp://host:port`, `mqtt://host:port` or
//!   `host:port`; port 1883 by default), publish
//!   `time is <YYYY-MM-DD HH:MM:SS>  <topic>: <value>` to `topic` with the
//!   given QoS and retain flag, disconnect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kedge_dmi::v1beta1 as dmi;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use thiserror::Error;

/// How long one push may take.
pub(crate) const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a push failed.
#[derive(Debug, Error)]
pub(crate) enum PushError {
    /// The push method's settings are unusable.
    #[error("invalid push settings: {0}")]
    Settings(String),
    /// The HTTP request failed.
    #[error("HTTP push to {url} failed")]
    Http {
        /// The endpoint.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The endpoint answered with an error status.
    #[error("HTTP push to {url} answered {status}")]
    Status {
        /// The endpoint.
        url: String,
        /// The answer's status.
        status: hyper::StatusCode,
    },
    /// The MQTT publish failed.
    #[error("MQTT publish to {broker} failed")]
    Mqtt {
        /// The broker.
        broker: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The push took longer than [`PUSH_TIMEOUT`].
    #[error("push timed out")]
    Timeout,
}

/// Where a property's values are pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    /// Form posts to an HTTP endpoint.
    Http {
        /// `scheme://host:port/path`.
        url: String,
    },
    /// Publishes to an MQTT broker.
    Mqtt {
        /// The broker's host.
        host: String,
        /// The broker's port.
        port: u16,
        /// The topic.
        topic: String,
        /// The QoS level.
        qos: QoS,
        /// Whether the broker retains the message.
        retain: bool,
    },
}

impl Push {
    /// The push a property's push method asks for: HTTP if given, else
    /// MQTT, else none (databases and OpenTelemetry are not supported).
    pub(crate) fn from_dmi(method: &dmi::PushMethod) -> Result<Option<Self>, PushError> {
        if let Some(http) = &method.http {
            let host = http.hostname.trim_end_matches('/');
            if host.is_empty() {
                return Err(PushError::Settings("http.hostName is empty".into()));
            }
            let scheme = if host.contains("://") { "" } else { "http://" };
            let url = format!("{scheme}{host}:{}{}", http.port, http.requestpath);
            return Ok(Some(Self::Http { url }));
        }
        if let Some(mqtt) = &method.mqtt {
            let address = ["tcp://", "mqtt://"]
                .iter()
                .find_map(|scheme| mqtt.address.strip_prefix(scheme))
                .unwrap_or(&mqtt.address);
            if address.contains("://") {
                return Err(PushError::Settings(format!(
                    "unsupported MQTT address {}",
                    mqtt.address
                )));
            }
            let (host, port) = match address.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    port.parse().map_err(|_| {
                        PushError::Settings(format!("bad port in MQTT address {}", mqtt.address))
                    })?,
                ),
                None => (address, 1883),
            };
            if host.is_empty() || mqtt.topic.is_empty() {
                return Err(PushError::Settings(
                    "mqtt.address and mqtt.topic must be set".into(),
                ));
            }
            let qos = u8::try_from(mqtt.qos)
                .ok()
                .and_then(|qos| rumqttc::qos(qos).ok())
                .ok_or_else(|| PushError::Settings(format!("bad MQTT QoS {}", mqtt.qos)))?;
            return Ok(Some(Self::Mqtt {
                host: host.to_owned(),
                port,
                topic: mqtt.topic.clone(),
                qos,
                retain: mqtt.retained,
            }));
        }
        Ok(None)
    }
}

/// The local time as KubeEdge's pushes print it.
fn now_text() -> String {
    jiff::ZonedDateTime::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Pushes values; one per mapper, shared by every device.
#[derive(Clone)]
pub(crate) struct Pusher {
    /// The HTTP client (connections are pooled).
    http: Client<HttpConnector, Full<Bytes>>,
}

/// Distinguishes the MQTT client ids of concurrent pushes.
static MQTT_CLIENTS: AtomicU64 = AtomicU64::new(0);

impl Pusher {
    /// A pusher.
    pub(crate) fn new() -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Pushes `property`'s `value` as `push` says.
    pub(crate) async fn push(
        &self,
        push: &Push,
        property: &str,
        value: &str,
    ) -> Result<(), PushError> {
        let pushing = async {
            match push {
                Push::Http { url } => self.post(url, property, value).await,
                Push::Mqtt {
                    host,
                    port,
                    topic,
                    qos,
                    retain,
                } => publish(host, *port, topic, *qos, *retain, value).await,
            }
        };
        tokio::time::timeout(PUSH_TIMEOUT, pushing)
            .await
            .map_err(|_| PushError::Timeout)?
    }

    /// Posts the form to `url`.
    async fn post(&self, url: &str, property: &str, value: &str) -> Result<(), PushError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| PushError::Http {
            url: url.to_owned(),
            source,
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair(property, value)
            .append_pair("time", &now_text())
            .finish();
        let request = hyper::Request::post(url)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| failed(error.into()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|error| failed(error.into()))?;
        let status = response.status();
        // Drain the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        if !status.is_success() {
            return Err(PushError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(())
    }
}

/// Connects to the broker, publishes, waits for the acknowledgement the
/// QoS asks for, and disconnects.
async fn publish(
    host: &str,
    port: u16,
    topic: &str,
    qos: QoS,
    retain: bool,
    value: &str,
) -> Result<(), PushError> {
    let broker = format!("{host}:{port}");
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PushError::Mqtt {
        broker: broker.clone(),
        source,
    };
    let id = format!(
        "kedge-mapper-{}-{}",
        std::process::id(),
        MQTT_CLIENTS.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 4);
    let payload = format!("time is {}  {topic}: {value}", now_text());
    client
        .publish(topic, qos, retain, payload)
        .await
        .map_err(|error| failed(error.into()))?;
    loop {
        let event = events.poll().await.map_err(|error| failed(error.into()))?;
        let published = match (&event, qos) {
            (Event::Outgoing(Outgoing::Publish(_)), QoS::AtMostOnce)
            | (Event::Incoming(Packet::PubAck(_)), QoS::AtLeastOnce)
            | (Event::Incoming(Packet::PubComp(_)), QoS::ExactlyOnce) => true,
            (Event::Outgoing(Outgoing::Disconnect), _) => return Ok(()),
            _ => false,
        };
        if published {
            client
                .disconnect()
                .await
                .map_err(|error| failed(error.into()))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_settings_become_targets() {
        let http = dmi::PushMethod {
            http: Some(dmi::PushMethodHttp {
                hostname: "127.0.0.1".into(),
                port: 8080,
                requestpath: "/data".into(),
                timeout: 1,
            }),
            ..Default::default()
        };
        assert_eq!(
            Push::from_dmi(&http).expect("http"),
            Some(Push::Http {
                url: "http://127.0.0.1:8080/data".into()
            })
        );
        let mqtt = |address: &str, qos| dmi::PushMethod {
            mqtt: Some(dmi::PushMethodMqtt {
                address: address.into(),
                topic: "t".into(),
                qos,
                retained: true,
            }),
            ..Default::default()
        };
        assert_eq!(
            Push::from_dmi(&mqtt("tcp://127.0.0.1:1884", 1)).expect("mqtt"),
            Some(Push::Mqtt {
                host: "127.0.0.1".into(),
                port: 1884,
                topic: "t".into(),
                qos: QoS::AtLeastOnce,
                retain: true,
            })
        );
        assert!(matches!(
            Push::from_dmi(&mqtt("127.0.0.1", 0)).expect("mqtt"),
            Some(Push::Mqtt { port: 1883, .. })
        ));
        assert!(Push::from_dmi(&mqtt("ssl://127.0.0.1:8883", 0)).is_err());
        assert!(Push::from_dmi(&mqtt("127.0.0.1", 3)).is_err());
        assert_eq!(
            Push::from_dmi(&dmi::PushMethod::default()).expect("none"),
            None
        );
    }
}
