#!/usr/bin/env bash
# Checks qm's agent against a machine's real NVIDIA GPUs, and prints PASS or FAIL per check:
#   1. `qm agent probe --json` reports what `nvidia-smi` reports: count, UUIDs, memory, MIG mode;
#   2. a one-GPU job through `qm dev` (on the real GPUs) runs, and its CUDA_VISIBLE_DEVICES is
#      exactly one UUID, of a GPU that `nvidia-smi -L` lists (nvidia-smi itself lists every GPU);
#   3. the telemetry scan (`qm agent probe --repeat 200`: utilization, memory, power and
#      temperature of every GPU) takes at most 1 ms per device; the inventory scan is printed.
# It only reads the GPUs: it changes no setting (MIG included).
# Usage: scripts/device-check.sh [path to a release qm]   (default target/release/qm)
set -uo pipefail
QM=${1:-target/release/qm}
WORK=$(mktemp -d)
DEV_PID=
cleanup() { [ -n "$DEV_PID" ] && kill "$DEV_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
failed=0
check() { if [ "$2" = 0 ]; then echo "PASS $1"; else echo "FAIL $1: $3"; failed=1; fi; }

command -v nvidia-smi >/dev/null || { echo "FAIL setup: nvidia-smi not found"; exit 1; }
"$QM" version

# 1. The inventory against nvidia-smi.
"$QM" agent probe --json > "$WORK/probe.json"
nvidia-smi --query-gpu=uuid,memory.total,mig.mode.current --format=csv,noheader,nounits > "$WORK/smi.csv"
python3 - "$WORK/probe.json" "$WORK/smi.csv" > "$WORK/inventory.txt" 2>&1 <<'PY'
import json, sys
probe = json.load(open(sys.argv[1]))
smi = [l.split(", ") for l in open(sys.argv[2]).read().strip().splitlines()]
whole = [d for d in probe["devices"] if d["id"].startswith("GPU-")]
mig_on = [u for u, _, m in smi if m.strip() == "Enabled"]
problems = []
if len(whole) + len(mig_on) < len(smi) and not mig_on:
    problems.append(f"{len(whole)} GPUs probed, nvidia-smi lists {len(smi)}")
for uuid, mem, mig in smi:
    if mig.strip() == "Enabled":
        continue
    d = next((d for d in whole if d["id"] == uuid), None)
    if d is None:
        problems.append(f"{uuid} missing from the probe")
    elif abs(d["memory_mib"] - int(mem)) > 1:
        problems.append(f"{uuid}: memory {d['memory_mib']} MiB, nvidia-smi {mem} MiB")
for d in probe["devices"]:
    print(f"  {d['id']} {d['flavor']} {d['memory_mib']} MiB numa {d['numa_node']} {d['health']}")
print("problems: " + "; ".join(problems) if problems else "ok")
PY
cat "$WORK/inventory.txt"
tail -1 "$WORK/inventory.txt" | grep -q '^ok$'
check "inventory matches nvidia-smi (count, UUIDs, memory, MIG mode)" $? "$(tail -1 "$WORK/inventory.txt")"

# 2. A one-GPU job through qm dev on the real GPUs.
"$QM" dev --listen 127.0.0.1:0 > "$WORK/dev.out" 2> "$WORK/dev.err" &
DEV_PID=$!
for _ in $(seq 100); do grep -q 'Ctrl-C stops' "$WORK/dev.out" && break; sleep 0.1; done
# The banner's export line: QM_SERVER, QM_TLS_CA, QM_TEAM, QM_TOKEN_FILE.
eval "$(grep -o 'export QM_SERVER=.*' "$WORK/dev.out" | head -1)"
ID=$("$QM" submit --json --gpus 1 -- sh -c 'nvidia-smi -L; echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"' 2>"$WORK/submit.err" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_ids"][0])')
STATE=
for _ in $(seq 300); do
  STATE=$("$QM" job "$ID" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
  case "$STATE" in succeeded|failed|cancelled) break ;; esac
  sleep 0.1
done
"$QM" logs "$ID" > "$WORK/job.log" 2>&1
cat "$WORK/job.log"
VISIBLE=$(grep -o 'CUDA_VISIBLE_DEVICES=.*' "$WORK/job.log" | cut -d= -f2)
LISTED=$(grep -c '^GPU ' "$WORK/job.log")
[ "$STATE" = succeeded ] && [ "$LISTED" -ge 1 ] && [ -n "$VISIBLE" ] && [ "${VISIBLE#*,}" = "$VISIBLE" ] \
  && grep -q "UUID: $VISIBLE)" "$WORK/job.log"
check "a one-GPU job through qm dev gets exactly one real GPU" $? "state $STATE, $LISTED GPU(s) listed, CUDA_VISIBLE_DEVICES=$VISIBLE"

# 3. The telemetry scan.
"$QM" agent probe --json --repeat 200 > "$WORK/scan.json"
SCAN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["telemetry_us_per_device"])' "$WORK/scan.json")
INVENTORY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["scan_us_per_device"])' "$WORK/scan.json")
echo "  telemetry: $SCAN us per device; inventory scan (with health): $INVENTORY us per device"
python3 -c "import sys; sys.exit(0 if float('$SCAN') <= 1000 else 1)"
check "telemetry scan at most 1 ms per device" $? "$SCAN us"

exit $failed
