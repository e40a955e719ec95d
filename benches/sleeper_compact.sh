#!/usr/bin/env bash
# Our leaf export against Sleeper's own compaction, on the scale bench's tables (issue 13).
#
#   benches/sleeper_compact.sh PATH/TO/compact [LAYOUT ...]     (default: k8-rg1m k128-rg1m k8-rg100k)
#
# `compact` is the binary of Sleeper's Rust workspace (gchq/sleeper, rust/apps/src/bin/compact.rs;
# `cargo build --release -p apps --bin compact` in its rust/ folder, about 20 minutes on two
# cores). It merges the same files into one file of the same row-group size and page size, as a
# Sleeper compaction job does (it also writes a sketches file, and dictionary-encodes every column
# where the table's settings say not to). Each layout runs three rounds, alternating the two on
# two cores and on one (`taskset -c 0`), each run its own process; the table is written first by
# `cargo bench --bench scale` if it is not there. Printed per run: wall time and peak RSS of the
# whole process.
set -euo pipefail

compact=${1:?usage: $0 PATH/TO/compact [LAYOUT ...]}
shift
layouts=("${@:-k8-rg1m k128-rg1m k8-rg100k}")
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
bench=$(cargo bench --bench scale --no-run 2>&1 | sed -n 's/.*(\(.*scale-[0-9a-f]*\)).*/\1/p')
out=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$out"' EXIT

timed() { /usr/bin/time -f "%e s, %M KiB" "$@" 2>&1 >/dev/null | tail -1; }

for layout in ${layouts[*]}; do
  rows=${layout#*-rg}
  case $rows in
    *m) rows=$((${rows%m} * 1000000)) ;;
    *k) rows=$((${rows%k} * 1000)) ;;
  esac
  # Writes the layout's table if it is not there yet.
  "$bench" --variant "ours-2-$layout" --runs 1 >"$out/setup.log" 2>&1 || {
    echo "the scale bench could not write or export layout $layout:" >&2
    tail -20 "$out/setup.log" >&2
    exit 1
  }
  inputs=("$target"/bench-data/scale/"$layout"-*/table/data/partition_root/*.parquet)
  for round in 1 2 3; do
    for cores in 2 1; do
      pin=()
      [ "$cores" = 1 ] && pin=(taskset -c 0)
      echo "$layout ours    $cores core(s): $(timed "${pin[@]}" "$bench" --variant "ours-$cores-$layout" --runs 1)"
      echo "$layout compact $cores core(s): $(RUST_LOG=warn timed "${pin[@]}" "$compact" "$out/out.parquet" \
        "${inputs[@]}" -k key -s timestamp -m "" -n "~" -r "$rows" -p 131072)"
      rm -f "$out"/*
    done
  done
done
