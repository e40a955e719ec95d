#!/usr/bin/env bash
# The main job on the embedded default: writes a Sleeper table on local disk and exports it,
# one sorted Parquet file per leaf partition. No AWS, no services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo run --quiet --bin sleeper-export -- demo --dir "${DEMO_DIR:-$CARGO_TARGET_DIR/demo}" "$@"
