#!/usr/bin/env bash
# The test command of the README's quick start: builds the sample image, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
