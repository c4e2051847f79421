//! The admin server over a real socket: metrics, health and readiness.

use std::sync::Arc;
use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, Message, Module, ModuleContext, ModuleError};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Becomes ready when it receives its first message.
struct Lazy;

impl Module for Lazy {
    fn name(&self) -> &str {
        "edgecontroller"
    }

    fn group(&self) -> &str {
        "edgecontroller"
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        while ctx.recv().await.is_some() {
            ctx.set_ready();
        }
        Ok(())
    }
}

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn admin_serves_metrics_health_and_readiness() {
    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder.register(Lazy, true).expect("register");
    let bus = builder.build(&mut registry).start();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let router = kedge_runtime::admin::router(Arc::new(registry), bus.readiness());
    let server = tokio::spawn(kedge_runtime::admin::serve(listener, router, bus.token()));

    assert_eq!(get(address, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = get(address, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("edgecontroller"), "{body}");

    let msg = Message::new(
        "cloudhub",
        "edgecontroller",
        "update",
        "node/n1/default/nodepatch/n1",
        serde_json::Value::Null,
    );
    bus.handle()
        .send("edgecontroller", msg)
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = get(address, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::task::yield_now().await;
    }

    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("kedge_bus_messages_sent_total{module=\"edgecontroller\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("kedge_bus_inbox_depth{module=\"edgecontroller\"}"),
        "{body}"
    );

    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    server.await.expect("join").expect("server ended cleanly");
}
