#!/usr/bin/env bash
# The README's test command: installs what the tests need, builds the sample image, then runs
# every test of the workspace. Must run as root (tests create real containers).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/sample-image.sh target/sample-image >/dev/null
cargo test --workspace --locked "$@"
