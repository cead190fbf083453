//! Gantry's control plane: the Raft-replicated object store, the API server and the
//! leader-only controllers.
//!
//! Not built yet: the control-plane issue fills this crate. Nothing here pretends to work.
#![forbid(unsafe_code)]
