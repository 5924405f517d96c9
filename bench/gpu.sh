#!/usr/bin/env bash
# The prepared GPU check of issue 14, for a machine with one CUDA GPU and a CUDA build of torch
# in $PY: the side-by-side benchmark against the official GIFD code (needs its checkout in
# $OFFICIAL; skipped without one) and the throughput benchmark, both on CUDA, each under a
# timeout so the whole script ends within 5 minutes. Writes JSON (and the GPU's name) to $OUT.
#
#   OFFICIAL=/path/to/GIFD_Gradient_Inversion_Attack OUT=bench/results/gpu bash bench/gpu.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu}
OFFICIAL=${OFFICIAL:-.official}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || echo "no nvidia-smi" > "$OUT/gpu.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device: install a CUDA build')"
if [ -d "$OFFICIAL/inversefed" ]; then
  timeout 170 "$PY" bench/official.py --official "$OFFICIAL" --device cuda --restarts 1,4,8 --stages 0,last \
    --steps 10 --warmup 3 --repeats 2 --out "$OUT/official.json" || echo "official benchmark: exit $?" >&2
else
  echo "no official checkout in $OFFICIAL (set OFFICIAL=DIR): side-by-side benchmark skipped" >&2
fi
timeout 120 "$PY" bench/throughput.py --device cuda --victims convnet,resnet18 --sides 64 --restarts 4,8 \
  --no-halving --out "$OUT/throughput.json" || echo "throughput benchmark: exit $?" >&2
ls -l "$OUT"
