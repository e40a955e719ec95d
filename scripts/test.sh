#!/usr/bin/env bash
# The whole test suite. It starts by itself whatever local servers the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test "$@"
