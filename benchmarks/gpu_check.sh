#!/usr/bin/env bash
# One-shot GPU check for issue 11 (FlashSASRec and the speed benchmark) on a lent CUDA machine
# that has PyTorch but neither RecBole nor internet access. At most 9 minutes (about 6 when
# nothing hangs): every stage has its own time limit, and results land in $OUT as they come.
#
# Prepare on a machine with pip and internet: the wheels that benchmarks/gpu_env.sh lists
# (RecBole 1.2.1 is pure Python; the GPU image already has numpy, scipy, pandas, scikit-learn,
# tensorboard, psutil, pyyaml, colorama, tqdm and matplotlib).
#
# Run (device tool):  command "bash benchmarks/gpu_check.sh", carry ["wheels"], timeout_s 560.
# Outputs in $OUT: gpu_check.log and speed_cuda.csv/.md/.png.

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

stage "GPU tests (tests whose name says cuda, gpu or fla; the rest need no GPU)"
timeout 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu or fla" tests
case $? in
    0) echo "GPU tests: pytest exit 0 (skipped ones, in the summary above, did not run)" ;;
    5) echo "GPU tests: none collected" ;;
    124) echo "GPU tests: TIMED OUT after 90 s" ;;
    *) echo "GPU tests: FAILED" ;;
esac

# The issue's GPU targets first (bf16, HyenaRec against FlashSASRec at every L), then
# checkpointing and HyTRec. Each run gets at most 60 s; a grid stops starting runs at its
# --budget and reports the rest as skipped rows; the CSV is written after every run.
speed() {
    timeout "$(($2 + 60))" "$PYTHON" benchmarks/speed.py --device cuda --dtypes bf16 --warmup 2 \
        --repeats 5 --timeout 60 --budget "$2" --out "$OUT" --tag cuda --append --models $1 "${@:3}"
}
stage "speed: HyenaRec and FlashSASRec, bf16"
speed "HyenaRec FlashSASRec" 150 --lengths 1000 4000 16000 --note "gpu_check.sh on a lent GPU machine"
speed "HyenaRec FlashSASRec" 90 --lengths 2000 8000
stage "speed: HyenaRec with checkpointing, HyTRec"
speed "HyenaRec[gradient_checkpointing=True]" 60 --lengths 4000 16000
speed HyTRec 60 --lengths 1000 4000

stage "done"
ls -l "$OUT"
