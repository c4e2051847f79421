//! A module without behaviour answers synchronous callers at once.

use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, Message};
use kedge_runtime::PendingModule;
use prometheus_client::registry::Registry;

#[tokio::test(start_paused = true)]
async fn sync_request_to_a_pending_module_gets_an_error_reply() {
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(PendingModule::new("servicebus", "bus"), true)
        .unwrap();
    let mut registry = Registry::default();
    let bus = builder.build(&mut registry).start();
    let request = Message::new(
        "edged",
        "bus",
        "query",
        "default/service/x",
        serde_json::Value::Null,
    );
    let reply = bus
        .handle()
        .send_sync("servicebus", request.clone(), Some(Duration::from_secs(5)))
        .await
        .expect("an error reply, not a timeout");
    assert_eq!(reply.parent_id(), request.id());
    assert_eq!(reply.router.operation, "error");
    assert!(reply.content.as_str().unwrap().contains("servicebus"));
    assert!(bus.shutdown(Duration::from_secs(1)).await.is_clean());
}
