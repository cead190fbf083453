#!/usr/bin/env bash
# The README's main job, on a fresh Debian machine as root: builds gantry and the sample image,
# brings up a local cluster (3 servers + 3 agents, each in its own network namespace), applies
# the example manifests in manifests/, shows the running replicas and reaches the web service
# by name and through its node port. The cluster keeps
# running afterwards; `target/release/gantry cluster down --purge` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --locked -p gantry
./scripts/sample-image.sh target/sample-image >/dev/null
gantry="$PWD/target/release/gantry"

# A demo cluster left by an earlier run is replaced.
"$gantry" cluster down --purge --name demo >/dev/null 2>&1 || true
set -x
"$gantry" cluster up --name demo --servers 3 --agents 3 \
    --image target/sample-image/gantry-sample.oci.tar
"$gantry" get members
"$gantry" get nodes
# The services meant to run become ready; the crasher crash-loops on purpose.
"$gantry" apply -f manifests/web.yaml -f manifests/worker.yaml -f manifests/limited.yaml \
    --wait --timeout 60s
"$gantry" apply -f manifests/
"$gantry" scale service web --replicas 5 --wait
"$gantry" get services
"$gantry" get replicas -o wide
replica=$("$gantry" get replicas -l gantry.io/service=web -o name | head -n1)
"$gantry" exec "${replica#*/}" -- /app/gantry-workload info
# Service networking: from one replica, the service by name spreads over all five; from
# outside the nodes (server s1's namespace), node port 30080 on n1 reaches it too.
"$gantry" exec "${replica#*/}" -- /app/gantry-workload get http://web/ --count 50
n1=$("$gantry" get node n1 -o json | sed -n 's/.*"address": *"\([0-9.]*\):.*/\1/p')
nsenter --net=/run/netns/gantry-demo-s1 -- target/sample-image/rootfs/app/gantry-workload \
    get "http://$n1:30080/" --count 20
"$gantry" logs --tail 5 "${replica#*/}"
"$gantry" events | tail -n 15
set +x
echo
echo "The cluster keeps running: try '$gantry get replicas -w', '$gantry cluster status',"
echo "'$gantry cluster kill n1' (its replicas move), and '$gantry cluster down --purge' to remove it."
