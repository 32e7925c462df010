# Sourced by the GPU scripts (gpu_check.sh, gpu_paper_table.sh) on a lent CUDA machine that has
# PyTorch but neither RecBole nor internet access:  source benchmarks/gpu_env.sh [WHEEL_FOLDER]
#
# Installs the carried wheels (default folder: wheels/) into a private folder, gives NumPy 2 back
# the aliases RecBole 1.2.1 needs, puts this checkout on PYTHONPATH, and checks that RecBole and
# the plugin import. Returns 3 when they do not. Prepare the wheels where pip has an index:
#
#   echo /wheels/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d wheels \
#       recbole==1.2.1 colorlog==4.7.2 texttable==1.7.0 thop==0.1.1.post2209072238 \
#       [fla-core==0.5.2 for HyTRec's kernels]  (thop: RecBole's get_flops, used by a GPU test)

PYTHON=${PYTHON:-python3}
_wheels=${1:-wheels}
if [ -n "${RECBOLE_GPU_ENV_READY:-}" ]; then  # sourced already in this shell or a parent
    return 0 2>/dev/null || exit 0
fi
# Into a private folder, not the image's site-packages: --no-deps keeps pip from touching the
# image's numpy/torch. The plugin itself is imported from this checkout (PYTHONPATH), because
# `pip install -e .` refuses the image's Python 3.12 (pyproject says <3.12, for ray).
SITE=/tmp/recbole_site
if ls "$_wheels"/*.whl >/dev/null 2>&1; then
    timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$_wheels"/*.whl || echo "pip install from $_wheels/ FAILED"
else
    echo "no $_wheels/ folder was carried: RecBole can only come from the image"
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
    echo "listed at the top of benchmarks/gpu_env.sh (and any module named in the error)."
    return 3 2>/dev/null || exit 3
fi
export RECBOLE_GPU_ENV_READY=1
