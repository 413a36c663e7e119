#!/usr/bin/env bash
# How a simulation's time and memory grow with jobs, nodes and queue length: the shipped
# synthetic workload (examples/synthetic.toml, seed 1) scaled to 10,000, 100,000 and 1,000,000
# jobs, arriving at a rate that keeps the same 67 hours of arrivals, each on a cluster where the
# queue stays short (utilization about 0.2) and on one a quarter that size, where it stays long.
# One run per row (GNU time: wall time, maximum resident memory), with the run's average wait
# and cycles; the table of docs/benchmarks.md ("How a run grows"). The 1,000,000-job rows take
# minutes: they run only with LONG=1.
# Needs: apt-get install time
# Usage: [LONG=1] benches/sim-growth.sh [qm binary]   (from the repository root)
set -euo pipefail
DEFAULT_RUNS=1
# shellcheck source=benches/qm-binary.sh
source "$(dirname "$0")/qm-binary.sh"
row() { # jobs per_hour nodes
  local spec="$OUT/w-$1.toml" out="$OUT/run-$1-$3"
  sed -e "s/^jobs = .*/jobs = $1/" -e "s/per_hour = [0-9.]*/per_hour = $2/" examples/synthetic.toml >"$spec"
  /usr/bin/time -o "$OUT/time" -f "%e %M" "$QM" sim run --cluster "$3x8" --trace "$spec" --format synthetic --out "$out" >/dev/null
  python3 - "$1" "$3" "$(cat "$OUT/time")" "$out/summary.json" <<'PY'
import json, sys
jobs, nodes, (secs, rss) = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
s = json.load(open(sys.argv[4]))
print(f"| {jobs:,} | {nodes:,}x8 | {s['avg_wait_s'] / 3600:.1f} h | {s['gpu_utilization']:.2f} | {s['cycles']:,} "
      f"| {float(secs):.2f} s | {int(rss) // 1024} MiB |")
PY
}
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "| jobs | cluster | average wait | utilization | cycles | wall time | max RSS |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
row 10000 150.0 100
row 10000 150.0 25
row 100000 1500.0 1000
row 100000 1500.0 250
if [ "${LONG:-0}" = 1 ]; then
  row 1000000 15000.0 10000
  row 1000000 15000.0 2500
fi
