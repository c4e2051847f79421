//! The embedded control plane's controllers. Each is a client of the
//! Kubernetes API (kube-rs), never of the storage beneath it, so it behaves
//! the same against any API server.
//!
//! - [`scheduler`]: binds pending pods to nodes.

pub mod quantity;
pub mod scheduler;
