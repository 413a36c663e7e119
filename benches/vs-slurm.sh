#!/usr/bin/env bash
# Runs the Slurm 22.05 peer benchmark (benches/peers/slurm/slurm_bench.sh: 4 nodes x 8 fake
# GPUs, 2,000 one-GPU jobs) and qm_e2e (3 replicas, 4 agents x 8 fake GPUs, 2,000 `true` jobs)
# one after the other on this machine, so that both end-to-end rates come from the same run, and
# prints their ratio.
# Needs: apt-get install slurm-wlm munge
# Usage: benches/vs-slurm.sh   (from the repository root; JOBS=2000 by default)
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
JOBS=${JOBS:-2000}
cargo build --release -p qm-cli -p qm-benches --bin qm --bin qm_e2e
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# slurm"
SLURM=$(NJOBS=$JOBS NODES=4 GPUS=8 HOLD=1 bash benches/peers/slurm/slurm_bench.sh | grep -E '^slurm_')
echo "$SLURM"
echo "# qm"
QM=$(target/release/qm_e2e --agents 4 --gpus 8 --jobs "$JOBS" --idle-s 1 | grep -E '^qm_e2e_')
echo "$QM"
SLURM_RATE=$(echo "$SLURM" | grep -o 'slurm_jobs_completed_per_s=[0-9.]*' | cut -d= -f2)
QM_RATE=$(echo "$QM" | grep -o 'qm_e2e_jobs_per_s=[0-9.]*' | cut -d= -f2)
python3 -c "print(f'qm_vs_slurm_end_to_end={float($QM_RATE) / float($SLURM_RATE):.1f}x')"
