//! Shared caches: one watch per resource type feeds a store that every
//! controller reads and a change stream each controller subscribes to, so
//! the API server sends each pod or node once, whatever the number of
//! controllers.
//!
//! Subscribers see every object that is added, changed or deleted (the
//! deleted one as last seen), including objects that vanished while the
//! watch was re-listing, as client-go's informers report them. (kube-rs's
//! own shared stream reports no deletions and stalls its subscriber when
//! an object is gone before the subscriber reads it.)

use std::collections::HashSet;
use std::fmt::Debug;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How many changes a slow subscriber may lag behind before the watch
/// waits for it.
const SUBSCRIBER_BUFFER: usize = 4096;

/// One shared watch of `K` and its cache.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
    writer: Writer<K>,
    ready: watch::Sender<bool>,
    subscribers: Mutex<Vec<mpsc::Sender<Arc<K>>>>,
}

/// An informer's cache (a kube-rs [`Store`]) that can tell when it first
/// holds a complete list. Any number of tasks may wait for that at once:
/// [`Store::wait_until_ready`] wakes only the last of several waiters.
#[derive(Clone)]
pub struct Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    ready: watch::Receiver<bool>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Returns once the cache holds a complete list, or its informer
    /// stopped before that.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        // An error means the informer stopped: there is nothing to wait for.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

impl<K> Deref for Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    type Target = Store<K>;

    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over every `K` that `api` reaches.
    pub fn new(api: Api<K>) -> Self {
        Self::with_config(api, watcher::Config::default())
    }

    /// An informer over the `K` that `api` reaches and `config` selects.
    pub fn with_config(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Self {
            api,
            config,
            store,
            writer,
            ready: watch::Sender::new(false),
            subscribers: Mutex::default(),
        }
    }

    /// The cache; complete once [`Cache::ready`] returns.
    pub fn store(&self) -> Cache<K> {
        Cache {
            store: self.store.clone(),
            ready: self.ready.subscribe(),
        }
    }

    /// A stream of every object that changes from now on (and of the
    /// initial list); a deleted object comes as it was last seen. The
    /// cache already holds the change when it arrives. Subscribe before
    /// [`run`](Self::run).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(sender);
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|object| (object, receiver))
        })
    }

    /// Watches until `token` is cancelled, retrying with back-off after
    /// errors.
    pub async fn run(self, token: CancellationToken) {
        let kind = K::kind(&()).into_owned();
        let mut subscribers = self.subscribers.into_inner().expect("subscribers lock");
        let events = watcher(self.api, self.config)
            .default_backoff()
            .reflect(self.writer);
        let mut events = std::pin::pin!(events);
        // While (re-)listing: what the cache held before the list.
        let mut before: Vec<Arc<K>> = Vec::new();
        loop {
            let event = tokio::select! {
                () = token.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::debug!(%kind, %error, "watch error; it resumes");
                        continue;
                    }
                    None => return,
                },
            };
            let changed: Vec<Arc<K>> = match event {
                watcher::Event::Init => {
                    before = self.store.state();
                    Vec::new()
                }
                // Listed objects reach subscribers once the list is
                // complete, after the cache says it is ready: a subscriber
                // may wait for that before it reads.
                watcher::Event::InitApply(_) => Vec::new(),
                watcher::Event::InitDone => {
                    self.ready.send_replace(true);
                    let mut listed = self.store.state();
                    let before = std::mem::take(&mut before);
                    if !before.is_empty() {
                        let present: HashSet<ObjectRef<K>> = listed
                            .iter()
                            .map(|object| ObjectRef::from_obj(object.as_ref()))
                            .collect();
                        listed.extend(before.into_iter().filter(|object| {
                            !present.contains(&ObjectRef::from_obj(object.as_ref()))
                        }));
                    }
                    listed
                }
                watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                    vec![Arc::new(object)]
                }
            };
            for object in changed {
                publish(&mut subscribers, &object).await;
            }
        }
    }
}

/// Hands `object` to every subscriber still listening, waiting for those
/// whose buffer is full.
async fn publish<K>(subscribers: &mut Vec<mpsc::Sender<Arc<K>>>, object: &Arc<K>) {
    let mut gone = false;
    for subscriber in subscribers.iter() {
        gone |= subscriber.send(object.clone()).await.is_err();
    }
    if gone {
        subscribers.retain(|subscriber| !subscriber.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_learns_that_the_cache_is_ready() {
        let (store, _writer) = reflector::store::<k8s_openapi::api::core::v1::Pod>();
        let ready = watch::Sender::new(false);
        let cache = Cache {
            store,
            ready: ready.subscribe(),
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.ready().await })
            })
            .collect();
        tokio::task::yield_now().await;
        ready.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("woken")
                .expect("joined");
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_each_object_and_closed_ones_are_dropped() {
        let (first, mut first_rx) = mpsc::channel(4);
        let (second, second_rx) = mpsc::channel(4);
        let mut subscribers = vec![first, second];
        drop(second_rx);
        let object = Arc::new(k8s_openapi::api::core::v1::Pod::default());
        publish(&mut subscribers, &object).await;
        assert_eq!(subscribers.len(), 1);
        let received = first_rx.recv().await.expect("delivered");
        assert!(Arc::ptr_eq(&received, &object));
    }
}
