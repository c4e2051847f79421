//! The MetaServer against real kubectl: an ephemeral 127.0.0.1 port, a
//! store in a temporary directory seeded with objects, no cloud.
//!
//! kubectl must be installed; without it the tests pass vacuously, except
//! under CI (`CI` set), where they fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kedge_bus::{BusBuilder, BusConfig, CancellationToken, Module, ModuleContext, ModuleError};
use kedge_edge::metamanager::metaserver::{self, MetaServer, Uplink};
use kedge_edge::metamanager::store::{MetaStore, ObjectKey};
use kedge_message::content;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// A deadline for anything a test waits on.
const WAIT: Duration = Duration::from_secs(60);

/// kubectl's path, or `None` when it is missing outside CI.
fn kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|candidate| candidate.is_file())
    });
    assert!(
        found.is_some() || std::env::var_os("CI").is_none(),
        "kubectl is not installed, and CI needs these tests to run"
    );
    found
}

fn pod(namespace: &str, name: &str, app: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "labels": {"app": app},
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Pending"}})
}

fn configmap() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default", "uid": "uid-cfg", "resourceVersion": "20",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "data": {"greeting": "hello", "nested.json": "{\"a\": [1, 2]}"}})
}

struct Server {
    port: u16,
    store: MetaStore,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| Uplink::offline()).await
    }

    /// A server whose way to the cloud `uplink` makes.
    async fn start_with(uplink: impl FnOnce(&MetaStore) -> Uplink) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = MetaStore::open(dir.path().join("edgecore.db")).expect("store opens");
        for (namespace, name, app, rv) in [
            ("default", "web", "web", "10"),
            ("default", "db", "db", "11"),
            ("kube-system", "dns", "dns", "12"),
        ] {
            store
                .put_object(
                    &ObjectKey::new(namespace, "pod", name),
                    &pod(namespace, name, app, rv),
                )
                .expect("pod stored");
        }
        store
            .put_object(&ObjectKey::new("default", "configmap", "cfg"), &configmap())
            .expect("configmap stored");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shutdown = CancellationToken::new();
        let server = MetaServer::new(store.clone(), uplink(&store), "edge-1");
        tokio::spawn(metaserver::serve(listener, server, shutdown.clone()));
        Self {
            port,
            store,
            shutdown,
            dir,
        }
    }

    fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Command {
        let config = self.dir.path().join("kubeconfig");
        let mut command = Command::new(kubectl);
        command
            .env("KUBECONFIG", config)
            .arg(format!("--server=http://127.0.0.1:{}", self.port))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("cache").display()
            ))
            .arg("--request-timeout=30s")
            .args(args)
            .kill_on_drop(true)
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl to the end; (success, stdout, stderr).
    async fn run(&self, kubectl: &Path, args: &[&str]) -> (bool, String, String) {
        let output = tokio::time::timeout(WAIT, self.kubectl(kubectl, args).output())
            .await
            .expect("kubectl finishes in time")
            .expect("kubectl runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// One plain HTTP/1.1 request; (status code, body).
    async fn http(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("answered in time")
            .expect("read");
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_lists_and_selects() {
    let Some(kubectl) = kubectl() else { return };
    let server = Server::start().await;

    let (ok, out, err) = server.run(&kubectl, &["get", "pods"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("NAME") && out.contains("STATUS"),
        "a table:\n{out}"
    );
    assert!(out.contains("web") && out.contains("db"), "{out}");
    assert!(!out.contains("dns"), "only the default namespace:\n{out}");

    let (ok, out, err) = server.run(&kubectl, &["get", "pods", "-A"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("NAMESPACE") && out.contains("kube-system") && out.contains("dns"),
        "{out}"
    );

    let (ok, out, err) = server
        .run(&kubectl, &["get", "pods", "-l", "app=web", "-o", "name"])
        .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod/web");

    let (ok, out, err) = server
        .run(
            &kubectl,
            &[
                "get",
                "pods",
                "-A",
                "--field-selector=metadata.namespace=kube-system",
                "-o",
                "name",
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod/dns");

    let (ok, out, err) = server
        .run(&kubectl, &["get", "configmap", "cfg", "-o", "json"])
        .await;
    assert!(ok, "{err}");
    let served: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(served["data"], configmap()["data"]);
    assert_eq!(served["metadata"]["uid"], "uid-cfg");

    let (ok, out, err) = server
        .run(&kubectl, &["get", "configmap", "cfg", "-o", "yaml"])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("greeting: hello"), "{out}");

    let (ok, _, err) = server.run(&kubectl, &["get", "configmap", "missing"]).await;
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_sees_added_then_modified() {
    let Some(kubectl) = kubectl() else { return };
    let server = Server::start().await;
    let mut child = server
        .kubectl(&kubectl, &["get", "pods", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut wait_for = async |event: &str| {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("reads") {
                seen.push(line.clone());
                if line.starts_with(event) && line.contains("web") {
                    return;
                }
            }
            panic!("kubectl ended; it printed {seen:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {event} event for web in time"));
    };
    wait_for("ADDED").await;
    let mut running = pod("default", "web", "web", "13");
    running["status"] = json!({"phase": "Running"});
    server
        .store
        .put_object(&ObjectKey::new("default", "pod", "web"), &running)
        .expect("stored");
    wait_for("MODIFIED").await;
    child.kill().await.expect("kubectl stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_offline_and_bad_requests_get_status_objects() {
    let server = Server::start().await;
    let (code, status) = server
        .http(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"new"}}"#,
        )
        .await;
    assert_eq!(code, 503);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert_eq!(status["code"], 503);
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("not connected to the cloud"),
        "{status}"
    );

    let (code, status) = server
        .http("GET", "/apis/apps/v1/namespaces/default/deployments", "")
        .await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    let (code, status) = server
        .http("GET", "/api/v1/pods?labelSelector=%3D%3Dbad", "")
        .await;
    assert_eq!((code, status["kind"].as_str()), (400, Some("Status")));
    let (code, status) = server
        .http("GET", "/api/v1/namespaces/default/pods/nope", "")
        .await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    let (code, list) = server
        .http("GET", "/api/v1/namespaces/default/pods", "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.store.revision().to_string()
    );

    if let Some(kubectl) = kubectl() {
        let (ok, _, err) = server
            .run(
                &kubectl,
                &[
                    "create",
                    "configmap",
                    "new",
                    "--from-literal=a=b",
                    "--validate=false",
                ],
            )
            .await;
        assert!(!ok);
        assert!(err.contains("not connected to the cloud"), "{err}");
    }
}

/// Opens a watch with a plain HTTP/1.1 request.
async fn open_watch(port: u16, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    BufReader::new(stream)
}

/// The next event of a watch (skipping the HTTP head and chunk sizes).
async fn next_event(watch: &mut BufReader<TcpStream>) -> Value {
    tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                watch.read_line(&mut line).await.expect("reads") > 0,
                "the watch ended"
            );
            if line.contains("\"type\"") {
                return serde_json::from_str::<Value>(line.trim()).expect("an event");
            }
        }
    })
    .await
    .expect("an event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_a_revision_or_says_expired() {
    let server = Server::start().await;
    let revision = server.store.revision();
    server
        .store
        .delete_object(&ObjectKey::new("default", "pod", "db"), None)
        .expect("deleted");
    let mut watch = open_watch(
        server.port,
        &format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={revision}"),
    )
    .await;
    let deleted = next_event(&mut watch).await;
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["name"], "db");
    assert_eq!(
        deleted["object"]["metadata"]["resourceVersion"],
        (revision + 1).to_string()
    );

    let mut expired = open_watch(
        server.port,
        "/api/v1/pods?watch=true&resourceVersion=999999",
    )
    .await;
    let error = next_event(&mut expired).await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_watch_sees_objects_enter_and_leave() {
    let server = Server::start().await;
    let mut watch = open_watch(
        server.port,
        "/api/v1/pods?watch=true&labelSelector=app%3Dweb&sendInitialEvents=true\
         &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    let added = next_event(&mut watch).await;
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("web"))
    );
    let bookmark = next_event(&mut watch).await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let key = ObjectKey::new("default", "pod", "web");
    server
        .store
        .put_object(&key, &pod("default", "web", "other", "30"))
        .expect("relabelled");
    let left = next_event(&mut watch).await;
    assert_eq!(left["type"], "DELETED", "left the selection: {left}");
    server
        .store
        .put_object(
            &ObjectKey::new("default", "pod", "db"),
            &pod("default", "db", "web", "31"),
        )
        .expect("relabelled");
    let entered = next_event(&mut watch).await;
    assert_eq!(
        (
            entered["type"].as_str(),
            entered["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("db"))
    );
}

/// Stands in for EdgeHub and the cloud's DynamicController: approves every
/// Application, answering with its request body at resourceVersion 100
/// (or a success Status when it has none).
struct ApprovingCloud {
    seen: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl Module for ApprovingCloud {
    fn name(&self) -> &str {
        "websocket"
    }

    fn group(&self) -> &str {
        "hub"
    }

    async fn run(self, mut ctx: ModuleContext) -> Result<(), ModuleError> {
        while let Some(msg) = ctx.recv().await {
            let application = msg.content.clone();
            let _ = self.seen.send(application.clone());
            // A delete has no body: it is answered with a success Status.
            let object = match content::decode_base64(&application["ReqBody"])
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            {
                Some(mut object) => {
                    object["metadata"]["resourceVersion"] = json!("100");
                    object
                }
                None => {
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
                }
            };
            let mut answer = application;
            answer["Status"] = json!("Approved");
            answer["RespBody"] = content::from_bytes(object.to_string().as_bytes());
            let _ = ctx.bus().send_response(msg.response(answer));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_writes_go_to_the_cloud_as_applications() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut builder = BusBuilder::new(BusConfig::default());
    builder
        .register(ApprovingCloud { seen: seen_tx }, true)
        .expect("registers");
    let bus = builder
        .build(&mut prometheus_client::registry::Registry::default())
        .start();
    let (_link_up, connected) = tokio::sync::watch::channel(true);
    let handle = bus.handle();
    let server =
        Server::start_with(move |_| Uplink::new(handle, "websocket".to_owned(), connected, WAIT))
            .await;

    let (code, created) = server
        .http(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"new"},"data":{"a":"b"}}"#,
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["resourceVersion"], "100");
    let application = seen.recv().await.expect("an application");
    assert_eq!(application["Verb"], "create");
    assert_eq!(application["Nodename"], "edge-1");
    assert_eq!(application["Key"], "/core/v1/configmaps/default/null");

    // An update carries the cloud's resourceVersion, not the local one read.
    let (_, current) = server
        .http("GET", "/api/v1/namespaces/default/configmaps/cfg", "")
        .await;
    let mut changed = current.clone();
    changed["data"]["greeting"] = json!("bonjour");
    let (code, _) = server
        .http(
            "PUT",
            "/api/v1/namespaces/default/configmaps/cfg",
            &changed.to_string(),
        )
        .await;
    assert_eq!(code, 200);
    let application = seen.recv().await.expect("an application");
    assert_eq!(application["Verb"], "update");
    let sent: Value = content::decode_base64(&application["ReqBody"])
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .expect("a request body");
    assert_eq!(sent["metadata"]["resourceVersion"], "20");
    assert_eq!(sent["data"]["greeting"], "bonjour");

    if let Some(kubectl) = kubectl() {
        let (ok, out, err) = server
            .run(
                &kubectl,
                &[
                    "create",
                    "configmap",
                    "fresh",
                    "--from-literal=a=b",
                    "--validate=false",
                ],
            )
            .await;
        assert!(ok, "{err}");
        assert!(out.contains("configmap/fresh created"), "{out}");
        let (ok, _, err) = server
            .run(&kubectl, &["delete", "pod", "web", "--wait=false"])
            .await;
        assert!(ok, "{err}");
        let mut verbs = Vec::new();
        while let Ok(application) = seen.try_recv() {
            verbs.push(application["Verb"].as_str().unwrap_or("").to_owned());
        }
        assert_eq!(verbs, ["create", "delete"]);
    }
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}
