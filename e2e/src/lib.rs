//! Helpers for Gantry's end-to-end tests: locating the built `gantry` binary and the sample
//! image, and running commands with deadlines.
#![forbid(unsafe_code)]
