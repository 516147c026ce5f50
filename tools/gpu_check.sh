#!/usr/bin/env bash
# Exercises every CUDA path on a lent GPU machine (see BENCHMARKS.md, "GPU").
# Expects onnxruntime-gpu unpacked in /tmp/site and Fashion-MNIST under $GPU_DATA.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 VGGEXPORT_OFFLINE=1 PYTHONPATH="/tmp/site:$PWD"
DATA=${GPU_DATA:-/tmp/gpudata}
ART=/tmp/gpu-artifacts
step() { echo; echo "=== $* ($(date +%T))"; }
step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'onnxruntime', ort.__version__, ort.get_available_providers())"
step "train on CUDA (defaults: 224x224, width 1.0, bf16), 1 epoch, real Fashion-MNIST"
python3 -m vggexport train --data-dir "$DATA" --epochs 1 --artifacts "$ART"
step export
python3 -m vggexport export --artifacts "$ART" --with-preprocessing
step "verify: CUDA runtimes on all 10,000 test images"
python3 -m vggexport verify --artifacts "$ART" --data-dir "$DATA" --device cuda --runtimes torchscript-cuda --runtimes onnxruntime-cuda --report "$ART/vgg11_bn/parity-cuda.json"
step "verify: CPU runtimes on 1,000 test images"
python3 -m vggexport verify --artifacts "$ART" --data-dir "$DATA" --samples 1000 --runtimes torchscript --runtimes onnxruntime-cpu
step "gpu tests"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_export.py tests/test_runners.py
step "bench_train on cuda"
python3 tools/bench_train.py --data-dir "$DATA" --device cuda --steps 30
if [ -z "${SKIP_INFER:-}" ]; then
  step "bench_infer on the trained 224x224 model"
  python3 tools/bench_infer.py --checkpoint "$ART/vgg11_bn/best.pt" --seconds 1
fi
mkdir -p "${OUT:-/tmp/out}" && cp "$ART"/vgg11_bn/*.json "$ART"/vgg11_bn/metrics.jsonl "${OUT:-/tmp/out}/" 2>/dev/null
step done
