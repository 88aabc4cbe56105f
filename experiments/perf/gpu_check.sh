#!/usr/bin/env bash
# GPU acceptance run: the SAM2-Large and policy benchmarks (update, decode step) against
# transformers on the same card, four SAM2-Large diagnostics, the cuDNN correctness checks and
# the policy's decode step with scanned layers. Needs jax[cuda], flax, optax,
# transformers and torch. Writes to DIR (default ./gpu_check): steps.log (every step's output),
# each benchmark's JSON, and profiles.tgz with the traces + HLO of SAM2-Large and the policy's
# update and decode step (`tar xzf profiles.tgz; python -m experiments.perf.profile_summary
# --trace=profiles/sam2_large` gives the time per model op; needs xprof).
#
#   bash experiments/perf/gpu_check.sh [DIR [SECONDS]]
#
# Steps run most important first, each under its own time limit cut to what is left of the
# whole budget (SECONDS, default 540: one device call of at most 10 minutes, start included);
# a failed or skipped step does not stop the next. When the peer baseline script of the
# performance yardsticks sits at .bench/peer_hf_gpu.py (git-ignored), its policy-update and
# SAM2 parts run last, as the cross-check of the in-process transformers peers.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-gpu_check}"
deadline=$((SECONDS + ${2:-540}))
mkdir -p "$out"
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
pack_profiles() {  # every trace so far in one file (a device call returns few files, two folders deep)
  tar czf "$out/profiles.tgz" -C "$out" profiles 2>/dev/null
}
step() {  # step NAME SECONDS COMMAND...: output to NAME.log, appended to steps.log
  local name=$1 limit=$2 left=$((deadline - SECONDS)); shift 2
  ((limit > left)) && limit=$left
  if ((limit < 30)); then echo "== $name: skipped, ${left}s of the budget left" | tee -a "$out/steps.log"; return; fi
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0))s"; tail -n 6 "$out/$name.log"
  { echo "== $name: exit $rc after $((SECONDS - t0))s"; cat "$out/$name.log"; } >>"$out/steps.log"
  rm -f "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import jax, flax, transformers, torch; print(jax.__version__, flax.__version__, transformers.__version__, torch.__version__, jax.devices())"
# SAM2 runs frozen: every Hiera block a module of its own (--noscan_blocks), no loop and no
# per-block weight copies; the diagnostics below change one thing each against this step
step sam2_large 200 python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 --dtype=bfloat16 \
  --noscan_blocks --peer=transformers --json_out="$out/sam2_large.json" --profile_dir="$out/profiles/sam2_large"
pack_profiles
# the correctness of what was just timed: cuDNN attention (plain and packed) against XLA, and the
# bf16 trunk's GELU epilogue
if python -c "import pytest" 2>/dev/null; then
  step cudnn_tests 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py
else
  step cudnn_tests 150 python -m tests.test_gpu
fi
# SAM2 diagnostics: the same work with runs of blocks scanned (what per-block modules save), with
# the short windows' attention left on XLA instead of packed for cuDNN (what packing saves), with
# Triton GEMMs off (cuBLAS, with its bias/GELU/residual epilogues, for every matmul) and with the
# exact trunk GELU (what the tanh form saves)
step sam2_large_scanned 100 python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 \
  --dtype=bfloat16 --scan_blocks --peer=none --predict_batch=false --json_out="$out/sam2_large_scanned.json"
step sam2_large_unpacked 100 python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 \
  --dtype=bfloat16 --noscan_blocks --attention_pack_tokens=0 --peer=none --predict_batch=false \
  --json_out="$out/sam2_large_unpacked.json"
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" step sam2_large_cublas 100 \
  python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 --dtype=bfloat16 --noscan_blocks \
  --peer=none --predict_batch=false --json_out="$out/sam2_large_cublas.json"
step sam2_large_exact_gelu 100 python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 \
  --dtype=bfloat16 --noscan_blocks --trunk_gelu=exact --peer=none --predict_batch=false \
  --json_out="$out/sam2_large_exact_gelu.json"
step qwen3b_train 150 python -m experiments.perf.benchmark_qwen --mode=train --preset=3b --dtype=bfloat16 --batch=1 \
  --seq=1228 --new_tokens=256 --image_px=840 --remat=none --warmup=1 --iters=3 --json_out="$out/qwen3b_train.json" \
  --profile_dir="$out/profiles/qwen3b_train"
pack_profiles
# the decode step in the decoding layout (one module and one KV-cache buffer per layer)
step qwen3b_decode 120 python -m experiments.perf.benchmark_qwen --mode=decode --preset=3b --dtype=bfloat16 --batch=128 \
  --seq=1228 --image_px=840 --noscan_layers --warmup=2 --iters=10 --json_out="$out/qwen3b_decode.json" \
  --profile_dir="$out/profiles/qwen3b_decode"
pack_profiles
if [[ -f .bench/peer_hf_gpu.py ]]; then
  OUT="$out" PHASE=train MB=1 REMAT=0 step peer_hf_gpu 150 python .bench/peer_hf_gpu.py
fi
# diagnostic: the same decode step with the layers scanned (what the per-layer layout saves)
step qwen3b_decode_scanned 90 python -m experiments.perf.benchmark_qwen --mode=decode --preset=3b --dtype=bfloat16 \
  --batch=128 --seq=1228 --image_px=840 --scan_layers --compare_hf=false --warmup=2 --iters=10 \
  --json_out="$out/qwen3b_decode_scanned.json"
rm -rf "$out/profiles"   # kept in profiles.tgz
echo "== done, $((deadline - SECONDS))s of the budget left"
