#!/usr/bin/env bash
# The main job on the embedded default: writes a Sleeper table on local disk and exports it,
# one sorted Parquet file per leaf partition. No AWS, no services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# Built as the test command builds it (dev-dependencies included), so that the demo and the
# tests share one build instead of compiling the dependencies twice with different features.
cargo build --quiet --tests --bins
"$CARGO_TARGET_DIR/debug/sleeper-export" demo --dir "${DEMO_DIR:-$CARGO_TARGET_DIR/demo}" "$@"
