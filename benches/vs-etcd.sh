#!/usr/bin/env bash
# Runs the etcd 3.4 peer benchmark (benches/peers/etcd/etcd_bench.sh) and qm_load one after
# the other on this machine, so that both sets of figures come from the same run.
# Needs: apt-get install etcd-server etcd-client golang-go golang-etcd-server-dev
# Usage: benches/vs-etcd.sh [qm_load flags...]   (from the repository root)
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
cargo build --release -p qm-cli -p qm-benches --bin qm --bin qm_load
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# etcd"
bash benches/peers/etcd/etcd_bench.sh | grep -E '^etcd_'
echo "# qm"
target/release/qm_load --qm target/release/qm "$@"
