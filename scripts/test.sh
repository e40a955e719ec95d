#!/usr/bin/env bash
# The whole test suite. It starts by itself the local servers the tests need (a real S3 server,
# moto, on 127.0.0.1) and stops them when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
eval "$(scripts/local-aws.sh start)"
trap 'scripts/local-aws.sh stop' EXIT
cargo test "$@"
