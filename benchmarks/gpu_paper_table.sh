#!/usr/bin/env bash
# Table 3 (benchmarks/paper_table.py) on a lent GPU machine: the given models trained side by side,
# one process each, every one stopping (and validating) at the last epoch that fits its time
# limit, so that the rows come back inside one device call. The machine has PyTorch but neither RecBole nor
# internet access: carry the wheels that benchmarks/gpu_env.sh lists, and the data set.
#
#   bash benchmarks/gpu_paper_table.sh DATA_PATH TIME_LIMIT_S MODEL... [-- --key=value ...]
#
# DATA_PATH holds <dataset>/<dataset>.inter; TIME_LIMIT_S is per model, from its start (dataset
# build included; its test evaluation comes after). Anything after "--" goes to paper_table.py
# (RecBole overrides such as --epochs=42 or --tadn_backend=torch). Environment: WHEELS (wheel
# folder, default wheels), OUT (default benchmarks/out/gpu), DATASET (default ml-1m), STATE_DIR
# (checkpoints of unfinished models, default /tmp/paper_table_state).
# Outputs in $OUT: paper_table_<dataset>.csv/.md/.png and paper_table_<dataset>_<model>.log.
# The rows record concurrent_jobs: times measured side by side on one GPU are not speed figures
# (benchmarks/speed.py is); their metrics follow the protocol like any other row.

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/out/gpu}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh "${WHEELS:-wheels}" || exit 3
if [ $# -lt 3 ]; then
    echo "usage: $0 DATA_PATH TIME_LIMIT_S MODEL... [-- --key=value ...]" >&2
    exit 2
fi
data_path=$1
time_limit=$2
shift 2
models=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    models+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
"$PYTHON" benchmarks/paper_table.py --dataset "${DATASET:-ml-1m}" --data_path "$data_path" \
    --models "${models[@]}" --jobs "${#models[@]}" --time_limit_s "$time_limit" \
    --out "$OUT" --state_dir "${STATE_DIR:-/tmp/paper_table_state}" "$@"
