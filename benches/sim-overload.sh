#!/usr/bin/env bash
# Times `qm sim run` on overloaded clusters, where the queue stays long: the shipped synthetic
# workload (examples/synthetic.toml, seed 1) scaled up, the table of docs/benchmarks.md
# ("Simulating an overloaded cluster"). Each row: hyperfine's median over repeated runs, GNU
# time's maximum resident memory of one run, and the run's average wait (how long the queue is).
# The 100,000-job row on 250x8 takes minutes: it runs only with LONG=1.
# Needs: apt-get install hyperfine time
# Usage: [LONG=1] benches/sim-overload.sh [qm binary] [runs]   (from the repository root)
set -euo pipefail
DEFAULT_RUNS=3
# shellcheck source=benches/qm-binary.sh
source "$(dirname "$0")/qm-binary.sh"
workload() { # jobs per_hour -> a synthetic spec
  sed -e "s/^jobs = .*/jobs = $1/" -e "s/per_hour = [0-9.]*/per_hour = $2/" examples/synthetic.toml >"$OUT/w-$1-$2.toml"
  echo "$OUT/w-$1-$2.toml"
}
row() { # name cluster spec policy runs
  local cmd="$QM sim run --cluster $2 --trace $3 --format synthetic --policy $4 --out $OUT/$1"
  hyperfine --style basic --warmup 0 --runs "$5" --export-json "$OUT/$1.json" "$cmd" >/dev/null
  /usr/bin/time -o "$OUT/rss" -f "%M" $cmd >/dev/null
  python3 - "$OUT/$1.json" "$1" "$(cat "$OUT/rss")" "$OUT/$1/summary.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
s = json.load(open(sys.argv[4]))
print(f"{sys.argv[2]} median={r['median']:.3f}s min={r['min']:.3f}s max={r['max']:.3f}s runs={len(r['times'])} "
      f"max_rss={int(sys.argv[3]) // 1024}MiB avg_wait={s['avg_wait_s'] / 3600:.1f}h cycles={s['cycles']}")
PY
}
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs)"
W20K=$(workload 20000 300.0)
W100K=$(workload 100000 1500.0)
row jobs100k_1000x8_default 1000x8 "$W100K" default "$RUNS"
for policy in default las backfill strict-fifo; do
  row "jobs20k_50x8_${policy//-/_}" 50x8 "$W20K" "$policy" "$RUNS"
done
if [ "${LONG:-0}" = 1 ]; then
  row jobs100k_250x8_default 250x8 "$W100K" default 1
fi
