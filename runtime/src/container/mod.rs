//! Containers: specs, state records and operations.

mod error;
pub mod net;
pub mod rootfs;
pub mod security;
pub use error::ContainerError;
