#!/usr/bin/env bash
# The GPU checks of the WGSL backend on a real GPU (prepared for the lent NVIDIA H200 machine):
# matmul GFLOP/s at 4096 as a share of the FP32 peak, and end-to-end latency of the largest
# corpus model, interpreted and specialised. Prints everything as it goes; needs cargo on the
# machine, or the prebuilt binaries under target/release (carry them).
#   GPU_PEAK_TFLOPS  FP32 peak of the GPU (default 67, the H200's)
set -uo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export GPU_PEAK_TFLOPS="${GPU_PEAK_TFLOPS:-67}"
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>&1 | head
echo "== matmul (4096, plus the default cases)"
GPU_MATMUL_CASES=square_4096,square_2048,ffn_128x768x3072 GPU_MATMUL_BUDGET_S=3 \
  cargo bench --locked --bench gpu_matmul 2>&1 | tail -30
echo "== end to end, largest corpus model"
model=$(ls -S models/*/*.onnx | head -1)
inputs="$(dirname "$model")/inputs.npz"
for extra in "" "--specialise"; do
  target/release/graft run "$model" --inputs "$inputs" --time 50 --no-cache $extra 2>&1 | head -3
done
