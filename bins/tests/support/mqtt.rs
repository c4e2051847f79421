//! A mosquitto broker for the device tests and benchmarks.

/// A mosquitto broker on a loopback address, stopped when dropped.
pub struct Mosquitto {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto listening on `address` (`127.0.0.1:<port>`) and
    /// waits until it accepts connections.
    pub async fn start(address: &str) -> Self {
        let (host, port) = address.split_once(':').expect("host:port");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} {host}\nallow_anonymous true\npersistence false\n"),
        )
        .expect("mosquitto.conf written");
        let child = tokio::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto runs (scripts/setup.sh installs it)");
        wait_until_listening(address, "mosquitto", String::new).await;
        Self {
            _child: child,
            _dir: dir,
        }
    }
}

/// Waits until `what` accepts connections at `address`, for at most
/// [`super::DEADLINE`]; `log` tells why not when it never does.
pub async fn wait_until_listening(address: &str, what: &str, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + super::DEADLINE;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} does not listen on {address}; its log:\n{}",
            log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Publishes `payload(attempt)` on `topic` with mosquitto_pub to the
/// broker at `address` until mosquitto_sub, subscribed to `result_topic`,
/// receives one message; returns it as JSON. Publishing again covers the
/// time mosquitto_sub takes to subscribe.
pub async fn request(
    address: &str,
    topic: &str,
    result_topic: &str,
    payload: impl Fn(u32) -> String,
) -> serde_json::Value {
    let (host, port) = address.split_once(':').expect("host:port");
    next_message(address, result_topic, async |attempt| {
        // A failed publish (the broker still starting) is tried again.
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", host, "-p", port, "-t", topic, "-m", &payload(attempt)])
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .expect("mosquitto_pub runs");
    })
    .await
}

/// Does `cause(attempt)` every 300 ms until mosquitto_sub, subscribed to
/// `topic` on the broker at `address`, receives one message; returns it
/// as JSON. Doing it again covers the time mosquitto_sub takes to
/// subscribe.
pub async fn next_message(
    address: &str,
    topic: &str,
    cause: impl AsyncFn(u32),
) -> serde_json::Value {
    let text = next_text(address, topic, cause).await;
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{topic}: {error}: {text:?}"))
}

/// [`next_message`], for a message that is not JSON: its text.
pub async fn next_text(address: &str, topic: &str, cause: impl AsyncFn(u32)) -> String {
    let (host, port) = address.split_once(':').expect("host:port");
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", topic, "-C", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs (scripts/setup.sh installs mosquitto-clients)");
    let deadline = tokio::time::Instant::now() + super::DEADLINE;
    let mut waiting = Box::pin(sub.wait_with_output());
    for attempt in 0.. {
        cause(attempt).await;
        if let Ok(output) =
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting).await
        {
            let output = output.expect("mosquitto_sub ends");
            return String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing on {topic} within {:?}",
            super::DEADLINE
        );
    }
    unreachable!("the loop returns or panics")
}

/// Asks membership get of `node`, through the broker at `address`, until
/// the list holds `device`; `log` says what the edge did, for the failure
/// message.
pub async fn wait_listed(address: &str, node: &str, device: &str, log: impl Fn() -> String) {
    let membership = format!("$hw/events/node/{node}/membership/get");
    let deadline = tokio::time::Instant::now() + super::DEADLINE;
    loop {
        let listed = request(
            address,
            &membership,
            &format!("{membership}/result"),
            |_| r#"{"event_id":"m"}"#.to_owned(),
        )
        .await;
        if listed["devices"]
            .as_array()
            .is_some_and(|devices| devices.iter().any(|d| d["id"] == device))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device never reached the edge: {listed}\n{}",
            log()
        );
    }
}

/// Drives `device`'s twin through the broker at `address` as a plain MQTT
/// client does: a reported value (23) is answered on the result topic and
/// shows in `kubectl get device`; twin get answers with it; a differing
/// desired value gives a delta. Returns the twin get answer.
pub async fn twin_round_trip(
    cloud: &super::Cloud,
    address: &str,
    device: &str,
) -> serde_json::Value {
    let update = format!("$hw/events/device/{device}/twin/update");
    let result = request(address, &update, &format!("{update}/result"), |_| {
        r#"{"event_id":"u1","twin":{"temperature":{"actual":{"value":"23"},"metadata":{"type":"int"}}}}"#
            .to_owned()
    })
    .await;
    assert_eq!(result["event_id"], "u1");
    assert!(result.get("code").is_none(), "{result}");
    cloud
        .eventually(
            &[
                "get",
                "device",
                device,
                "-o",
                "jsonpath={.status.twins[0].reported.value}",
            ],
            |value| value == "23",
        )
        .await;

    let get = format!("$hw/events/device/{device}/twin/get");
    let got = request(address, &get, &format!("{get}/result"), |_| {
        r#"{"event_id":"g1"}"#.to_owned()
    })
    .await;
    assert_eq!(got["event_id"], "g1");
    assert_eq!(got["twin"]["temperature"]["actual"]["value"], "23");

    let delta = request(address, &update, &format!("{update}/delta"), |attempt| {
        format!(
            r#"{{"twin":{{"temperature":{{"expected":{{"value":"{}"}}}}}}}}"#,
            30 + attempt
        )
    })
    .await;
    let wanted = delta["delta"]["temperature"].as_str().expect("delta value");
    assert!(wanted.starts_with('3'), "{delta}");
    assert_eq!(delta["twin"]["temperature"]["actual"]["value"], "23");
    got
}
