#!/usr/bin/env bash
# Whole-system figures: how long a real local cluster (1 server, 2 agents, each in its own
# network namespace) takes to
#   (1) apply a 100-replica service of the sample image (`gantry apply -f … --wait`) until
#       every replica is ready,
#   (2) scale it to 0 (`gantry scale service NAME --replicas 0 --wait`),
#   (3) scale it back to 100 (`--wait`),
# RUNS times (default 3), deleting the service (`gantry delete service NAME --wait`) between
# runs. Prints the median and worst of each step and writes them to
# bench/results/system-<UTC date>.txt.
#
# Run as root from anywhere:
#   bench/system.sh                    # builds release gantry and the sample image first
#   RUNS=5 REPLICAS=50 bench/system.sh
#   GANTRY_BIN=target/release/gantry bench/system.sh --no-build
#
# Everything lives in a `mktemp -d /tmp/gantry-system.*` directory: the cluster's directory,
# GANTRY_HOME and GANTRY_CONFIG (the user's own config and clusters are never touched). On
# exit, failure, SIGINT or SIGTERM: `gantry cluster down --purge --dir …`, then the directory
# is removed. Step timings are wall-clock around the CLI call (date +%s.%N), so they include
# the CLI's own start and its watch; the replica start path goes through the node agents
# (which run at most 4 container starts or stops at once each).
#
# Read the figures knowing that `scale --replicas 0 --wait` and `delete --wait` return once
# the Replica objects are gone, before the containers stop; `gantry-workload sleep` ignores
# SIGTERM as pid 1, so each stop takes the agent's full 10 s grace, and the next apply or
# scale-up waits behind ~125 s of stops (see bench/README.md, "System figures").
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
RUNS="${RUNS:-3}"
REPLICAS="${REPLICAS:-100}"
TIMEOUT="${TIMEOUT:-180s}"
SERVICE="bench-sleep"
build=1
[[ "${1:-}" == "--no-build" ]] && build=0

die() { echo "system-bench: error: $*" >&2; exit 1; }
note() { echo "system-bench: $*" >&2; }

[[ "$(id -u)" == 0 ]] || die "run as root (namespaces, cgroups)"

if [[ "$build" == 1 ]]; then
  note "building release gantry"
  cargo build --quiet --release -p gantry --bin gantry
  note "building the sample image"
  scripts/sample-image.sh >/dev/null
fi
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
GANTRY_BIN="${GANTRY_BIN:-$target_dir/release/gantry}"
[[ -x "$GANTRY_BIN" ]] || die "no gantry binary at $GANTRY_BIN"
IMAGE="${IMAGE:-$repo/target/sample-image/gantry-sample.oci.tar}"
[[ -f "$IMAGE" ]] || die "no sample image at $IMAGE (run scripts/sample-image.sh)"

tmp="$(mktemp -d /tmp/gantry-system.XXXXXX)"
export GANTRY_HOME="$tmp/home"
export GANTRY_CONFIG="$tmp/config"
cluster="$tmp/cluster"
up=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ "$up" == 1 ]]; then
    note "bringing the cluster down"
    "$GANTRY_BIN" cluster down --purge --dir "$cluster" >&2 || note "cluster down failed"
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

g() { "$GANTRY_BIN" "$@"; }

note "bringing up 1 server and 2 agents in $cluster"
up=1
g cluster up --servers 1 --agents 2 --dir "$cluster" --name bench --image "$IMAGE" >&2

manifest="$tmp/service.yaml"
cat >"$manifest" <<EOF
apiVersion: gantry/v1
kind: Service
metadata:
  name: $SERVICE
spec:
  replicas: $REPLICAS
  template:
    image: gantry/sample:latest
    command: ["/app/gantry-workload", "sleep", "infinity"]
    resources:
      requests: {cpu: 10m, memory: 8Mi}
      limits: {cpu: 100m, memory: 16Mi}
    restartPolicy: Always
EOF

now() { date +%s.%N; }
# timed NAME CMD...: runs CMD, appends its wall time in seconds to the array NAME.
timed() {
  local name="$1"; shift
  local t0 t1
  t0="$(now)"
  "$@" >&2 || die "step $name failed: $*"
  t1="$(now)"
  local secs
  secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
  note "$name: ${secs}s"
  eval "$name+=(\"$secs\")"
}

apply=(); down=(); upagain=(); delete=()
for run in $(seq 1 "$RUNS"); do
  note "run $run/$RUNS"
  timed apply g apply -f "$manifest" --wait --timeout "$TIMEOUT"
  timed down g scale service "$SERVICE" --replicas 0 --wait --timeout "$TIMEOUT"
  timed upagain g scale service "$SERVICE" --replicas "$REPLICAS" --wait --timeout "$TIMEOUT"
  timed delete g delete service "$SERVICE" --wait --timeout "$TIMEOUT"
done

# median and worst of the arguments (seconds).
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
          printf "median %6.2f s   worst %6.2f s   runs:", m, v[NR] }'
  printf ' %s' "$@"
  echo
}

mkdir -p "$repo/bench/results"
out="$repo/bench/results/system-$(date -u +%Y-%m-%d).txt"
{
  echo "# bench/system.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, kernel $(uname -r)"
  echo "# 1 server, 2 agents, $REPLICAS replicas of gantry/sample:latest sleeping, $RUNS runs"
  echo "apply ${REPLICAS} --wait         $(stats "${apply[@]}")"
  echo "scale ${REPLICAS}->0 --wait      $(stats "${down[@]}")"
  echo "scale 0->${REPLICAS} --wait      $(stats "${upagain[@]}")"
  echo "delete --wait            $(stats "${delete[@]}")"
} | tee "$out"
note "written to $out"
