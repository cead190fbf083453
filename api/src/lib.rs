//! Gantry's API types: quantities, object types, validation and the protobuf services.
//! Depends on nothing else of Gantry's.
//!
//! - [`quantity`]: resource quantities (`500m`, `64Mi`).
//! - [`client`]: the typed gRPC client of the control plane, failing over between members.
//! - [`model`]: the typed spec and status of each kind (Service, Replica, Node, Event).
//! - [`events`]: Event naming and folding of repeats, shared by controllers and agents.
//! - [`objects`]: the object kinds stored by the control plane and their validation.
//! - [`manifest`]: YAML manifests for `gantry apply`: parsing and strict validation.
//! - [`net`]: IPv4 ranges (`10.214.0.0/16`) for node subnets and service addresses.
//! - [`proto`]: the generated gRPC services (`RaftService`, `ObjectService`) and messages.
#![forbid(unsafe_code)]

pub mod client;
pub mod events;
pub mod manifest;
pub mod model;
pub mod net;
pub mod objects;
pub mod quantity;

/// Generated protobuf messages and tonic clients/servers of `proto/gantry.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("gantry.v1");
}
