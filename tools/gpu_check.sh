#!/usr/bin/env bash
# The one script that exercises every CUDA path on a lent GPU machine (see BENCHMARKS.md, "GPU").
#
# The device has torch but no onnxruntime-gpu, no serving stack and no registry. Carry them first, one call each
# (back to back: the machine stays warm ~30 s and /tmp survives between calls):
#   here:      bash ../shared/tools/ort-gpu-parts.sh .ortgpu && bash tools/gpu_wheels.sh .gpuwheels
#              (both folders are in .git/info/exclude)
#   device:    mkdir -p /tmp/ortparts && cp .ortgpu/pN/* /tmp/ortparts/      carry: [".ortgpu/pN"]  (N = 1..4)
#   device:    pip install -q --no-index --no-deps --target /tmp/site .gpuwheels/*.whl   carry: [".gpuwheels"]
#   device:    GPU_DATA=<dir with FashionMNIST/raw> bash tools/gpu_check.sh
#              (the data: ../shared/data is carried with the working tree when shared/ is; else set GPU_DATA)
# Every step runs even if an earlier one failed; each prints its exit status, and a summary ends the run.
# Servers' output goes to files under $OUT, which come back with the run.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
if [ ! -d /tmp/site/onnxruntime ] && ls /tmp/ortparts/ort.tar.xz.* >/dev/null 2>&1; then
  cat /tmp/ortparts/ort.tar.xz.* | xz -d | tar -x -C /tmp/site
fi
export PYTHONUNBUFFERED=1 VGGEXPORT_OFFLINE=1 PYTHONPATH="/tmp/site:$PWD"
DATA=${GPU_DATA:-../shared/data}
ART=/tmp/gpu-artifacts
MODEL="$ART/vgg11_bn"
summary=()
step() {
  local title=$1; shift
  echo; echo "=== $title ($(date +%T))"
  "$@"; local rc=$?
  echo "--- rc $rc: $title"
  summary+=("rc $rc  $title")
}

step "gpu and libraries" bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader &&
  python3 -c "import torch, onnxruntime as ort; print(\"torch\", torch.__version__, \"onnxruntime\", ort.__version__, ort.get_available_providers())"'

# Training: the CUDA defaults (224x224, full width, bf16), then the fast recipe's speed run (>= 0.950 in <= 60 s).
step "train: CUDA defaults, 1 epoch" python3 -m vggexport train --data-dir "$DATA" --epochs 1 --artifacts "$ART"
step "train: --recipe fast (speed run: >= 0.950 in <= 60 s)" /usr/bin/time -v python3 -m vggexport train \
  --data-dir "$DATA" --recipe fast --device cuda --artifacts /tmp/gpu-fast
step "train: fast recipe, --erase 0.5 (a lever)" python3 -m vggexport train --data-dir "$DATA" --recipe fast \
  --device cuda --erase 0.5 --artifacts /tmp/gpu-fast-erase
step "train: fp16 with GradScaler, 30 steps" python3 -m vggexport train --data-dir "$DATA" \
  --precision fp16 --max-steps 30 --eval-samples 2000 --artifacts /tmp/gpu-fp16
step "train: --deterministic on CUDA" python3 -m vggexport train --data-dir "$DATA" --recipe fast --device cuda \
  --deterministic --precision fp32 --epochs 1 --max-steps 100 --artifacts /tmp/gpu-det
step "train: the seed's configuration (224, width 1, batch 16) fits" python3 -m vggexport train --device cuda \
  --image-size 224 --width 1.0 --batch-size 16 --max-steps 50 --eval-samples 2000 --data-dir "$DATA" \
  --artifacts /tmp/gpu-seed

# Every export of the CUDA model: TorchScript, .pt2, ONNX fp32 + uint8 preprocessing, fp16 and int8 variants.
step "export (all artifacts)" python3 -m vggexport export --artifacts "$ART" --with-preprocessing \
  --precision fp32 --precision fp16 --precision int8 --data-dir "$DATA"

# verify on CUDA, all 10,000 test images, TF32 off: the tolerances measured here go into BENCHMARKS.md.
step "verify: every artifact on CUDA runtimes, all 10,000 test images" python3 -m vggexport verify \
  --artifacts "$ART" --data-dir "$DATA" --device cuda --runtimes torchscript-cuda --runtimes torch-export-cuda \
  --runtimes onnxruntime-cuda --report "$OUT/parity-cuda.json"
step "verify: every artifact on CPU runtimes, 1,000 test images" python3 -m vggexport verify \
  --artifacts "$ART" --data-dir "$DATA" --samples 1000 --runtimes torchscript --runtimes torch-export \
  --runtimes onnxruntime-cpu --report "$OUT/parity-cpu.json"

step "gpu tests" python3 -m pytest -q -m gpu -p no:cacheprovider tests

# The server on ORT's CUDA provider: start, request, drain; its whole output is kept.
step "serve on CUDA (verified model)" bash -c "
  python3 -m vggexport serve --artifacts '$ART' --provider cuda --port 8000 --grpc-port 8001 \
    > '$OUT/serve-cuda.log' 2>&1 & pid=\$!
  for i in \$(seq 1 120); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; sleep 0.5; done
  curl -s localhost:8000/v2/models/vgg11_bn; echo
  python3 -c 'import numpy as np, tritonclient.http as h; c = h.InferenceServerClient(\"localhost:8000\"); x = h.InferInput(\"input\", [4, 1, 224, 224], \"FP32\"); x.set_data_from_numpy(np.zeros((4, 1, 224, 224), np.float32)); print(c.infer(\"vgg11_bn\", [x]).as_numpy(\"logits\").shape)'
  rc=\$?; kill -TERM \$pid; wait \$pid; exit \$rc"
step "bench_serve on CUDA (224x224 full width)" python3 tools/bench_serve.py --model "$MODEL/model.onnx" \
  --provider cuda --seconds 5 --clients 1 64 --logs "$OUT/serve-logs" --ready-timeout 180
step "bench_infer: ORT CUDA fp16 vs fp32 vs int8, 224x224" python3 tools/bench_infer.py \
  --checkpoint "$MODEL/best.pt" --variants --provider cuda --seconds 1 --rounds 3
step "bench_infer: every runtime" python3 tools/bench_infer.py --checkpoint "$MODEL/best.pt" --seconds 1
step "bench_train on CUDA" python3 tools/bench_train.py --data-dir "$DATA" --device cuda --steps 30 --recipe fast

cp "$MODEL"/*.json "$MODEL"/metrics.jsonl "$OUT/" 2>/dev/null
cp /tmp/gpu-fast/vgg11_bn/metrics.jsonl "$OUT/metrics-fast.jsonl" 2>/dev/null
echo; echo "=== summary"; printf '%s\n' "${summary[@]}"
