"""Every CUDA path of vggexport on a lent GPU machine, and the same run rehearsed on the CPU.

    bash tools/gpu_check.sh --plan       the device calls (what each carries, its size) and the time, in seconds
    bash tools/gpu_check.sh --rehearse   build what travels, then run every call and step here, tiny, on the CPU
    bash tools/gpu_check.sh --build      build what travels (.ortgpu, .gpuwheels, .gpudata), for a GPU run
    bash tools/gpu_check.sh --call N     on the GPU machine: the last call of the plan (the others: --stash K)
    bash tools/gpu_check.sh --clean      remove the data copy (.gpudata) after a GPU run

The run writes one log, a summary and one archive of the small result files into $OUT (default
ROOT/gpu-out, ROOT being /tmp on the machine), and exits 0 only when every step passed in its limit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import build, layout, plan, preflight  # noqa: E402
from gpu.runner import LOG, SUMMARY, Run, pack_results  # noqa: E402


def step_env(root: Path, mode: str) -> dict[str, str]:
    """The carried packages shadow the machine's (PYTHONPATH), as on the GPU machine."""
    return {**os.environ, "PYTHONPATH": f"{root / 'site'}:{layout.ROOT}", "VGGEXPORT_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "GPU_CHECK_ROOT": str(root), "GPU_CHECK_MODE": mode}


def placeholders(root: Path, python: str, out: Path) -> dict[str, str]:
    work = root / "gpu-run"
    art = work / "artifacts"
    models = sorted(art.glob("*/model.onnx"))  # the folder is named by the trained model (vgg11_bn by default)
    folder = models[0].parent if models else art / "vgg11_bn"
    return {"py": python, "data": str(root / "carried" / layout.DATA), "art": str(art), "work": str(work),
            "out": str(out), "folder": str(folder), "model": str(folder / "model.onnx"),
            "ckpt": str(folder / "best.pt")}


def run_steps(root: Path, python: str, out: Path, mode: str, steps: tuple[plan.Step, ...] = plan.STEPS,
              deadline_s: float = plan.RUN_DEADLINE_S) -> int:
    """Every step in order, then the summary and the archive; 0 only when every step passed."""
    out.mkdir(parents=True, exist_ok=True)
    (root / "gpu-run").mkdir(parents=True, exist_ok=True)
    run = Run(out / LOG, deadline_s)
    env = step_env(root, mode)
    for step in steps:
        argv = plan.rehearsed(step) if mode == "rehearse" else step.argv
        values = placeholders(root, python, out)
        run.step(step.title, [a.format(**values) for a in argv], step.limit_s, env=env, cwd=layout.ROOT,
                 critical=step.critical)
    lines = run.summary()
    for line in lines:
        run.say(line)
    (out / SUMMARY).write_text("\n".join(lines) + "\n")
    pack_results(out, [root / "gpu-run"])
    return 0 if run.passed else 1


def print_plan() -> bool:
    items, built = plan.carried_items()
    checkout = layout.checkout_bytes()
    lines, fits = plan.describe(plan.plan_calls(items, checkout), checkout, built)
    print("\n".join(lines), flush=True)
    return fits


def rehearse(shared: Path, out: Path | None) -> int:
    python = build.build(shared)
    fits = print_plan()
    root = Path(tempfile.mkdtemp(prefix="vggexport-gpu-rehearsal-"))
    print(f"rehearsing the calls in {root} (the machine's /tmp)", flush=True)
    items, _ = plan.carried_items()
    try:
        for number, call in enumerate(plan.plan_calls(items, layout.checkout_bytes()), 1):
            build.stash(root, call.carry, number)
        code = run_steps(root, str(python), out or root / "gpu-out", "rehearse")
    finally:
        shutil.rmtree(layout.ROOT / layout.DATA, ignore_errors=True)  # the data copy never outlives the run
    if not fits:
        print("the plan does not fit the device's limits (see above)", flush=True)
    return code or (0 if fits else 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    modes = parser.add_mutually_exclusive_group()
    for flag in ("--plan", "--rehearse", "--build", "--clean", "--install", "--preflight", "--gpu-tests"):
        modes.add_argument(flag, action="store_true")
    modes.add_argument("--stash", type=int, metavar="N", help="Device call N of the plan: keep what it carried.")
    parser.add_argument("--call", type=int, default=0, metavar="N",
                        help="The run's call number in the plan (the calls before it must have stashed).")
    parser.add_argument("--shared", type=Path, default=layout.data_root(), help="Fashion-MNIST's root, for --build.")
    args = parser.parse_args()
    root = Path(os.environ.get("GPU_CHECK_ROOT", layout.DEVICE_ROOT))
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    mode = os.environ.get("GPU_CHECK_MODE", "gpu")
    if args.plan:
        return 0 if print_plan() else 1
    if args.rehearse:
        return rehearse(args.shared, out)
    if args.build:
        build.build(args.shared)
        return 0 if print_plan() else 1
    if args.clean:
        shutil.rmtree(layout.ROOT / layout.DATA, ignore_errors=True)
        return 0
    if args.stash is not None:
        build.stash(root, call=args.stash)
        return 0
    if args.install:
        build.install(root)
        return 0
    if args.preflight:
        return preflight.preflight(mode)
    if args.gpu_tests:
        return preflight.gpu_tests()
    build.stash(root, call=args.call)
    return run_steps(root, sys.executable, out or root / "gpu-out", "gpu")


if __name__ == "__main__":
    sys.exit(main())
