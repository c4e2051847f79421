//! kube-rs (client and `watcher`) against a real cloudcore: typed CRUD,
//! patches, and a watcher that sees every change, on SQLite and etcd.

mod support;

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use support::{Backend, Cloud, DEADLINE};

async fn client(cloud: &Cloud) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cloud.kubeconfig).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig usable");
    Client::try_from(config).expect("client")
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("suite".to_owned(), "kube-rs".to_owned())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
        ..Default::default()
    }
}

async fn crud_and_watch(cloud: &Cloud) {
    let client = client(cloud).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let default = namespaces.get("default").await.expect("default namespace");
    assert!(default.metadata.uid.is_some());

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // The watcher (list then watch, as informers do) sees every change.
    let events = watcher(
        maps.clone(),
        watcher::Config::default().labels("suite=kube-rs"),
    );
    let mut events = Box::pin(events);
    let first = tokio::time::timeout(DEADLINE, events.try_next())
        .await
        .expect("watcher starts");
    assert!(matches!(first, Ok(Some(watcher::Event::Init))), "{first:?}");
    // The initial list happens as the stream is polled: finish it before
    // changing anything, so every change arrives through the watch.
    let listed = async {
        loop {
            match events.try_next().await {
                Ok(Some(watcher::Event::InitDone)) => return,
                Ok(Some(_)) => {}
                other => panic!("initial list failed: {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, listed)
        .await
        .expect("initial list within the deadline");

    let created = maps
        .create(&PostParams::default(), &config_map("kube-rs", "1"))
        .await
        .expect("create");
    assert!(created.metadata.resource_version.is_some());
    let patch = serde_json::json!({"data": {"value": "2"}});
    let patched = maps
        .patch("kube-rs", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(String::as_str),
        Some("2")
    );
    let strategic = serde_json::json!({"metadata": {"labels": {"extra": "yes"}}});
    maps.patch(
        "kube-rs",
        &PatchParams::default(),
        &Patch::Strategic(&strategic),
    )
    .await
    .expect("strategic patch");
    let listed = maps
        .list(&ListParams::default().labels("suite=kube-rs"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let error = maps
        .create(&PostParams::default(), &config_map("kube-rs", "1"))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 409),
        "{error:?}"
    );
    maps.delete("kube-rs", &DeleteParams::default())
        .await
        .expect("delete");
    let error = maps.get("kube-rs").await.expect_err("gone");
    assert!(
        matches!(error, kube::Error::Api(ref status) if status.code == 404),
        "{error:?}"
    );

    let mut seen = Vec::new();
    let collect = async {
        while let Some(event) = events.next().await {
            match event.expect("watch event") {
                watcher::Event::Apply(map) => {
                    seen.push(format!("apply {}", map.data.unwrap_or_default()["value"]))
                }
                watcher::Event::Delete(_) => {
                    seen.push("delete".to_owned());
                    return;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, collect)
        .await
        .expect("watcher saw the deletion");
    assert_eq!(
        seen.first().map(String::as_str),
        Some("apply 1"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("delete"), "{seen:?}");
    assert!(seen.iter().any(|s| s == "apply 2"), "{seen:?}");
}

/// A streaming list ends its initial events with a BOOKMARK whose object
/// carries the watched kind: client-go refuses one without it.
fn bookmarks_name_the_watched_kind(cloud: &Cloud) {
    let out = cloud.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true\
         &sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
    ]);
    let bookmarks: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("event line"))
        .filter(|event| event["type"] == "BOOKMARK")
        .collect();
    assert!(!bookmarks.is_empty(), "no bookmark in:\n{out}");
    for bookmark in bookmarks {
        assert_eq!(bookmark["object"]["kind"], "ConfigMap", "{bookmark}");
        assert_eq!(bookmark["object"]["apiVersion"], "v1", "{bookmark}");
        assert_eq!(
            bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
            "{bookmark}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_and_watcher_on_sqlite() {
    let cloud = Cloud::start(Backend::start(false).await).await;
    crud_and_watch(&cloud).await;
    bookmarks_name_the_watched_kind(&cloud);
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_and_watcher_on_etcd() {
    let cloud = Cloud::start(Backend::start(true).await).await;
    crud_and_watch(&cloud).await;
    cloud.stop().await;
}
