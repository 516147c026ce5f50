#!/usr/bin/env bash
# The GPU run: every CUDA path of vggexport on a lent GPU machine (see BENCHMARKS.md, "GPU"), rehearsed on the CPU.
#
# Here, first:   bash tools/gpu_check.sh --rehearse     (exit 0 before any device minute is spent)
#                bash tools/gpu_check.sh --build        (.ortgpu, .gpuwheels, .gpudata: git-ignored)
#                bash tools/gpu_check.sh --plan         (the calls below, with their measured sizes)
# Then on the device, back to back (the machine stays warm ~30 s between calls; its /tmp survives them):
#   call 1..3:   command: bash tools/gpu_check.sh --stash 1 (2, 3)       carry: [".ortgpu/p1"] (p2, p3)
#   call 4:      command: bash tools/gpu_check.sh --stash 4              carry: [".gpudata", ".ortgpu/p4"]
#   call 5:      command: bash tools/gpu_check.sh --call 5  timeout_s: 600   carry: [".gpuwheels"]
#   (--plan prints the exact grouping and sizes: each call carries at most 60 MiB, the checkout included;
#   a --stash that finds an earlier call's files gone says the machine was replaced: start again)
# Afterwards:    bash tools/gpu_check.sh --clean        (removes the data copy)
# The run tees one log, a summary and results.tar.gz into $OUT; every step has a limit, so the summary prints.
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
