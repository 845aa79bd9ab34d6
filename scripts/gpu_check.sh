#!/usr/bin/env bash
# Everything that needs a GPU, in one script (a lent GPU machine runs one command per call):
# build the extension with the CUDA kernels, run the GPU tests, run `videoconv check` on the
# GPU, and run the GPU benchmarks. Results go to $OUT (the device tool's folder) if set, else to
# benchmarks/results/; commit what it writes there.
#
#   bash scripts/gpu_check.sh            # on a machine with a CUDA GPU and a CUDA torch
#
# The CUTLASS headers come from the nvidia-cutlass wheel; on a machine that cannot download,
# put the wheel in wheels/ first (`pip download --no-deps nvidia-cutlass -d wheels`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
status=0
step() { echo; echo "=== $* ==="; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" || exit 1

step "build (CUDA kernels, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0})"
if ls wheels/nvidia_cutlass-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps wheels/nvidia_cutlass-*.whl
fi
start=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps -e . > "$RESULTS/gpu_build.log" 2>&1 \
  || { tail -40 "$RESULTS/gpu_build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
$PY -m videoconv info | tee "$RESULTS/gpu_info.txt"

step "GPU tests (cuda mark)"
VIDEOCONV_REQUIRE_EXTENSION=1 $PY -m pytest -q -m cuda tests -p no:cacheprovider \
  > "$RESULTS/gpu_tests.txt" 2>&1 || status=1
tail -15 "$RESULTS/gpu_tests.txt"

step "videoconv check (every backend on the GPU vs float64)"
$PY -m videoconv check > "$RESULTS/gpu_check.txt" 2>&1 || status=1
cat "$RESULTS/gpu_check.txt" | head -40

step "benchmarks: per layer, each GPU backend forced in turn"
for backend in triton cuda; do
  VIDEOCONV_BACKEND=$backend $PY -m videoconv bench --layers default --dtype bfloat16 --batch 8 \
    --providers eager,conv-only,videoconv --json "$RESULTS/layers_cuda_$backend.json" \
    --markdown "$RESULTS/layers_cuda_$backend.md" > "$RESULTS/bench_layers_$backend.log" 2>&1 || status=1
  tail -12 "$RESULTS/layers_cuda_$backend.md" 2>/dev/null
done

step "benchmarks: whole models (automatic backend)"
$PY -m videoconv bench --models r2plus1d_18,r3d_18,x3d_m --dtype bfloat16 --batch 8 \
  --providers eager,videoconv,compile --json "$RESULTS/providers_cuda.json" \
  --markdown "$RESULTS/providers_cuda.md" > "$RESULTS/bench_models.log" 2>&1 || status=1
grep "|" "$RESULTS/providers_cuda.md" | tail -12

echo; echo "gpu_check.sh finished with status $status; results in $RESULTS"
exit $status
