//! The etcd v3 backend: the same semantics, from etcd itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};

use crate::{Event, EventStream, KeyValue, ListRequest, ListResponse, Store, StoreError};

/// Keys read per etcd range request when listing.
const LIST_PAGE: usize = 1000;

/// A [`Store`] in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The highest revision this process compacted to, reported in
    /// [`StoreError::Compacted`] (etcd's error does not say).
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None).await.map_err(backend)?;
        let store = Self {
            client,
            compacted: Arc::new(AtomicI64::new(0)),
        };
        // Fail now, not on first use, when etcd is not there.
        store.current_revision().await?;
        Ok(store)
    }

    fn translate(&self, error: etcd_client::Error, requested: i64) -> StoreError {
        let text = error.to_string();
        if text.contains("required revision has been compacted") {
            StoreError::Compacted {
                compacted: self.compacted.load(Ordering::SeqCst).max(requested + 1),
                requested,
            }
        } else if text.contains("required revision is a future revision") {
            StoreError::FutureRevision {
                requested,
                current: 0,
            }
        } else {
            backend(error)
        }
    }
}

fn backend(error: etcd_client::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// The key's current value from the `else` branch of a failed transaction.
fn current_from(response: &etcd_client::TxnResponse) -> Option<KeyValue> {
    response.op_responses().iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(key_value),
        _ => None,
    })
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let response = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend)?;
        Ok(revision_of(response.header()))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(backend)?;
        Ok(response.kvs().first().map(key_value))
    }

    async fn list(&self, request: ListRequest) -> Result<ListResponse, StoreError> {
        // etcd answers at most one gRPC message (4 MiB by default) per
        // range: read in pages at one revision until the limit or the end.
        let end = crate::prefix_end(&request.prefix);
        let range_end = if end.is_empty() { vec![0] } else { end };
        let mut start: Vec<u8> = match &request.start_after {
            Some(after) if after.as_str() >= request.prefix.as_str() => {
                let mut key = after.as_bytes().to_vec();
                key.push(0);
                key
            }
            _ => request.prefix.as_bytes().to_vec(),
        };
        let requested = request.revision.filter(|r| *r > 0);
        let mut revision = requested;
        let mut items = Vec::new();
        // Keys per range request; shrunk when a page of large values
        // exceeds the gRPC message limit.
        let mut page = LIST_PAGE;
        loop {
            let wanted = request
                .limit
                .map_or(page, |limit| (limit - items.len()).min(page));
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(i64::try_from(wanted).unwrap_or(i64::MAX));
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let response = match self
                .client
                .kv_client()
                .get(start.clone(), Some(options))
                .await
            {
                Ok(response) => response,
                Err(error)
                    if page > 1 && error.to_string().contains("message length too large") =>
                {
                    page = (page / 4).max(1);
                    continue;
                }
                Err(error) => return Err(self.translate(error, requested.unwrap_or(0))),
            };
            page = (page * 2).min(LIST_PAGE);
            let at = *revision.get_or_insert_with(|| revision_of(response.header()));
            items.extend(response.kvs().iter().map(key_value));
            let more = response.more();
            let full = request.limit.is_some_and(|limit| items.len() >= limit);
            if full || !more {
                return Ok(ListResponse {
                    items,
                    revision: at,
                    more,
                });
            }
            let Some(last) = items.last() else {
                return Ok(ListResponse {
                    items,
                    revision: at,
                    more,
                });
            };
            start = last.key.as_bytes().to_vec();
            start.push(0);
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.client.kv_client().txn(txn).await.map_err(backend)?;
        if response.succeeded() {
            Ok(revision_of(response.header()))
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> Result<i64, StoreError> {
        let compare = match expected {
            Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.client.kv_client().txn(txn).await.map_err(backend)?;
        if response.succeeded() {
            return Ok(revision_of(response.header()));
        }
        match current_from(&response) {
            None => Err(StoreError::NotFound),
            Some(kv) => Err(StoreError::Conflict {
                current: kv.mod_revision,
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue, StoreError> {
        let compare = match expected {
            Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.client.kv_client().txn(txn).await.map_err(backend)?;
        if !response.succeeded() {
            return match current_from(&response) {
                None => Err(StoreError::NotFound),
                Some(kv) => Err(StoreError::Conflict {
                    current: kv.mod_revision,
                }),
            };
        }
        response
            .op_responses()
            .iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(deleted) => deleted.prev_kvs().first().map(key_value),
                _ => None,
            })
            .ok_or(StoreError::NotFound)
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError> {
        let end = crate::prefix_end(prefix);
        let options = WatchOptions::new()
            .with_range(if end.is_empty() { vec![0] } else { end })
            .with_start_revision(after + 1)
            .with_prev_key();
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(backend)?;
        let compacted_seen = Arc::clone(&self.compacted);
        Ok(Box::pin(async_stream::stream! {
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => return,
                    Err(error) => {
                        yield Err(backend(error));
                        return;
                    }
                };
                if response.compact_revision() > 0 {
                    compacted_seen.fetch_max(response.compact_revision(), Ordering::SeqCst);
                    yield Err(StoreError::Compacted {
                        compacted: response.compact_revision(),
                        requested: after,
                    });
                    return;
                }
                if response.canceled() {
                    yield Err(StoreError::Backend(format!(
                        "etcd cancelled the watch: {}",
                        response.cancel_reason()
                    )));
                    return;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let prev = event.prev_kv().map(key_value);
                    match event.event_type() {
                        EventType::Put => yield Ok(Event::Put { kv: key_value(kv), prev }),
                        EventType::Delete => {
                            let prev = prev.unwrap_or_else(|| KeyValue {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                value: Vec::new(),
                                create_revision: 0,
                                mod_revision: 0,
                            });
                            yield Ok(Event::Delete { prev, revision: kv.mod_revision() });
                        }
                    }
                }
            }
        }))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match self
            .client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            // Compacting to an already compacted revision is a no-op.
            Err(error) if error.to_string().contains("compacted") => Ok(()),
            Err(error) => Err(self.translate(error, revision)),
        }
    }
}
