//! Gantry's node agent: registers a node, watches the replicas bound to it and reconciles
//! them into containers through `gantry-runtime`.
//!
//! Not built yet: the agent/scheduler issue fills this crate. Nothing here pretends to work.
#![forbid(unsafe_code)]
