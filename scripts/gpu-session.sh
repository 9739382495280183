#!/usr/bin/env bash
# One call on a lent CUDA machine (no network there): install the wheels carried in .whl/ (packages
# the machine's image lacks, e.g. diffusers), run the GPU tests and `make bench`'s CUDA
# configuration, and leave the logs and bench.json under $OUT.  Prepare the wheels here first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers importlib_metadata
# Extra bench settings go in BENCH_ARGS, e.g. BENCH_ARGS="gpu_levers=false" or "region_weight=0.5" (the
# region-aware objective's memory); fine-tuning keys on top of sd15.yaml as "gpu_args=[compute.micro_batch=16]".  AUTOTUNE=1: inductor's max-autotune (TORCHINDUCTOR_MAX_AUTOTUNE=1,
# its GEMM and kernel autotuning, no CUDA graphs) for every compile; the records' notes say so.
set -uo pipefail
OUT=${OUT:-reports/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if [ "${AUTOTUNE:-0}" = 1 ]; then export TORCHINDUCTOR_MAX_AUTOTUNE=1; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers, peft, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu ${TESTS:-tests/test_gpu.py tests/test_reward.py} 2>&1 | tee "$OUT/gpu-tests.log" | tail -n 30 || rc=1
fi
# BENCH_TIMEOUT: seconds before the bench is stopped; it writes bench.json after each result.
timeout "${BENCH_TIMEOUT:-540}" python3 -m pipelines.bench output_dir="$OUT/bench" shapes=false ${BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/bench.log" | grep -v "it/s\]" | tail -n 40 || rc=1
cat "$OUT/bench/bench.md" 2>/dev/null
exit $rc
