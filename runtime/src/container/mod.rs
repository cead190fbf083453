//! Containers: specs, state records and operations.

mod error;
pub use error::ContainerError;
