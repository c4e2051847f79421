//! The SQLite store under many writers, readers and compactions at once:
//! every one succeeds (none fails with "database is locked").

use std::sync::Arc;

use futures::StreamExt;
use kedge_store::sqlite::SqliteStore;
use kedge_store::{ListRequest, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_reads_and_compactions_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("store.db"))
            .await
            .expect("open"),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for reader in 0..16 {
        let (store, stop) = (Arc::clone(&store), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.is_cancelled() {
                if reader % 2 == 0 {
                    store
                        .list(ListRequest {
                            prefix: "/registry/objectsyncs/".into(),
                            revision: None,
                            limit: Some(500),
                            start_after: None,
                        })
                        .await
                        .expect("list");
                } else {
                    store
                        .get(&format!("/registry/objectsyncs/{reads}"))
                        .await
                        .expect("get");
                }
                reads += 1;
            }
            reads
        }));
    }
    let compactor = {
        let (store, stop) = (Arc::clone(&store), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let revision = store.current_revision().await.expect("revision");
                store.compact(revision).await.expect("compact");
                tokio::task::yield_now().await;
            }
        })
    };
    futures::stream::iter(0..20_000)
        .map(|i| {
            let store = Arc::clone(&store);
            async move {
                store
                    .create(&format!("/registry/objectsyncs/{i}"), vec![b'x'; 600])
                    .await
                    .expect("create");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    stop.cancel();
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    compactor.await.expect("compactor");
}
