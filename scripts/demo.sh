#!/usr/bin/env bash
# The README's main job: builds gantry and the sample image, imports the image into a demo
# runtime root, and runs a container from it. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --locked -p gantry
./scripts/sample-image.sh target/sample-image >/dev/null
export GANTRY_ROOT="${GANTRY_ROOT:-$PWD/target/demo-root}"
gantry=target/release/gantry
set -x
$gantry image import target/sample-image/gantry-sample.oci.tar
$gantry image ls
$gantry run --rm --hostname demo --memory 64Mi --cpus 0.5 -e GREETING=hello gantry/sample:latest /app/gantry-workload info
$gantry run -d --name demo-web gantry/sample:latest /app/gantry-workload serve --port 8080
$gantry ps
sleep 1
$gantry container logs demo-web
$gantry stop demo-web
$gantry rm demo-web
