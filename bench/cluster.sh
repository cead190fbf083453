#!/usr/bin/env bash
# Local-cluster figures, release build, run as root:
#  - `gantry cluster up` of 3 servers + 3 agents (each in its own network namespace) until
#    every member is ready: median and worst of RUNS runs (goal <= 3 s after build);
#  - SIGKILL of the Raft leader -> first write accepted (goal <= 1.5 s), and SIGKILL of an
#    agent -> all its replicas ready elsewhere (goal <= 10 s), as printed by the e2e tests.
# GANTRY_HOME and GANTRY_CONFIG point into a temp dir: the user's config is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-5}"
cargo build --release --locked -p gantry
./scripts/sample-image.sh target/sample-image >/dev/null
gantry="$PWD/target/release/gantry"
work="$(mktemp -d /var/tmp/gantry-bench-XXXXXX)"
export GANTRY_HOME="$work" GANTRY_CONFIG="$work/config"
cleanup() {
    "$gantry" cluster down --purge --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

times=()
for i in $(seq "$RUNS"); do
    start=$(date +%s.%N)
    "$gantry" cluster up --name bench --dir "$work/cluster" --servers 3 --agents 3 \
        --image target/sample-image/gantry-sample.oci.tar >/dev/null
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
    "$gantry" cluster down --purge --dir "$work/cluster" >/dev/null
done
printf '%s\n' "${times[@]}" | sort -n | awk -v runs="$RUNS" '
    { t[NR] = $1 }
    END { printf "cluster up (3 servers + 3 agents, netns): median %.2f s, worst %.2f s over %d runs\n",
          t[int((NR + 1) / 2)], t[NR], runs }'

# Failover figures come from the e2e scenarios that measure them.
cargo test --release --locked -p gantry-e2e --test control_plane_faults --test workloads \
    -- --nocapture sigkill 2>&1 | grep '^figure:'
