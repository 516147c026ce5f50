#!/usr/bin/env bash
# Packs onnxruntime-gpu (for Python 3.12, the lent GPU machine's Python) into parts of at most PART_MIB MiB, so
# that each travels in one device call (a call carries at most 64 MiB, the checkout included).
#   bash tools/ort_gpu_parts.sh [DIR] [VERSION] [PART_MIB]
#   (DIR default .ortgpu, git-ignored; VERSION default 1.31.1; PART_MIB default 56, tools/gpu/layout.py's)
# tools/gpu_check.sh --build calls it with the version pip resolved, and plans one call per part
# (`bash tools/gpu_check.sh --plan` prints them); on the machine `--install` unpacks them into a --target folder.
set -euo pipefail
dir=${1:-.ortgpu}; version=${2:-1.31.1}; part_mib=${3:-56}
mkdir -p "$dir"; work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$work" "onnxruntime-gpu==$version"
(cd "$work" && python3 -m zipfile -e onnxruntime_gpu-*.whl site >/dev/null)
rm -rf "$work"/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so   # needs TensorRT, which the device lacks
echo "compressing (a few minutes on 2 cores)..."
tar -C "$work/site" -cf - . | xz -T0 -6 > "$work/ort.tar.xz"
rm -rf "$dir"/p*; (cd "$work" && split -b "${part_mib}M" -d ort.tar.xz ort.tar.xz.)
i=0; for f in "$work"/ort.tar.xz.*; do i=$((i + 1)); mkdir -p "$dir/p$i"; mv "$f" "$dir/p$i/"; done
du -sh "$dir"/p*
echo "$i parts in $dir; carry them one call each as described at the top of this script."
