#!/usr/bin/env bash
# Control-plane figures: three Gantry members against three etcd members (Debian's
# etcd-server, fsync on commit, loaded through its native gRPC API; GANTRY_ETCD_CLIENT=gateway
# loads its JSON gateway instead) on loopback, same machine, same run: writes/s and p50/p99 at
# 1, 16 and 64 clients, linearizable gets on the leader and a follower, failover after SIGKILL and
# SIGTERM of the leader, member memory with 10,000 objects, and CPU time per write (all members
# and the leader alone, from /proc: less sensitive to a busy machine than writes/s).
# The drivers live in control-plane/tests/figures.rs (ignored by `cargo test`). The build
# honours CARGO_TARGET_DIR. At the end a table compares Gantry with etcd from this run
# (ratios > 1 for writes/s and < 1 for latency mean Gantry is ahead).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "bench: etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
# The machine is shared and its speed swings within minutes: Gantry and etcd are measured in
# alternating pairs (GANTRY_BENCH_PAIRS, default 2), each pair with its own table.
pairs=${GANTRY_BENCH_PAIRS:-2}
dir=$(mktemp -d /tmp/gantry-cp-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cargo test --release --locked -p gantry-control-plane --test figures --no-run
run() { cargo test --release --locked -p gantry-control-plane --test figures -- --ignored --nocapture --exact "$1" 2>&1; }
for i in $(seq "$pairs"); do
  run figures | tee "$dir/pair$i"
  run figures_etcd | tee -a "$dir/pair$i"
done
run failover
for i in $(seq "$pairs"); do
echo
echo "## pair $i"
python3 - "$dir/pair$i" <<'PY'
import re, sys
lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
def ms(v):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", v)
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
    return float(m.group(1)) * scale[m.group(2)] if m else float("nan")
def collect(pattern, key, values):
    """{key: {"gantry" | "etcd": values}} from lines matching pattern (group 1: "etcd ")."""
    out = {}
    for line in lines:
        m = re.search(pattern, line)
        if m:
            who = "etcd" if m.group(1) else "gantry"
            out.setdefault(key(m), {})[who] = values(m)
    return out
def pairs(rows):
    for k in sorted(rows):
        g, e = rows[k].get("gantry"), rows[k].get("etcd")
        if g and e:
            yield k, g, e
latency = lambda m: (int(m.group(3)), ms(m.group(4)), ms(m.group(5)))
rows = collect(r"(etcd )?clients=(\d+)\s+writes/s=\s*(\d+) p50=(\S+) p99=(\S+)", lambda m: int(m.group(2)), latency)
print()
print("| clients | Gantry writes/s | p50 ms | p99 ms | etcd writes/s | p50 ms | p99 ms | writes/s G/e | p50 G/e | p99 G/e |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c, g, e in pairs(rows):
    print(f"| {c} | {g[0]} | {g[1]:.2f} | {g[2]:.2f} | {e[0]} | {e[1]:.2f} | {e[2]:.2f} "
          f"| {g[0]/e[0]:.2f} | {g[1]/e[1]:.2f} | {g[2]/e[2]:.2f} |")
reads = collect(r"(etcd )?linearizable get on the (leader|follower): reads/s=(\d+) p50=(\S+) p99=(\S+)", lambda m: m.group(2), latency)
if reads:
    print()
    print("| linearizable get, 1 client | Gantry reads/s | p50 ms | p99 ms | etcd reads/s | p50 ms | p99 ms | reads/s G/e | p50 G/e |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for where, g, e in pairs(reads):
        print(f"| on the {where} | {g[0]} | {g[1]:.2f} | {g[2]:.2f} | {e[0]} | {e[1]:.2f} | {e[2]:.2f} "
              f"| {g[0]/e[0]:.2f} | {g[1]/e[1]:.2f} |")
cpu = collect(r"(etcd )?clients=(\d+)\s+cpu/write: members=(\d+)µs leader=(\d+)µs", lambda m: int(m.group(2)), lambda m: (int(m.group(3)), int(m.group(4))))
if cpu:
    print()
    print("| clients | Gantry CPU µs/write, 3 members | leader | etcd CPU µs/write, 3 members | leader | members G/e | leader G/e |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c, g, e in pairs(cpu):
        print(f"| {c} | {g[0]} | {g[1]} | {e[0]} | {e[1]} | {g[0]/e[0]:.2f} | {g[1]/e[1]:.2f} |")
PY
done
