#!/usr/bin/env bash
# scripts/gpu_bundle.sh [DIR]  (default DIR: .wheels, git-ignored; about 0.4 MB)
# Run where a package registry is reachable: writes the few pure-Python wheels that scripts/gpu_bench.sh
# installs offline on a GPU box that has PyTorch and transformers but no registry. harness.throughput and
# harness.bench need only these on top of torch, torchvision (Pillow) and transformers (numpy, PyYAML, tqdm);
# antlr4-python3-runtime 4.9.3 exists only as a source archive, so pip builds its wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.wheels}
PYTHON=${PYTHON:-python}
mkdir -p "$DIR"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" \
    hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
ls -l "$DIR"
du -sh "$DIR"
