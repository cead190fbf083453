#!/usr/bin/env bash
# Control-plane figures: three Gantry members against three etcd members (Debian's
# etcd-server, fsync on commit) on loopback, same machine, same run: writes/s and p50/p99 at
# 1, 16 and 64 clients, leader-kill failover time, and member memory with many objects.
# The drivers live in control-plane/tests/figures.rs (ignored by `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "bench: etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
cargo test --release --locked -p gantry-control-plane --test figures -- --ignored --nocapture --test-threads=1
