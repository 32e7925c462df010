#!/usr/bin/env bash
# One-shot GPU check for issue 11 (FlashSASRec and the speed benchmark) on a lent CUDA machine
# that has PyTorch but neither RecBole nor internet access. At most 7.5 minutes (about 6 when
# nothing hangs): every stage has its own time limit, and results land in $OUT as they come.
#
# Prepare on a machine with pip and internet: the wheels that benchmarks/gpu_env.sh lists
# (RecBole 1.2.1 is pure Python; the GPU image already has numpy, scipy, pandas, scikit-learn,
# tensorboard, psutil, pyyaml, colorama, tqdm and matplotlib).
#
# Run (device tool):  command "bash benchmarks/gpu_check.sh", carry ["wheels"], timeout_s 480.
# Outputs in $OUT: gpu_check.log, speed_cuda.csv/.md/.png and two profiler tables.
#
# Arguments (optional): extra options for benchmarks/speed.py, e.g. --models HyenaRec FlashSASRec

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/out/gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PYTHON=${PYTHON:-python3}
stage() { echo; echo "=== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import sys, torch, numpy; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| cuda', torch.version.cuda, '| numpy', numpy.__version__,
'| gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"

stage "install RecBole from the carried wheels (no index, no dependency resolution)"
source benchmarks/gpu_env.sh "${WHEELS:-wheels}" || exit 3

stage "GPU tests (tests whose name says cuda or gpu; the rest need no GPU)"
timeout 60 "$PYTHON" -m pytest -q -rs -k "cuda or gpu" tests
case $? in
    0) echo "GPU tests: pytest exit 0 (skipped ones, in the summary above, did not run)" ;;
    5) echo "GPU tests: none collected" ;;
    124) echo "GPU tests: TIMED OUT after 60 s" ;;
    *) echo "GPU tests: FAILED" ;;
esac

stage "speed benchmark on cuda (bf16 first: the issue's GPU targets are in bf16)"
# Budget: each run gets at most 60 s; the grid stops starting runs after 270 s and reports the
# rest as skipped rows. The outer timeout is a last resort; the CSV is written after every run.
timeout 320 "$PYTHON" benchmarks/speed.py --device cuda \
    --models HyenaRec FlashSASRec SASRec GRU4Rec --lengths 1000 4000 8000 16000 \
    --dtypes bf16 fp32 --warmup 2 --repeats 5 --timeout 60 --budget 270 \
    --profile HyenaRec:4000:bf16 FlashSASRec:4000:bf16 \
    --out "$OUT" --tag cuda --note "gpu_check.sh on a lent GPU machine" "$@"
status=$?
if [ $status -ne 0 ] && [ -f "$OUT/speed_cuda.csv" ]; then
    echo "benchmark stopped early (exit $status): tables from the rows written so far"
    timeout 40 "$PYTHON" benchmarks/speed.py --report-only --device cuda --out "$OUT" --tag cuda
fi

stage "done"
ls -l "$OUT"
