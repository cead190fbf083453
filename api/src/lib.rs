//! Gantry's API types: quantities, object types, validation and (later) the protobuf
//! services. Depends on nothing else of Gantry's.
#![forbid(unsafe_code)]

pub mod quantity;
