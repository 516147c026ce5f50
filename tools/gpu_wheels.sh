#!/usr/bin/env bash
# Packs the Python packages the lent GPU machine lacks (its image has torch, numpy, onnx, onnxscript,
# grpcio, pillow, click, rich, prometheus-client, httpx, aiohttp, uvloop, ...) as wheels for its Python 3.12:
# the serving stack, tritonclient and the fp16 converter. One device call carries them (well under 64 MiB):
#   here:    bash tools/gpu_wheels.sh .gpuwheels            (.gpuwheels is in .git/info/exclude)
#   device:  command: pip install -q --no-index --no-deps --target /tmp/site .gpuwheels/*.whl   carry: [".gpuwheels"]
# tools/gpu_check.sh then finds them on PYTHONPATH=/tmp/site, beside onnxruntime-gpu.
set -euo pipefail
dir=${1:-.gpuwheels}
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$dir" fastapi starlette pydantic pydantic-core annotated-types typing-inspection anyio sniffio \
  uvicorn python-multipart tritonclient python-rapidjson geventhttpclient gevent greenlet zope.event \
  zope.interface onnxconverter-common
du -sh "$dir"; ls "$dir"
