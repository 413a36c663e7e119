#!/usr/bin/env bash
# Counts the instructions the simulator retires on strict FIFO Philly 300 x 8, in total and in
# the simulation proper (`qm::sim::simulate`, which calls `qm_sim::simulate`; the compiler may
# inline the latter) per event: a measure that does not move between runs, for steps smaller
# than a noisy VM's wall-clock spread (see docs/benchmarks.md). Needs valgrind.
# Usage: benches/sim-instructions.sh [qm binary]   (from the repository root; about a minute)
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
QM=${1:-target/release/qm}
if [ "$QM" = target/release/qm ]; then
  cargo build --release -p qm-cli --bin qm
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$QM" sim run --cluster 300x8 \
  --trace traces/philly/philly.csv --format philly --policy strict-fifo --out "$OUT/run" \
  >/dev/null 2>"$OUT/valgrind.log"
EVENTS=$(sed -n 's/.*"events": *\([0-9]*\).*/\1/p' "$OUT/run/summary.json")
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" >"$OUT/annotated.txt"
count() { grep -m1 -E "$1" "$OUT/annotated.txt" | awk '{gsub(",", "", $1); print $1}'; }
TOTAL=$(count 'PROGRAM TOTALS')
SIMULATE=$(count 'qm::sim::simulate \[')
SCHEDULE=$(count 'qm_core::schedule::schedule_with \[')
echo "events=$EVENTS"
echo "instructions_total=$TOTAL"
echo "instructions_simulate=$SIMULATE per_event=$((SIMULATE / EVENTS))"
echo "instructions_schedule=$SCHEDULE per_event=$((SCHEDULE / EVENTS))"
