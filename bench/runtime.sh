#!/usr/bin/env bash
# Runtime benchmarks: Gantry against crun, runc and a bare-namespaces floor.
#
#   bench/runtime.sh [--skip-gantry] [--skip-baselines] [--no-build] [--out DIR]
#
# Measures, with hyperfine (--warmup $WARMUP --runs $RUNS, JSON exported to OUT):
#   gantry   gantry --root TMP run --rm --memory 64Mi --entrypoint /bin/true gantry/sample:latest
#   crun     crun run of an equal bundle, inside `unshare --mount sh -c 'umount
#            /sys/fs/cgroup/unified; exec crun …'` because crun refuses the hybrid cgroup
#            layout of these machines; the wrapper's own cost is measured as crun-wrapper
#   runc     runc run of an equal bundle
#   floor    unshare --fork --pid --mount --uts --ipc --net chroot ROOTFS /bin/true
# All containers get the same namespaces (pid, mount, uts, ipc, network), a read-only view of
# the same rootfs and a 64 MiB memory limit; crun/runc keep their default mounts.
# Also: startup latency to the container's first instruction (the workload's `now` command
# prints CLOCK_REALTIME ns; compared with the time taken just before spawning), and the memory
# of Gantry's shim for a detached `sleep infinity` container.
#
# Environment: RUNS (100), WARMUP (5), LATENCY_RUNS (100), GANTRY_BIN (skip the release build
# and use this binary), SAMPLE_DIR (target/sample-image).
#
# Everything it creates (temp runtime roots, bundles, state dirs, cgroups, containers) is
# removed on exit, also on failure or Ctrl-C; it only ever signals processes it started.
set -euo pipefail

die() { echo "bench: error: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
lib="$repo/bench/benchlib.py"
RUNS="${RUNS:-100}"
WARMUP="${WARMUP:-5}"
LATENCY_RUNS="${LATENCY_RUNS:-100}"
SAMPLE_DIR="${SAMPLE_DIR:-$repo/target/sample-image}"
memory_bytes=$((64 * 1024 * 1024))
image="gantry/sample:latest"
out="$repo/target/bench/runtime"
do_gantry=1
do_baselines=1
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-gantry) do_gantry=0 ;;
    --skip-baselines) do_baselines=0 ;;
    --no-build) do_build=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

# --- prerequisites -----------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (containers need namespaces and cgroups)"
need=(hyperfine python3 unshare chroot)
[ $do_baselines = 1 ] && need+=(crun runc)
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out"/*.json "$out"/report.md

gantry=""
if [ $do_gantry = 1 ]; then
  if [ -n "${GANTRY_BIN:-}" ]; then
    gantry="$GANTRY_BIN"
  else
    if [ $do_build = 1 ]; then
      note "building release gantry"
      (cd "$repo" && cargo build --release --quiet -p gantry) || die "cargo build --release -p gantry failed"
    fi
    gantry="${CARGO_TARGET_DIR:-$repo/target}/release/gantry"
  fi
  [ -x "$gantry" ] || die "gantry binary not found at $gantry"
  "$gantry" run --help >/dev/null 2>&1 \
    || die "$gantry has no working 'run' subcommand yet; rerun with --skip-gantry for baselines only"
fi

note "building the sample image"
"$repo/scripts/sample-image.sh" "$SAMPLE_DIR" >/dev/null || die "sample image build failed"
rootfs="$SAMPLE_DIR/rootfs"
[ -x "$rootfs/app/gantry-workload" ] || die "no workload in $rootfs"

# --- scratch space and cleanup -----------------------------------------------------------------
work="$(mktemp -d /tmp/gantry-bench.XXXXXX)"
groot="$work/gantry-root"
cg_base="$(python3 "$lib" cgroup-base)/gantry-bench-$$"
python3 "$lib" cgroup-snapshot "$cg_base" "$work/cgroups.json"
started_ids=()

cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM
  trap - EXIT
  for id in "${started_ids[@]}"; do
    "$gantry" --root "$groot" stop "$id" >/dev/null 2>&1
    "$gantry" --root "$groot" rm "$id" >/dev/null 2>&1
  done
  for rt in crun runc; do
    for st in "$work/$rt-state"/*/; do
      [ -d "$st" ] || continue
      local cid; cid="$(basename "$st")"
      if [ $rt = crun ]; then
        unshare --mount sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root '$work/crun-state' delete -f '$cid'" >/dev/null 2>&1
      else
        runc --root "$work/runc-state" delete -f "$cid" >/dev/null 2>&1
      fi
    done
  done
  # Mounts Gantry made under our temp root (overlays of containers that did not clean up).
  awk -v w="$work" 'index($5, w "/") == 1 {print $5}' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount -l "$m" && note "unmounted leftover $m"; done
  python3 "$lib" cgroup-cleanup "$cg_base" "$work/cgroups.json" || note "some cgroups under $cg_base remain"
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hf() {  # LABEL COMMAND: hyperfine without a shell, one JSON per command
  local label="$1" cmd="$2"
  note "hyperfine: $label"
  hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --command-name "$label" \
    --export-json "$out/$label.json" "$cmd" >&2
}

# --- baselines: floor, crun, runc --------------------------------------------------------------
crun_wrap=""
if [ $do_baselines = 1 ]; then
  for rt in crun runc; do
    mkdir -p "$work/spec-$rt" "$work/$rt-state"
    (cd "$work/spec-$rt" && "$rt" spec) || die "$rt spec failed"
    for kind in true now; do
      if [ $kind = true ]; then args=(/bin/true); else args=(/app/gantry-workload now); fi
      python3 "$lib" bundle "$rt" "$work/spec-$rt/config.json" "$work/bundle/$rt-$kind" \
        "$rootfs" "$cg_base/$rt-$kind" "$memory_bytes" "${args[@]}"
    done
  done

  floor="unshare --fork --pid --mount --uts --ipc --net chroot $rootfs /bin/true"
  runc_cmd="runc --root $work/runc-state run --bundle $work/bundle/runc-true bench-runc-true"
  crun_inner="crun --root $work/crun-state run --bundle $work/bundle/crun-true bench-crun-true"
  # crun refuses "hybrid" hosts (cgroup2 mounted beside v1 controllers); hide cgroup2 from it
  # in a private mount namespace when that is the case here.
  if grep -q ' /sys/fs/cgroup/unified ' /proc/self/mountinfo; then
    crun_wrap="unshare --mount sh -c 'umount /sys/fs/cgroup/unified && exec \"\$@\"' wrap"
    crun_cmd="$crun_wrap $crun_inner"
  else
    crun_cmd="$crun_inner"
  fi

  note "sanity runs"
  $floor || die "floor command failed: $floor"
  $runc_cmd || die "runc run failed: $runc_cmd"
  eval "$crun_cmd" || die "crun run failed: $crun_cmd"

  hf floor "$floor"
  [ -n "$crun_wrap" ] && hf crun-wrapper "$crun_wrap /bin/true"
  hf crun "$crun_cmd"
  hf runc "$runc_cmd"
fi

# --- gantry ------------------------------------------------------------------------------------
if [ $do_gantry = 1 ]; then
  note "importing $image into $groot"
  "$gantry" --root "$groot" image import "$SAMPLE_DIR/gantry-sample.oci.tar" >&2 \
    || die "gantry image import failed"
  # The image's entrypoint is the workload, which execs a path argument; --entrypoint (when
  # the CLI has it) spares that extra exec so Gantry runs /bin/true directly like the others.
  if "$gantry" run --help 2>&1 | grep -q -- '--entrypoint'; then
    g_true="--entrypoint /bin/true $image"
  else
    note "gantry run has no --entrypoint: /bin/true runs through the workload's exec (+1 execve)"
    g_true="$image /bin/true"
  fi
  g_run="$gantry --root $groot run --rm --memory 64Mi"
  $g_run $g_true || die "gantry run failed: $g_run $g_true"
  hf gantry "$g_run $g_true"
  hf gantry-nolimits "$gantry --root $groot run --rm $g_true"
fi

# --- startup latency to the first instruction --------------------------------------------------
lat_files=()
lat() {  # LABEL CMD...
  local label="$1"; shift
  python3 "$lib" latency "$LATENCY_RUNS" "$WARMUP" "$out/latency-$label.json" "$label" -- "$@"
  lat_files+=("$out/latency-$label.json")
}
if [ $do_baselines = 1 ]; then
  lat floor unshare --fork --pid --mount --uts --ipc --net chroot "$rootfs" /app/gantry-workload now
  if [ -n "$crun_wrap" ]; then
    lat crun unshare --mount sh -c 'umount /sys/fs/cgroup/unified && exec "$@"' wrap \
      crun --root "$work/crun-state" run --bundle "$work/bundle/crun-now" bench-crun-now
  else
    lat crun crun --root "$work/crun-state" run --bundle "$work/bundle/crun-now" bench-crun-now
  fi
  lat runc runc --root "$work/runc-state" run --bundle "$work/bundle/runc-now" bench-runc-now
fi
if [ $do_gantry = 1 ]; then
  lat gantry "$gantry" --root "$groot" run --rm --memory 64Mi --entrypoint /app/gantry-workload \
    "$image" now
fi

# --- memory of the shim ------------------------------------------------------------------------
rss_files=()
if [ $do_gantry = 1 ]; then
  note "shim memory: detached sleep infinity"
  id="$("$gantry" --root "$groot" run -d --name bench-shim --entrypoint /app/gantry-workload "$image" sleep infinity)"
  id="$(printf '%s' "$id" | tail -n1 | tr -d '[:space:]')"
  [ -n "$id" ] || die "gantry run -d printed no container id"
  started_ids+=("$id")
  state="$groot/containers/$id/state.json"
  shim_pid=""
  for _ in $(seq 100); do
    shim_pid="$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s.get("shim_pid") or "" if s.get("status") == "running" else "")' "$state" 2>/dev/null || true)"
    [ -n "$shim_pid" ] && break
    sleep 0.05
  done
  [ -n "$shim_pid" ] || die "no shim_pid in $state"
  sleep 0.2  # the shim trims its memory right after reporting the container started
  [ "$(cat "/proc/$shim_pid/comm")" = gantry-shim ] \
    || die "pid $shim_pid from $state is not a gantry shim: $(cat "/proc/$shim_pid/comm")"
  python3 "$lib" rss "$shim_pid" "$out/rss-shim.json" "gantry shim"
  rss_files+=("$out/rss-shim.json")
  stop_args=()
  "$gantry" stop --help 2>&1 | grep -qE -- '--time\b' && stop_args=(--time 1)
  "$gantry" stop --help 2>&1 | grep -qE -- '--timeout\b' && stop_args=(--timeout 1)
  "$gantry" --root "$groot" stop "${stop_args[@]}" "$id" >/dev/null || die "gantry stop $id failed"
  "$gantry" --root "$groot" rm "$id" >/dev/null || die "gantry rm $id failed"
  started_ids=()
fi

# --- report ------------------------------------------------------------------------------------
hf_files=()
for label in gantry gantry-nolimits crun crun-wrapper runc floor; do
  [ -f "$out/$label.json" ] && hf_files+=("$out/$label.json")
done
report_args=("$out/report.md" "${hf_files[@]}")
[ ${#lat_files[@]} -gt 0 ] && report_args+=(--latency "${lat_files[@]}")
[ ${#rss_files[@]} -gt 0 ] && report_args+=(--rss "${rss_files[@]}")
{
  echo "# Gantry runtime benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cpus, $(uname -r))"
  echo
  python3 "$lib" report "${report_args[@]}" >/dev/null
  cat "$out/report.md"
  echo "Versions: $(crun --version 2>/dev/null | head -1); $(runc --version 2>/dev/null | head -1); $(hyperfine --version)"
} >"$out/report.full.md"
mv "$out/report.full.md" "$out/report.md"
cat "$out/report.md"
note "results in $out"
