//! One conformance suite, run on both backends: SQLite in a temporary file
//! and a real etcd started on loopback (Debian's `etcd-server`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kedge_store::sqlite::{SqliteOptions, SqliteStore};
use kedge_store::testing::Etcd;
use kedge_store::{Event, EventStream, ListRequest, Store, StoreError};

/// How long a watch may take to deliver an event.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// A store under test and what keeps it alive.
struct Subject {
    store: Arc<dyn Store>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state.db"))
        .await
        .expect("open sqlite");
    Subject {
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

async fn etcd() -> Subject {
    let etcd = Etcd::start()
        .await
        .expect("etcd starts (run scripts/setup.sh)");
    let store = etcd.store().await.expect("connect");
    Subject {
        store: Arc::new(store),
        _guard: Box::new(etcd),
    }
}

async fn next(events: &mut EventStream) -> Event {
    tokio::time::timeout(EVENT_DEADLINE, events.next())
        .await
        .expect("an event within the deadline")
        .expect("stream open")
        .expect("no error")
}

fn list(prefix: &str) -> ListRequest {
    ListRequest {
        prefix: prefix.to_owned(),
        ..ListRequest::default()
    }
}

fn keys(items: &[kedge_store::KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

async fn create_and_get(store: Arc<dyn Store>) {
    let before = store.current_revision().await.unwrap();
    assert!(before >= 1, "revisions start at 1");
    let rev = store.create("/t/a", b"one".to_vec()).await.unwrap();
    assert!(rev > before);
    assert_eq!(store.current_revision().await.unwrap(), rev);
    let kv = store.get("/t/a").await.unwrap().expect("present");
    assert_eq!(kv.value, b"one");
    assert_eq!((kv.create_revision, kv.mod_revision), (rev, rev));
    assert_eq!(store.get("/t/missing").await.unwrap(), None);
}

async fn create_refuses_existing_keys(store: Arc<dyn Store>) {
    store.create("/t/a", b"one".to_vec()).await.unwrap();
    assert_eq!(
        store.create("/t/a", b"two".to_vec()).await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(store.get("/t/a").await.unwrap().unwrap().value, b"one");
    store.delete("/t/a", None).await.unwrap();
    let again = store.create("/t/a", b"three".to_vec()).await.unwrap();
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision),
        (&b"three"[..], again)
    );
}

async fn updates_are_conditional(store: Arc<dyn Store>) {
    let r1 = store.create("/t/a", b"1".to_vec()).await.unwrap();
    let r2 = store.update("/t/a", b"2".to_vec(), Some(r1)).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        store.update("/t/a", b"x".to_vec(), Some(r1)).await,
        Err(StoreError::Conflict { current: r2 })
    );
    let r3 = store.update("/t/a", b"3".to_vec(), None).await.unwrap();
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.create_revision),
        (&b"3"[..], r3, r1)
    );
    assert_eq!(
        store.update("/t/none", b"x".to_vec(), None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.update("/t/none", b"x".to_vec(), Some(r3)).await,
        Err(StoreError::NotFound)
    );
}

async fn deletes_are_conditional(store: Arc<dyn Store>) {
    let r1 = store.create("/t/a", b"1".to_vec()).await.unwrap();
    let r2 = store.update("/t/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(
        store.delete("/t/a", Some(r1)).await,
        Err(StoreError::Conflict { current: r2 })
    );
    let prev = store.delete("/t/a", Some(r2)).await.unwrap();
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"2"[..], r2));
    assert!(
        store.current_revision().await.unwrap() > r2,
        "a delete is a revision"
    );
    assert_eq!(store.get("/t/a").await.unwrap(), None);
    assert_eq!(store.delete("/t/a", None).await, Err(StoreError::NotFound));
}

async fn revisions_are_global_and_increasing(store: Arc<dyn Store>) {
    let mut last = store.current_revision().await.unwrap();
    for i in 0..5 {
        let rev = store.create(&format!("/t/{i}"), vec![]).await.unwrap();
        assert!(rev > last);
        last = rev;
        let rev = store.update("/t/0", vec![i], None).await.unwrap();
        assert!(rev > last);
        last = rev;
    }
}

async fn list_returns_the_prefix_in_key_order(store: Arc<dyn Store>) {
    for key in [
        "/r/pods/ns2/b",
        "/r/pods/ns1/z",
        "/r/pods/ns1/a",
        "/r/podsx/ns1/a",
        "/r/pod/x",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let all = store.list(list("/r/pods/")).await.unwrap();
    assert_eq!(
        keys(&all.items),
        ["/r/pods/ns1/a", "/r/pods/ns1/z", "/r/pods/ns2/b"]
    );
    assert_eq!(all.revision, store.current_revision().await.unwrap());
    assert!(!all.more);
    let ns1 = store.list(list("/r/pods/ns1/")).await.unwrap();
    assert_eq!(keys(&ns1.items), ["/r/pods/ns1/a", "/r/pods/ns1/z"]);
    assert_eq!(ns1.items[0].value, b"/r/pods/ns1/a");
}

async fn list_pages_with_limit_and_start_after(store: Arc<dyn Store>) {
    for i in 0..7 {
        store.create(&format!("/p/k{i}"), vec![i]).await.unwrap();
    }
    let first = store
        .list(ListRequest {
            limit: Some(3),
            ..list("/p/")
        })
        .await
        .unwrap();
    assert_eq!(keys(&first.items), ["/p/k0", "/p/k1", "/p/k2"]);
    assert!(first.more);
    // A write between pages does not show in later pages read at the
    // first page's revision.
    store.create("/p/k9", vec![9]).await.unwrap();
    store.delete("/p/k4", None).await.unwrap();
    let second = store
        .list(ListRequest {
            prefix: "/p/".into(),
            revision: Some(first.revision),
            limit: Some(3),
            start_after: Some("/p/k2".into()),
        })
        .await
        .unwrap();
    assert_eq!(keys(&second.items), ["/p/k3", "/p/k4", "/p/k5"]);
    assert!(second.more);
    assert_eq!(second.revision, first.revision);
    let third = store
        .list(ListRequest {
            prefix: "/p/".into(),
            revision: Some(first.revision),
            limit: Some(3),
            start_after: Some("/p/k5".into()),
        })
        .await
        .unwrap();
    assert_eq!(keys(&third.items), ["/p/k6"]);
    assert!(!third.more);
}

async fn list_at_an_old_revision_sees_the_old_state(store: Arc<dyn Store>) {
    store.create("/o/a", b"a1".to_vec()).await.unwrap();
    let r = store.create("/o/b", b"b1".to_vec()).await.unwrap();
    store.update("/o/a", b"a2".to_vec(), None).await.unwrap();
    store.delete("/o/b", None).await.unwrap();
    store.create("/o/c", b"c1".to_vec()).await.unwrap();
    let old = store
        .list(ListRequest {
            revision: Some(r),
            ..list("/o/")
        })
        .await
        .unwrap();
    assert_eq!(keys(&old.items), ["/o/a", "/o/b"]);
    assert_eq!(old.items[0].value, b"a1");
    assert_eq!(old.revision, r);
    let now = store.list(list("/o/")).await.unwrap();
    assert_eq!(keys(&now.items), ["/o/a", "/o/c"]);
    assert_eq!(now.items[0].value, b"a2");
}

async fn list_at_a_future_revision_is_refused(store: Arc<dyn Store>) {
    let current = store.current_revision().await.unwrap();
    let result = store
        .list(ListRequest {
            revision: Some(current + 100),
            ..list("/f/")
        })
        .await;
    assert!(
        matches!(result, Err(StoreError::FutureRevision { requested, .. }) if requested == current + 100),
        "{result:?}"
    );
}

async fn watch_replays_history_then_follows(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let r1 = store.create("/w/a", b"1".to_vec()).await.unwrap();
    store.create("/other/x", b"no".to_vec()).await.unwrap();
    let r2 = store.update("/w/a", b"2".to_vec(), None).await.unwrap();
    let mut events = store.watch("/w/", start).await.unwrap();
    match next(&mut events).await {
        Event::Put { kv, prev } => {
            assert_eq!((kv.key.as_str(), kv.mod_revision, prev), ("/w/a", r1, None));
        }
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        Event::Put { kv, prev } => {
            assert_eq!(kv.mod_revision, r2);
            let prev = prev.expect("previous value");
            assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"1"[..], r1));
        }
        other => panic!("{other:?}"),
    }
    // Live changes follow, filtered by prefix.
    store.create("/other/y", b"no".to_vec()).await.unwrap();
    let r3 = store.create("/w/b", b"b".to_vec()).await.unwrap();
    let r4 = {
        store.delete("/w/a", None).await.unwrap();
        store.current_revision().await.unwrap()
    };
    match next(&mut events).await {
        Event::Put { kv, .. } => assert_eq!((kv.key.as_str(), kv.mod_revision), ("/w/b", r3)),
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        Event::Delete { prev, revision } => {
            assert_eq!(
                (prev.key.as_str(), prev.value.as_slice()),
                ("/w/a", &b"2"[..])
            );
            assert_eq!(revision, r4);
        }
        other => panic!("{other:?}"),
    }
}

async fn watch_from_now_sees_only_new_changes(store: Arc<dyn Store>) {
    store.create("/n/old", vec![]).await.unwrap();
    let now = store.current_revision().await.unwrap();
    let mut events = store.watch("/n/", now).await.unwrap();
    let rev = store.create("/n/new", vec![]).await.unwrap();
    let event = next(&mut events).await;
    assert_eq!((event.key(), event.revision()), ("/n/new", rev));
}

async fn compaction_forgets_old_revisions(store: Arc<dyn Store>) {
    let r1 = store.create("/c/a", b"1".to_vec()).await.unwrap();
    store.update("/c/a", b"2".to_vec(), None).await.unwrap();
    store.create("/c/b", b"b".to_vec()).await.unwrap();
    store.delete("/c/b", None).await.unwrap();
    let r = store.update("/c/a", b"3".to_vec(), None).await.unwrap();
    store.compact(r).await.unwrap();
    let old = store
        .list(ListRequest {
            revision: Some(r1),
            ..list("/c/")
        })
        .await;
    assert!(
        matches!(old, Err(StoreError::Compacted { requested, .. }) if requested == r1),
        "{old:?}"
    );
    let watch = store.watch("/c/", r1).await;
    let refused = match watch {
        Err(StoreError::Compacted { .. }) => true,
        Err(other) => panic!("{other:?}"),
        Ok(mut events) => matches!(
            tokio::time::timeout(EVENT_DEADLINE, events.next()).await,
            Ok(Some(Err(StoreError::Compacted { .. })))
        ),
    };
    assert!(refused, "a watch from a compacted revision is refused");
    let at = store
        .list(ListRequest {
            revision: Some(r),
            ..list("/c/")
        })
        .await
        .unwrap();
    assert_eq!(keys(&at.items), ["/c/a"]);
    assert_eq!(at.items[0].value, b"3");
    // Compacting again to the same revision is harmless, and writes go on.
    store.compact(r).await.unwrap();
    let mut events = store.watch("/c/", r).await.unwrap();
    let next_rev = store.update("/c/a", b"4".to_vec(), Some(r)).await.unwrap();
    assert_eq!(next(&mut events).await.revision(), next_rev);
}

async fn concurrent_creates_have_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create("/race/k", vec![i]).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::AlreadyExists) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn conditional_updates_race_without_lost_writes(store: Arc<dyn Store>) {
    store.create("/counter", b"0".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..5 {
                    loop {
                        let kv = store.get("/counter").await.unwrap().unwrap();
                        let n: u32 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                        match store
                            .update(
                                "/counter",
                                (n + 1).to_string().into_bytes(),
                                Some(kv.mod_revision),
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let kv = store.get("/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, b"40");
}

async fn large_lists_come_back_whole(store: Arc<dyn Store>) {
    // More than etcd's 4 MiB gRPC message limit in one unpaged list.
    let value = vec![b'x'; 32 * 1024];
    for i in 0..200 {
        store
            .create(&format!("/big/{i:04}"), value.clone())
            .await
            .unwrap();
    }
    let all = store.list(list("/big/")).await.unwrap();
    assert_eq!(all.items.len(), 200);
    assert!(!all.more);
    assert_eq!(all.items[199].key, "/big/0199");
    let limited = store
        .list(ListRequest {
            limit: Some(150),
            ..list("/big/")
        })
        .await
        .unwrap();
    assert_eq!((limited.items.len(), limited.more), (150, true));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let subject = super::sqlite().await;
                    super::$name(subject.store.clone()).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let subject = super::etcd().await;
                    super::$name(subject.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    create_and_get,
    create_refuses_existing_keys,
    updates_are_conditional,
    deletes_are_conditional,
    revisions_are_global_and_increasing,
    list_returns_the_prefix_in_key_order,
    list_pages_with_limit_and_start_after,
    list_at_an_old_revision_sees_the_old_state,
    list_at_a_future_revision_is_refused,
    watch_replays_history_then_follows,
    watch_from_now_sees_only_new_changes,
    compaction_forgets_old_revisions,
    concurrent_creates_have_one_winner,
    conditional_updates_race_without_lost_writes,
    large_lists_come_back_whole,
);

/// SQLite keeps everything across a restart, and revisions go on.
#[tokio::test]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let rev = {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create("/d/a", b"kept".to_vec()).await.unwrap();
        store.update("/d/a", b"kept2".to_vec(), None).await.unwrap()
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), rev);
    let kv = store.get("/d/a").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"kept2"[..], rev));
    assert!(store.create("/d/b", vec![]).await.unwrap() > rev);
}

/// A watcher that does not read is dropped with TooSlow instead of making
/// the store buffer without bound.
#[tokio::test]
async fn sqlite_drops_a_watcher_that_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(
        &dir.path().join("state.db"),
        SqliteOptions {
            watch_buffer: 4,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    let now = store.current_revision().await.unwrap();
    let mut events = store.watch("/s/", now).await.unwrap();
    for i in 0..20u8 {
        store.create(&format!("/s/{i}"), vec![]).await.unwrap();
    }
    let mut saw_too_slow = false;
    while let Ok(Some(item)) = tokio::time::timeout(EVENT_DEADLINE, events.next()).await {
        if item == Err(StoreError::TooSlow) {
            saw_too_slow = true;
            break;
        }
    }
    assert!(saw_too_slow);
}
