//! Gantry's container runtime. It knows nothing of the cluster: it turns an image and a
//! container spec into a supervised Linux container, and lets any later process list, watch,
//! stop and re-adopt it through the state kept under a root directory.
//!
//! Modules:
//! - [`root`]: the on-disk layout under the runtime root (`--root` / `GANTRY_ROOT`).
//! - [`images`]: the content-addressed image store (OCI layouts, `docker save` archives,
//!   rootfs tarballs), layers unpacked once and shared.
//! - [`cgroups`]: resource limits through cgroup v1 or v2, detected at start.
//! - [`container`]: container specs, state records, and the operations on them
//!   (create/start, list, stop, remove, logs).
//! - [`shim`]: the per-container supervisor process and the container's init path; both run
//!   from a plain `fn main()` before any async runtime exists.
//!
//! The whole crate is synchronous on purpose: it forks and unshares, which must never happen
//! in a multi-threaded process. Async callers wrap it in `spawn_blocking`.

pub mod cgroups;
pub mod container;
pub mod images;
pub mod root;
pub mod shim;
