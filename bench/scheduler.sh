#!/bin/sh
# Scheduler figures: binds per second for 10,000 replicas on 1,000 simulated nodes,
# (1) the pure in-memory scheduler, (2) end to end through one in-process member with
# compare-and-swap writes through Raft. Release build.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-ctl}"
cargo test -p gantry-control-plane --release --lib scheduler_figures -- --ignored --nocapture
cargo test -p gantry-control-plane --release --test controllers scheduler_end_to_end_figures \
  -- --ignored --nocapture
