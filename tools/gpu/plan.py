"""The GPU run's plan: its steps (most valuable first), the device calls that carry what it needs, and the
time it all takes on the H200, printed before anything is spent.

Estimates come from BENCHMARKS.md's H200 figures (2026-11-26) where they exist; the others are marked as
estimates. Every step has its own limit, and the run as a whole a deadline inside the device's 10-minute
command limit, so the summary always prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout

STEPS_TARGET_S = 8 * 60  # the run's steps, estimated
PLAN_TARGET_S = 11 * 60  # the machine's start, every carrying call and the run
RUN_DEADLINE_S = 540  # no step starts, or runs on, past this: the summary and the archive still fit in 600 s
MACHINE_START_S = 120  # estimate: "a minute or more" (device README)
CARRY_CALL_S = 15  # estimate: a call that carries <= 60 MiB and copies it into /tmp ("a few seconds each")
# Measured here on 2026-12-01 (onnxruntime-gpu 1.31.1 in xz parts, layout.PART_MIB each; the 45 wheels pip resolved; the
# four Fashion-MNIST files): used by --plan where nothing is built yet.
ORT_XZ_MIB = 194.4  # onnxruntime-gpu 1.31.1 packed (tools/ort_gpu_parts.sh), measured 2026-12-01
ESTIMATED_SIZES = {"parts": [layout.PART_MIB * layout.MIB] * int(ORT_XZ_MIB // layout.PART_MIB)
                   + [int(ORT_XZ_MIB % layout.PART_MIB * layout.MIB)],
                   layout.WHEELS: int(52.8 * layout.MIB),  # measured 2026-12-02, with the signing extra's wheels
                   layout.DATA: int(29.2 * layout.MIB)}
H200 = "H200 2026-11-26"


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]  # placeholders: {py} {data} {art} {work} {out} {folder} {model} {ckpt}
    limit_s: int
    estimate_s: int
    source: str = "estimate"  # where estimate_s comes from
    tiny: tuple[str, ...] = ()  # appended in the rehearsal, which runs on the CPU
    critical: bool = False  # a failure stops the run: nothing after it could mean anything


PY = "{py}"
TRAIN = (PY, "-m", "vggexport", "train", "--data-dir", "{data}")
# The rehearsal's model: small and briefly trained, so every step fits its GPU limit on 2 shared cores.
TINY_TRAIN = ("--max-steps", "10", "--eval-samples", "128", "--width", "0.125", "--batch-size", "32")
# An int8 copy of a 10-step model (accuracy ~0.3, top-2 gaps near zero) disagrees on near-ties, as it should:
# the rehearsal verifies every other file, the GPU run every file.
REHEARSED_FILES = ("model.onnx", "model.preprocessing.onnx", "model.fp16.onnx", "model.torchscript.pt", "model.pt2")
STEPS = (
    Step("install the carried packages", (PY, "tools/gpu_check.py", "--install"), 90, 20, critical=True),
    Step("preflight: GPU, imports, versions, pip check, ORT CUDA session", (PY, "tools/gpu_check.py", "--preflight"),
         90, 10, critical=True),
    Step("train: CUDA defaults, 1 epoch", (*TRAIN, "--epochs", "1", "--artifacts", "{art}"), 120, 45,
         f"{H200}: 24-27 s for the epoch, + start-up", TINY_TRAIN, critical=True),
    Step("export everything", (PY, "-m", "vggexport", "export", "--artifacts", "{art}", "--with-preprocessing",
                               "--precision", "fp32", "--precision", "fp16", "--precision", "int8",
                               "--data-dir", "{data}"), 150, 60, critical=True),
    Step("verify on CUDA runtimes, all 10,000 test images",
         (PY, "-m", "vggexport", "verify", "--artifacts", "{art}", "--data-dir", "{data}", "--device", "cuda",
          "--runtimes", "torchscript-cuda", "--runtimes", "torch-export-cuda", "--runtimes", "onnxruntime-cuda",
          "--report", "{work}/parity-verify.json"), 200, 90,
         tiny=("--samples", "1000", *(a for name in REHEARSED_FILES for a in ("--model", f"{{folder}}/{name}")))),
    Step("serve --provider cuda --instances 2: tritonclient over HTTP and gRPC, 16 requests at once",
         (PY, "tools/serve_probe.py", "--artifacts", "{art}", "--provider", "cuda", "--instances", "2", "--logs",
          "{work}/serve"), 90, 25),
    Step("bench_serve --provider cuda", (PY, "tools/bench_serve.py", "--model", "{model}", "--provider", "cuda",
                                         "--seconds", "3", "--clients", "1", "64", "--logs", "{work}/bench-serve",
                                         "--ready-timeout", "90"), 120, 35, tiny=("--seconds", "1")),
    Step("train: --recipe fast, the speed run (>= 0.950 in <= 60 s)",
         (*TRAIN, "--recipe", "fast", "--device", "cuda", "--artifacts", "{work}/fast"), 120, 75,
         "target: <= 60 s of training, + start-up", TINY_TRAIN),
    Step("train: fp16 with GradScaler, 20 steps",
         (*TRAIN, "--precision", "fp16", "--max-steps", "20", "--eval-samples", "2000", "--artifacts", "{work}/fp16"),
         60, 20, tiny=(*TINY_TRAIN, "--precision", "bf16")),  # fp16 training is CUDA's alone
    Step("train: --deterministic, 50 steps",
         (*TRAIN, "--device", "cuda", "--deterministic", "--precision", "fp32", "--epochs", "1", "--max-steps", "50",
          "--eval-samples", "2000", "--artifacts", "{work}/det"), 60, 20, tiny=TINY_TRAIN),
    Step("bench_infer --variants --provider cuda: fp32, fp16, int8",
         (PY, "tools/bench_infer.py", "--checkpoint", "{ckpt}", "--variants", "--provider", "cuda", "--seconds", "1",
          "--rounds", "2"), 90, 30, tiny=("--seconds", "0.2", "--rounds", "1")),
    Step("pytest -m gpu", (PY, "tools/gpu_check.py", "--gpu-tests"), 120, 40),
)
# On the CPU: the same flags with the CPU wherever CUDA is asked for.
ON_THE_CPU = {("--device", "cuda"): "cpu", ("--provider", "cuda"): "cpu",
              ("--runtimes", "torchscript-cuda"): "torchscript", ("--runtimes", "torch-export-cuda"): "torch-export",
              ("--runtimes", "onnxruntime-cuda"): "onnxruntime-cpu"}


def rehearsed(step: Step) -> tuple[str, ...]:
    argv = list(step.argv)
    for i in range(1, len(argv)):
        argv[i] = ON_THE_CPU.get((argv[i - 1], argv[i]), argv[i])
    return (*argv, *step.tiny)


@dataclass
class Call:
    carry: list[str]
    carried_bytes: int
    command: str = ""


def carried_items() -> tuple[list[tuple[str, int]], bool]:
    """(path, bytes) of everything that travels besides the checkout; True when all of it is built."""
    parts = layout.part_folders()
    wheels, data = layout.ROOT / layout.WHEELS, layout.ROOT / layout.DATA
    built = bool(parts) and wheels.is_dir() and data.is_dir()
    if parts:
        items = [(f"{layout.PARTS}/{p.name}", layout.folder_bytes(p)) for p in parts]
    else:
        items = [(f"{layout.PARTS}/p{i + 1}", size) for i, size in enumerate(ESTIMATED_SIZES["parts"])]
    for name, path in ((layout.WHEELS, wheels), (layout.DATA, data)):
        items.append((name, layout.folder_bytes(path) if path.is_dir() else ESTIMATED_SIZES[name]))
    return items, built


def plan_calls(items: list[tuple[str, int]], checkout: int) -> list[Call]:
    """First fit, largest first, into calls of at most CALL_LIMIT each; the last call also runs the steps."""
    room = layout.CALL_LIMIT - checkout
    calls: list[Call] = []
    for name, size in sorted(items, key=lambda item: -item[1]):
        call = next((c for c in calls if c.carried_bytes + size <= room), None)
        if call is None:
            call = Call([], 0)
            calls.append(call)
        call.carry.append(name)
        call.carried_bytes += size
    calls.sort(key=lambda c: c.carried_bytes, reverse=True)  # the run goes last, in the call with the most room
    if not calls:
        calls.append(Call([], 0))
    for number, call in enumerate(calls[:-1], 1):
        call.command = f"bash tools/gpu_check.sh --stash {number}"
    calls[-1].command = f"bash tools/gpu_check.sh --call {len(calls)}"
    return calls


def describe(calls: list[Call], checkout: int, built: bool) -> tuple[list[str], bool]:
    """The plan's lines, and whether it fits: every call <= 60 MiB, steps <= 8 min, all of it <= 11 min."""
    lines = [f"GPU plan: {len(calls)} device calls back to back (sizes {'measured' if built else 'estimated'}; "
             f"each call also sends the checkout, {checkout / layout.MIB:.1f} MiB)"]
    if not built:
        lines.append("  nothing to carry is built yet: run `bash tools/gpu_check.sh --build` before the device calls")
    fits = True
    for number, call in enumerate(calls, 1):
        total = call.carried_bytes + checkout
        fits &= total <= layout.CALL_LIMIT
        timeout = ", timeout_s 600" if number == len(calls) else ""
        lines.append(f"  call {number}: command {call.command!r}{timeout}; carry {call.carry}; "
                     f"{total / layout.MIB:.1f} MiB")
    lines.append("steps of the run (seconds on the H200; * an estimate with no H200 figure behind it):")
    for number, step in enumerate(STEPS, 1):
        mark = "" if step.source.startswith(H200) else "*"
        lines.append(f"  {number:2d}. {step.estimate_s:4d}{mark:1s} s (limit {step.limit_s:3d} s)  {step.title}")
    steps = sum(step.estimate_s for step in STEPS)
    whole = MACHINE_START_S + CARRY_CALL_S * (len(calls) - 1) + steps
    fits &= steps <= STEPS_TARGET_S and whole <= PLAN_TARGET_S
    lines.append(f"steps {steps} s (target <= {STEPS_TARGET_S} s, deadline {RUN_DEADLINE_S} s); machine start "
                 f"{MACHINE_START_S} s*; {len(calls) - 1} carrying calls x {CARRY_CALL_S} s*; whole plan {whole} s = "
                 f"{whole / 60:.1f} min (target <= {PLAN_TARGET_S // 60} min): {'fits' if fits else 'DOES NOT FIT'}")
    return lines, fits
