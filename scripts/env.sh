# Sourced by the scripts: one build directory for the demo, the tests and CI, outside the
# checkout so that a fresh clone (CI) reuses what an earlier build on this machine compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sleeper-export/target}"
