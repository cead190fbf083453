#!/usr/bin/env bash
# Service data-path figures, release build, run as root (needs wrk: apt-get install -y wrk):
#  - HTTP requests/s and p99 latency with wrk from a node's network namespace, through the
#    service's virtual address (nftables DNAT) against straight to the replica's address, on
#    the same one-replica service in the same run, alternating ROUNDS times (goal: >= 80 %);
#  - the same through the node port from another member's namespace;
#  - readiness cut-off: a replica's /healthz is broken while a client hits the service every
#    few ms; printed: time from the break to the last connection the replica got (probe
#    period, status write, watch and rule sync together).
# GANTRY_HOME and GANTRY_CONFIG point into a temp dir: the user's config is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
command -v wrk >/dev/null || { echo "bench/network.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --locked -p gantry
./scripts/sample-image.sh target/sample-image >/dev/null
gantry="$PWD/target/release/gantry"
workload="$PWD/target/sample-image/rootfs/app/gantry-workload"
work="$(mktemp -d /var/tmp/gantry-bench-XXXXXX)"
export GANTRY_HOME="$work" GANTRY_CONFIG="$work/config"
name="netbench$$"
cleanup() {
    "$gantry" cluster down --purge --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$gantry" cluster up --name "$name" --dir "$work/cluster" --servers 1 --agents 2 \
    --image target/sample-image/gantry-sample.oci.tar >/dev/null
in_ns() { local member="$1"; shift; nsenter --net="/run/netns/gantry-$name-$member" -- "$@"; }

cat >"$work/bench.yaml" <<'EOF'
apiVersion: gantry/v1
kind: Service
metadata:
  name: bench
spec:
  replicas: 1
  nodeSelector: {}
  template:
    image: gantry/sample:latest
    command: ["/app/gantry-workload", "serve"]
    ports: [{name: http, containerPort: 8080}]
    resources:
      requests: {cpu: 10m, memory: 8Mi}
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 1}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
EOF
"$gantry" apply -f "$work/bench.yaml" --wait --timeout 60s >/dev/null
vip="$("$gantry" get service bench -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["clusterIP"])')"
# "NAME IP NODE" of the bench service's first replica.
first_replica() {
    "$gantry" get replicas -o json | python3 -c '
import json,sys
items=json.load(sys.stdin)
items=items.get("items", items) if isinstance(items, dict) else items
r=[i for i in items if i["spec"]["service"]=="bench"][0]
print(r["metadata"]["name"], r["status"]["replicaIp"], r["spec"]["nodeName"])'
}
read -r _ rip node <<<"$(first_replica)"
node_ip="$("$gantry" get node "$node" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["address"].rsplit(":",1)[0])')"
echo "service bench: clusterIP $vip, replica $rip on $node ($node_ip); clients in $node's and s1's namespaces"

# wrk: "Requests/sec: N" and, with --latency, "99% Xms".
run_wrk() { # member url
    local out rps p99
    out="$(in_ns "$1" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$2")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
    echo "$rps $p99"
}
declare -a direct via nodeport
for round in $(seq "$ROUNDS"); do
    direct+=("$(run_wrk "$node" "http://$rip:8080/")")
    via+=("$(run_wrk "$node" "http://$vip:80/")")
    nodeport+=("$(run_wrk s1 "http://$node_ip:30080/")")
    echo "round $round: direct ${direct[-1]}, service ${via[-1]}, node port ${nodeport[-1]} (req/s p99)"
done
median() { printf '%s\n' "$@" | awk '{print $1}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
d="$(median "${direct[@]}")"; v="$(median "${via[@]}")"; n="$(median "${nodeport[@]}")"
awk -v d="$d" -v v="$v" -v n="$n" -v c="$CONNS" -v t="$DURATION" 'BEGIN {
    printf "wrk -c%s -d%s, median of rounds: direct %.0f req/s, service address %.0f req/s (%.1f %%), node port %.0f req/s (%.1f %%)\n",
        c, t, d, v, 100 * v / d, n, 100 * n / d }'

# Readiness cut-off with two replicas: break one, keep asking the service.
"$gantry" scale service bench --replicas 2 --wait --timeout 60s >/dev/null
read -r victim_name victim_ip _ <<<"$(first_replica)"
log="$work/hits.log"
in_ns "$node" python3 - "$vip" "$log" <<'EOF' &
import socket, sys, time
vip, log = sys.argv[1], sys.argv[2]
end = time.time() + 12
with open(log, "w") as f:
    while time.time() < end:
        try:
            s = socket.create_connection((vip, 80), timeout=1)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            host = [l for l in data.decode(errors="replace").splitlines() if l.startswith("hostname=")]
            f.write("%.6f %s\n" % (time.time(), host[0][9:] if host else "?"))
        except OSError as e:
            f.write("%.6f error %s\n" % (time.time(), e))
        time.sleep(0.003)
EOF
client=$!
sleep 2
broke=$(date +%s.%N)
in_ns "$node" "$workload" get "http://$victim_ip:8080/fail" >/dev/null
wait "$client"
last=$(awk -v v="$victim_name" '$2 == v {t=$1} END {print t}' "$log")
errors=$(grep -c ' error ' "$log" || true)
after=$(awk -v v="$victim_name" -v b="$broke" '$2 == v && $1 > b {n++} END {print n+0}' "$log")
awk -v b="$broke" -v l="$last" -v e="$errors" -v n="$after" 'BEGIN {
    printf "readiness cut-off (probe period 1 s, failureThreshold 1): /healthz broken -> last connection to the replica %.0f ms (%d connections after the break); client errors %d\n",
        1000 * (l - b), n, e }'
