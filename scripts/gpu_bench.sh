#!/usr/bin/env bash
# scripts/gpu_bench.sh  (after scripts/gpu_bundle.sh has filled .wheels/ where a registry is reachable)
# Both benchmarks on a GPU box with PyTorch, torchvision and transformers but no package registry:
#   1. installs hydra-core, omegaconf and antlr4 from .wheels/ (pip --no-index) unless they import already;
#   2. python -m harness.throughput (embedded suite at batch 1/4/8/16 in fp16, 7B prefill at batch 1 vs 4);
#   3. python -m harness.bench at the middle budget (128) on the LLaVA-1.5-7B architecture (fp16).
# CUDA events time both. Results and logs go to docs/bench/gpu/ ($OUT/ when set).
# GPU_BENCH_SMOKE=1: tiny models and sizes, to check the script on any machine (a CPU included).
# Env: PYTHON (default python), WHEELS (default .wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEELS=${WHEELS:-.wheels}
DEST=${OUT:-docs/bench/gpu}
SMOKE=${GPU_BENCH_SMOKE:-0}

"$PYTHON" - <<'PY' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "PIL", "numpy", "yaml", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_bench.sh: {missing} not importable with {sys.executable} (the box's PyTorch stack is assumed)")
PY
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_bench.sh: hydra-core is not installed and $WHEELS/ holds no wheels: run scripts/gpu_bundle.sh" \
             "where a package registry is reachable, and bring $WHEELS/ with the repository" >&2
        exit 2
    fi
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" \
        hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 || exit 2
fi
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$CUDA" != 1 ] && [ "$SMOKE" != 1 ]; then
    echo "gpu_bench.sh: no CUDA device (GPU_BENCH_SMOKE=1 checks the script on a CPU at tiny sizes)" >&2
    exit 2
fi

mkdir -p "$DEST"
{
    date -u
    "$PYTHON" -c "import platform, torch, transformers; print(platform.platform(), 'python', platform.python_version(),
'torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    git rev-parse HEAD 2>/dev/null
} > "$DEST/env.txt" 2>&1

if [ "$SMOKE" = 1 ]; then
    THROUGHPUT=(--quick)
    BENCH=(--quick "budgets=[128]")
else
    THROUGHPUT=(suite.model.load.dtype=float16 suite.samples_per_task=48 reps=3 prefill.reps=5 prefill.warmup=2)
    BENCH=("budgets=[128]" reps=5 warmup=2)
fi
status=0
"$PYTHON" -m harness.throughput "${THROUGHPUT[@]}" "out=$DEST" 2>&1 | tee "$DEST/throughput.log"
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "harness.throughput exited $rc (see $DEST/throughput.log)" >&2; status=$rc; }
"$PYTHON" -m harness.bench "${BENCH[@]}" "out=$DEST" 2>&1 | tee "$DEST/bench.log"
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "harness.bench exited $rc (see $DEST/bench.log)" >&2; status=$rc; }
ls -l "$DEST"
exit $status
