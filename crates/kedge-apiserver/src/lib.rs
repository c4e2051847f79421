//! The Kubernetes-compatible API server of Kedge's embedded control plane.
//!
//! It serves the Kubernetes REST API over [`kedge_store`]-style revisioned
//! storage, faithfully enough that kubectl, client-go informers, kube-rs and
//! the official Python client cannot tell it from kube-apiserver for what
//! Kedge's users do. Objects are handled as JSON values (`serde_json::Value`)
//! throughout; the per-kind rules live in their own modules:
//!
//! - [`auth`]: authentication (client certificates, bearer tokens,
//!   anonymous) and authorization (`system:masters`, the Node authorizer,
//!   the public bootstrap policy);
//! - [`codec`]: request body decoding and response negotiation;
//! - [`discovery`]: `/version` and the discovery documents;
//! - [`meta`]: object metadata on create and update (names, uid,
//!   generation, the status split);
//! - [`request`]: resource paths, verbs and query options;
//! - [`resources`]: the catalog of served resource types, built-in and
//!   custom, and their storage keys;
//! - [`structural`]: defaulting, pruning and validation of custom
//!   resources against their structural schema;
//! - [`status`]: the `metav1.Status` error model every failure answers with;
//! - [`patch`]: JSON patch, JSON merge patch and strategic merge patch;
//! - [`pki`]: the cluster CA, serving and admin certificates, the admin
//!   kubeconfig, and signing of node certificates;
//! - [`protobuf`]: decoding of Kubernetes protobuf request bodies;
//! - [`selector`]: label and field selectors;
//! - [`table`]: server-side printing (`as=Table`) for kubectl;
//! - [`tls`]: the HTTPS server loop (TLS, ALPN h2 and http/1.1, optional
//!   verified client certificates, graceful stop);
//! - [`defaults`] and [`validation`]: defaulting and validation of built-in
//!   kinds.

pub mod admission;
pub mod auth;
pub mod codec;
pub mod controllers;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod filter;
pub mod graph;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod request;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;
pub mod structural;
pub mod table;
pub mod tls;
pub mod validation;
