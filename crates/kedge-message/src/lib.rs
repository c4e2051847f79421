//! The message that crosses every boundary in Kedge: between modules on the
//! module bus and between cloud and edge on the link.
//!
//! Its JSON form is KubeEdge's beehive `model.Message` byte for byte, so
//! Kedge and KubeEdge components can talk to each other:
//!
//! ```
//! use kedge_message::{Message, DEFAULT_MAX_FRAME_BYTES, group, module, operation};
//!
//! let query = Message::new(module::EDGED, group::META, operation::QUERY,
//!                          "default/configmap/cfg", serde_json::Value::Null);
//! let frame = query.encode();
//! let back = Message::decode(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap();
//! assert_eq!(back, query);
//! assert_eq!(back.ack().parent_id(), query.id());
//! ```

pub mod content;
pub mod delivery;
mod message;
mod names;
pub mod resource;
pub mod wire;

pub use message::{Message, MessageHeader, MessageRoute, now_millis};
pub use names::{group, module, operation, resource_type, source};
pub use wire::{DEFAULT_MAX_FRAME_BYTES, DecodeError};
