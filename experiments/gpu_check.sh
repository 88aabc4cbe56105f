#!/usr/bin/env bash
# GPU acceptance run: cuDNN correctness, then the SAM2-Large and policy benchmarks against
# transformers on the same card. Needs jax[cuda], flax, optax, transformers and torch; writes
# logs and JSON to DIR (default ./gpu_check). Each step has its own time limit and a failed
# step does not stop the next. Usage: bash experiments/gpu_check.sh [DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   exit $? ($name.log)"; tail -n 8 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import jax, flax, transformers, torch; print(jax.__version__, flax.__version__, transformers.__version__, torch.__version__, jax.devices())"
if python -c "import pytest" 2>/dev/null; then
  step cudnn_tests 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py
else
  step cudnn_tests 240 python -m tests.test_gpu
fi
step sam2_large 240 python -m experiments.benchmark_sam2 --preset=hiera_large --batch=16 --dtype=bfloat16 \
  --peer=transformers --out="$out/sam2_large.json"
step sam2_large_xla 180 python -m experiments.benchmark_sam2 --preset=hiera_large --batch=16 --dtype=bfloat16 \
  --attention_impl=xla --peer=none --out="$out/sam2_large_xla.json"
step qwen3b_train 300 python -m experiments.benchmark_qwen --mode=train --preset=3b --dtype=bfloat16 --batch=1 \
  --seq=1228 --new_tokens=256 --image_px=840 --remat=none --warmup=1 --iters=3
