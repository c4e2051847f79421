//! Module bus behaviour on paused time: request/response, timeouts, group
//! fan-out, back-pressure and shutdown.

use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, BusError, BusHandle, Module, ModuleContext, ModuleError};
use kedge_message::Message;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::mpsc;

/// Answers every message it receives with an ACK.
struct Echo {
    name: &'static str,
    group: &'static str,
}

impl Module for Echo {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.set_ready();
        while let Some(msg) = ctx.recv().await {
            ctx.bus().send_response(msg.ack())?;
        }
        Ok(())
    }
}

/// Forwards every message it receives to a test channel.
struct Probe {
    name: &'static str,
    group: &'static str,
    seen: mpsc::UnboundedSender<(String, Message)>,
}

impl Module for Probe {
    fn name(&self) -> &str {
        self.name
    }

    fn group(&self) -> &str {
        self.group
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        while let Some(msg) = ctx.recv().await {
            let _ = self.seen.send((self.name.to_owned(), msg));
        }
        Ok(())
    }
}

/// Receives nothing until told to, then drains its inbox into a channel.
struct Gate {
    open: tokio::sync::oneshot::Receiver<()>,
    seen: mpsc::UnboundedSender<Message>,
}

impl Module for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn group(&self) -> &str {
        "gate"
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        tokio::select! {
            _ = self.open => {}
            () = ctx.cancelled() => return Ok(()),
        }
        while let Some(msg) = ctx.recv().await {
            let _ = self.seen.send(msg);
        }
        Ok(())
    }
}

/// Ignores shutdown for an hour.
struct Stubborn;

impl Module for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }

    fn group(&self) -> &str {
        "stubborn"
    }

    async fn run(self, ctx: ModuleContext) -> Result<(), ModuleError> {
        ctx.cancelled().await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

/// Fails at once.
struct Failing;

impl Module for Failing {
    fn name(&self) -> &str {
        "failing"
    }

    fn group(&self) -> &str {
        "failing"
    }

    async fn run(self, _ctx: ModuleContext) -> Result<(), ModuleError> {
        Err("cannot bind its port".into())
    }
}

fn request(operation: &str) -> Message {
    Message::new(
        "edged",
        "meta",
        operation,
        "default/configmap/cfg",
        json!(null),
    )
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode metrics");
    text
}

fn counter(text: &str, name: &str, module: &str) -> u64 {
    let prefix = format!("{name}{{module=\"{module}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn sync_request_gets_the_response_matched_by_parent_id() {
    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(
            Echo {
                name: "metamanager",
                group: "meta",
            },
            true,
        )
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let handle = bus.handle();

    let first = request("query");
    let second = request("query");
    let (a, b) = tokio::join!(
        handle.send_sync("metamanager", first.clone(), None),
        handle.send_sync("metamanager", second.clone(), None),
    );
    let (a, b) = (a.expect("first reply"), b.expect("second reply"));
    assert_eq!(a.parent_id(), first.id());
    assert_eq!(b.parent_id(), second.id());
    assert_eq!(a.content, json!("OK"));
    assert!(
        !handle.is_waiting(first.id()),
        "waiter removed after the reply"
    );

    assert!(bus.readiness().all_ready());
    assert!(bus.shutdown(Duration::from_secs(1)).await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn sync_request_times_out_and_late_response_finds_no_waiter() {
    let mut registry = Registry::default();
    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(
            Probe {
                name: "silent",
                group: "meta",
                seen,
            },
            true,
        )
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let handle = bus.handle();

    let started = tokio::time::Instant::now();
    let req = request("query");
    let err = handle
        .send_sync("silent", req.clone(), Some(Duration::from_secs(5)))
        .await
        .expect_err("nobody answers");
    assert!(
        matches!(err, BusError::Timeout { ref id, .. } if id == req.id()),
        "{err}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    // The request did arrive, flagged as synchronous.
    let (_, delivered) = seen_rx.recv().await.expect("delivered");
    assert!(delivered.header.sync);

    // A response after the timeout has nobody to go to.
    let late = handle.send_response(delivered.ack());
    assert!(matches!(late, Err(BusError::NoWaiter(ref id)) if id == req.id()));
    assert_eq!(
        counter(
            &metrics_text(&registry),
            "kedge_bus_sync_timeouts_total",
            "silent"
        ),
        1
    );

    // Default timeout from the config applies when none is given.
    let started = tokio::time::Instant::now();
    let err = handle.send_sync("silent", request("query"), None).await;
    assert!(matches!(err, Err(BusError::Timeout { .. })));
    assert_eq!(started.elapsed(), BusConfig::default().default_sync_timeout);

    assert!(bus.shutdown(Duration::from_secs(1)).await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn group_send_reaches_every_member_and_nothing_else() {
    let mut registry = Registry::default();
    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(
            Probe {
                name: "devicetwin",
                group: "twin",
                seen: seen.clone(),
            },
            true,
        )
        .and_then(|b| {
            b.register(
                Probe {
                    name: "twin-mirror",
                    group: "twin",
                    seen: seen.clone(),
                },
                true,
            )
        })
        .and_then(|b| {
            b.register(
                Probe {
                    name: "metamanager",
                    group: "meta",
                    seen: seen.clone(),
                },
                true,
            )
        })
        .and_then(|b| {
            b.register(
                Probe {
                    name: "eventbus",
                    group: "twin",
                    seen,
                },
                false,
            )
        })
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let handle = bus.handle();

    let msg = Message::new(
        "edgehub",
        "twin",
        "update",
        "membership",
        json!({"added_devices": []}),
    );
    assert_eq!(
        handle
            .send_to_group("twin", msg.clone())
            .await
            .expect("fan out"),
        2
    );

    let mut receivers = [
        seen_rx.recv().await.expect("one"),
        seen_rx.recv().await.expect("two"),
    ];
    receivers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(receivers[0].0, "devicetwin");
    assert_eq!(receivers[1].0, "twin-mirror");
    assert!(receivers.iter().all(|(_, m)| m.id() == msg.id()));

    let err = handle.send_to_group("bus", msg.clone()).await;
    assert!(matches!(err, Err(BusError::UnknownGroup(ref g)) if g == "bus"));
    let err = handle.send("eventbus", msg).await;
    assert!(
        matches!(err, Err(BusError::UnknownModule(ref m)) if m == "eventbus"),
        "disabled module gets nothing"
    );

    assert!(bus.shutdown(Duration::from_secs(1)).await.is_clean());
    assert!(seen_rx.try_recv().is_err(), "metamanager received nothing");
}

#[tokio::test(start_paused = true)]
async fn full_inbox_applies_back_pressure_and_is_counted() {
    let mut registry = Registry::default();
    let (open_tx, open) = tokio::sync::oneshot::channel();
    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let config = BusConfig {
        inbox_capacity: 2,
        ..BusConfig::default()
    };
    let mut builder = BusBuilder::new(config);
    builder
        .register(Gate { open, seen }, true)
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let handle = bus.handle();

    let sent: Vec<Message> = (0..3).map(|_| request("insert")).collect();
    handle
        .send("gate", sent[0].clone())
        .await
        .expect("room for one");
    handle
        .send("gate", sent[1].clone())
        .await
        .expect("room for two");

    // The third waits: the inbox holds two and nobody reads.
    let mut third = tokio::spawn({
        let handle: BusHandle = handle.clone();
        let msg = sent[2].clone();
        async move { handle.send("gate", msg).await }
    });
    let waited = tokio::time::timeout(Duration::from_secs(60), &mut third).await;
    assert!(waited.is_err(), "send must wait while the inbox is full");
    let err = handle.try_send("gate", request("insert"));
    assert!(matches!(err, Err(BusError::Full(ref m)) if m == "gate"));

    let text = metrics_text(&registry);
    assert_eq!(counter(&text, "kedge_bus_inbox_full_total", "gate"), 2);
    assert!(
        text.contains("kedge_bus_inbox_depth{module=\"gate\"} 2"),
        "{text}"
    );

    // Once the module reads, the waiting send completes and order holds.
    open_tx.send(()).expect("open the gate");
    third.await.expect("join").expect("third send completes");
    for expected in &sent {
        assert_eq!(seen_rx.recv().await.expect("in order").id(), expected.id());
    }
    assert_eq!(
        counter(
            &metrics_text(&registry),
            "kedge_bus_messages_sent_total",
            "gate"
        ),
        3
    );
    assert!(bus.shutdown(Duration::from_secs(1)).await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn blocked_send_is_released_by_shutdown() {
    let mut registry = Registry::default();
    let (_open_tx, open) = tokio::sync::oneshot::channel();
    let (seen, _seen_rx) = mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig {
        inbox_capacity: 1,
        ..BusConfig::default()
    });
    builder
        .register(Gate { open, seen }, true)
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let handle = bus.handle();
    handle.send("gate", request("insert")).await.expect("fits");
    let blocked = tokio::spawn({
        let handle = handle.clone();
        async move { handle.send("gate", request("insert")).await }
    });
    // Shut down only once the second send is really waiting for space.
    while counter(
        &metrics_text(&registry),
        "kedge_bus_inbox_full_total",
        "gate",
    ) == 0
    {
        tokio::task::yield_now().await;
    }
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    let result = blocked.await.expect("join");
    assert!(matches!(result, Err(BusError::ShuttingDown)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_within_grace_and_names_stragglers() {
    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(
            Echo {
                name: "cloudhub",
                group: "cloudhub",
            },
            true,
        )
        .and_then(|b| b.register(Stubborn, true))
        .expect("register");
    let bus = builder.build(&mut registry).start();

    // A task spawned by a module is waited for too.
    let started = tokio::time::Instant::now();
    let report = bus.shutdown(Duration::from_secs(10)).await;
    assert!(report.timed_out);
    assert_eq!(report.still_running, vec!["stubborn".to_owned()]);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_tasks_spawned_by_modules() {
    struct Spawner(tokio::sync::oneshot::Sender<()>);
    impl Module for Spawner {
        fn name(&self) -> &str {
            "spawner"
        }
        fn group(&self) -> &str {
            "spawner"
        }
        async fn run(self, ctx: ModuleContext) -> Result<(), ModuleError> {
            let token = ctx.token().clone();
            let done = self.0;
            ctx.spawn("flusher", async move {
                token.cancelled().await;
                // Flushing takes two seconds after shutdown begins.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = done.send(());
            });
            Ok(())
        }
    }
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder.register(Spawner(done_tx), true).expect("register");
    let bus = builder.build(&mut registry).start();
    tokio::task::yield_now().await;
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(!report.timed_out, "{report:?}");
    assert!(
        done_rx.try_recv().is_ok(),
        "the flusher finished before shutdown returned"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_module_stops_the_bus() {
    let mut registry = Registry::default();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(Failing, true)
        .and_then(|b| {
            b.register(
                Echo {
                    name: "edged",
                    group: "edged",
                },
                true,
            )
        })
        .expect("register");
    let bus = builder.build(&mut registry).start();
    let token = bus.token();
    tokio::time::timeout(Duration::from_secs(1), token.cancelled())
        .await
        .expect("a failing module cancels the token");
    let report = bus.shutdown(Duration::from_secs(1)).await;
    assert!(!report.is_clean());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "failing");
    assert!(report.failed[0].1.contains("cannot bind"));
}

#[tokio::test]
async fn duplicate_module_names_are_refused() {
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(
            Echo {
                name: "edged",
                group: "edged",
            },
            true,
        )
        .expect("first");
    let err = builder.register(
        Echo {
            name: "edged",
            group: "other",
        },
        false,
    );
    assert!(matches!(err, Err(BusError::DuplicateModule(ref n)) if n == "edged"));
}
