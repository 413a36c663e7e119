#!/usr/bin/env bash
# Times `qm sim run` as a user runs it, on the whole Philly trace (82,247 jobs) on 300 nodes x 8
# GPUs: reading the CSV, simulating, writing summary.json, jobs.csv and the plots. hyperfine
# gives each policy's median, mean and range over repeated runs; GNU time gives one run's
# maximum resident memory. Needs: apt-get install hyperfine time
# Usage: benches/sim-run-time.sh [qm binary] [runs]   (from the repository root)
set -euo pipefail
DEFAULT_RUNS=10
# shellcheck source=benches/qm-binary.sh
source "$(dirname "$0")/qm-binary.sh"
TRACE=traces/philly/philly.csv
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs)"
for policy in strict-fifo default; do
  cmd="$QM sim run --cluster 300x8 --trace $TRACE --format philly --policy $policy --out $OUT/$policy"
  hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$OUT/$policy.json" "$cmd" >/dev/null
  python3 - "$OUT/$policy.json" "$policy" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"sim_run_{sys.argv[2].replace('-', '_')}_s median={r['median']:.3f} mean={r['mean']:.3f} "
      f"min={r['min']:.3f} max={r['max']:.3f} runs={len(r['times'])}")
PY
  /usr/bin/time -o "$OUT/rss" -f "sim_run_${policy//-/_}_max_rss_kb=%M" $cmd >/dev/null
  cat "$OUT/rss"
done
EVENTS=$(sed -n 's/.*"events": *\([0-9]*\).*/\1/p' "$OUT/strict-fifo/summary.json")
echo "sim_run_events=$EVENTS"
