# Sourced by the simulator's timing scripts: goes to the repository root, takes the qm binary
# from $1 (built first when it is the default, target/release/qm) and the run count from $2
# (default $DEFAULT_RUNS), and makes a scratch folder $OUT, removed on exit.
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"
QM=${1:-target/release/qm}
RUNS=${2:-$DEFAULT_RUNS}
if [ "$QM" = target/release/qm ]; then
  cargo build --release -p qm-cli --bin qm
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
