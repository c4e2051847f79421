//! KubeEdge's Device Management Interface (DMI, devices.md §5): the gRPC
//! contract between edgecore and the mappers that drive devices.
//!
//! * [`v1beta1`] holds the messages and both services, generated from
//!   `proto/api.proto`: edgecore serves [`v1beta1::device_manager_service_server`]
//!   on its DMI socket and calls each mapper through
//!   [`v1beta1::device_mapper_service_client`]; a mapper does the reverse.
//! * [`convert`] turns `Device` and `DeviceModel` resources into their DMI
//!   form, as edgecore does before handing them to a mapper, and turns a
//!   DMI protocol or visitor configuration back into the JSON a mapper's
//!   driver reads.
//! * [`socket`] connects a channel to a unix socket and serves on one.
//!
//! ```no_run
//! use kedge_dmi::{socket, v1beta1};
//! use v1beta1::device_manager_service_client::DeviceManagerServiceClient;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = socket::connect("/etc/kubeedge/dmi.sock").await?;
//! let mut edgecore = DeviceManagerServiceClient::new(channel);
//! let answer = edgecore
//!     .mapper_register(v1beta1::MapperRegisterRequest {
//!         with_data: true,
//!         mapper: Some(v1beta1::MapperInfo {
//!             name: "modbus-mapper".into(),
//!             protocol: "modbus".into(),
//!             address: b"/etc/kubeedge/modbus.sock".to_vec(),
//!             ..Default::default()
//!         }),
//!     })
//!     .await?
//!     .into_inner();
//! let names: Vec<String> = answer.device_list.into_iter().map(|d| d.name).collect();
//! # drop(names);
//! # Ok(())
//! # }
//! ```

pub mod convert;
pub mod socket;

/// The DMI v1beta1 messages, and the clients and servers of
/// `DeviceManagerService` (served by edgecore) and `DeviceMapperService`
/// (served by each mapper), generated from `proto/api.proto`.
pub mod v1beta1 {
    #![allow(unused_qualifications)]
    tonic::include_proto!("v1beta1");
}
