#!/usr/bin/env bash
# One-shot GPU check for issue 11 (FlashSASRec and the speed benchmark) on a lent CUDA machine
# that has PyTorch but neither RecBole nor internet access. At most 7.5 minutes (about 6 when
# nothing hangs): every stage has its own time limit, and results land in $OUT as they come.
#
# Prepare on a machine with pip and internet, in the repository root (RecBole 1.2.1 is pure
# Python; the GPU image already has numpy, scipy, pandas, scikit-learn, tensorboard, psutil,
# pyyaml, colorama, tqdm and matplotlib, so only these three are missing there):
#
#   echo /wheels/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d wheels \
#       recbole==1.2.1 colorlog==4.7.2 texttable==1.7.0
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
# Into a private folder, not the image's site-packages: --no-deps keeps pip from touching the
# image's numpy/torch. The plugin itself is imported from this checkout (PYTHONPATH), because
# `pip install -e .` refuses the image's Python 3.12 (pyproject says <3.12, for ray).
SITE=/tmp/recbole_site
if ls wheels/*.whl >/dev/null 2>&1; then
    timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" wheels/*.whl || echo "pip install from wheels/ FAILED"
else
    echo "no wheels/ folder was carried: RecBole can only come from the image"
fi
# RecBole 1.2.1's Config sets np.float = np.float_ (and np.complex_, np.unicode_), names that
# NumPy 2 removed; the image has NumPy 2, so give them back at interpreter start-up.
SHIM=/tmp/numpy1_aliases
mkdir -p "$SHIM"
cat > "$SHIM/sitecustomize.py" <<'EOF'
import importlib.machinery
import importlib.util
import os
import sys

import numpy

for _old, _new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
    if _old not in numpy.__dict__:
        setattr(numpy, _old, getattr(numpy, _new))

# This file shadows the image's own sitecustomize, if it has one: run that one too.
_here = os.path.dirname(os.path.abspath(__file__))
_paths = [path for path in sys.path if os.path.abspath(path or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _paths)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
EOF
export PYTHONPATH="$PWD:$SITE:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ! "$PYTHON" -c "
import recbole, recbole_hyena.model
from recbole_hyena.config import Config
Config(model='FlashSASRec', dataset='ml-100k', config_dict={'use_gpu': True})
print('recbole', recbole.__version__, 'and the plugin import; a Config builds')"; then
    echo "FAILED: RecBole or the plugin does not import (see the error above). Carry the wheels"
    echo "listed at the top of this script (and any module named in the error), then rerun."
    exit 3
fi

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
