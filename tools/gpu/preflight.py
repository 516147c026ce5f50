"""The GPU run's first checks, in seconds: the GPU, an ONNX Runtime CUDA session in a process that has not
imported torch (as the server runs it), every import, the versions, and ``pip check``. And the GPU tests,
whose collection is checked (on the CPU they skip, so collection is what the rehearsal proves).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import layout

IMPORTS = ("vggexport.serve.app", "vggexport.serve.grpc_server", "tritonclient.http", "tritonclient.grpc",
           "onnxconverter_common", "fastapi", "uvicorn", "onnx", "onnxscript", "torch", "torchvision", "vggexport.cli")
VERSIONS = ("onnxruntime-gpu", "onnxruntime", "torch", "torchvision", "numpy", "onnx", "onnxscript", "protobuf",
            "grpcio", "fastapi", "starlette", "pydantic", "uvicorn", "tritonclient", "onnxconverter-common")


def tiny_model(folder: Path) -> Path:
    """A one-Conv vggexport-shaped ONNX file: enough to start a session on the provider asked for."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((10, 1, 4, 4), np.float32) / 16, "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "weight"], ["conv"]), helper.make_node("Flatten", ["conv"], ["logits"])],
        "preflight", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's; a newer onnx writes a newer IR version than an older ONNX Runtime reads
    for key, value in {"model_name": "preflight", "class_names": json.dumps([str(i) for i in range(10)]),
                       "model_config": "{}"}.items():
        model.metadata_props.add(key=key, value=value)
    path = folder / "preflight.onnx"
    onnx.save(model, path)
    return path


def cuda_libraries() -> None:
    """The torch-free server's CUDA library discovery over the carried onnxruntime-gpu and the machine's wheels
    (on the GPU the CUDA session below does this itself; the rehearsal loads them to prove they are found)."""
    import onnxruntime as ort

    from vggexport.backend.cuda_libs import find_cuda_libraries
    from vggexport.backend.onnxrt import preload_cuda_libraries

    found = find_cuda_libraries(int(str(ort.cuda_version).split(".")[0])).found
    print("CUDA libraries:", ", ".join(f"{lib.name} in {path.parent if path else 'no wheel'}"
                                       for lib, path in found.items()), flush=True)
    problems = preload_cuda_libraries(ort, print)
    if problems:
        raise SystemExit(f"error: {problems[0]}")


def ort_session(provider: str) -> None:
    """The server's own path (vggexport.backend.onnxrt.load_session), before anything imports torch."""
    import numpy as np

    from vggexport.backend.onnxrt import load_session, resolve_provider

    if provider == "cpu":
        cuda_libraries()

    with tempfile.TemporaryDirectory() as folder:
        session, _ = load_session(tiny_model(Path(folder)), provider=provider, phase=print)
        logits = session.run(None, {"input": np.ones((2, 1, 4, 4), np.float32)})[0]
    if not np.allclose(logits, 1.0):
        raise SystemExit(f"error: the preflight model computed {logits.ravel()[:4]}, not ones")
    print(f"ONNX Runtime session on {session.get_providers()[0]}; torch loaded: {'torch' in sys.modules}; "
          f"--provider auto resolves to {resolve_provider('auto')}", flush=True)
    if "torch" in sys.modules:
        raise SystemExit("error: the torch-free path imported torch")


def preflight(mode: str) -> int:
    from vggexport.errors import VggExportError

    try:
        return checks(mode)
    except (VggExportError, ImportError, subprocess.CalledProcessError, OSError) as exc:
        print(f"error: preflight: {type(exc).__name__}: {exc}", flush=True)
        return 1


def checks(mode: str) -> int:
    if mode == "gpu":
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       check=True)
    ort_session("cuda" if mode == "gpu" else "cpu")
    for module in IMPORTS:
        __import__(module)
    print(f"imported {', '.join(IMPORTS)}", flush=True)
    from importlib import metadata

    print("versions:", ", ".join(f"{n} {version_of(metadata, n)}" for n in VERSIONS), flush=True)
    print(f"python {sys.version.split()[0]} at {sys.executable}; every package (pin tools/gpu_device.txt from it):",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"], check=False)
    checked = subprocess.run([sys.executable, "-m", "pip", "check"], text=True, capture_output=True)
    print(f"pip check (the carried packages and the machine's): {checked.stdout.strip() or checked.stderr.strip()}")
    relied_on, carried = watched_packages()
    ours = pip_check_problems(checked.stdout, relied_on, carried)
    for line in ours:
        print(f"error: pip check: {line}", flush=True)
    return 1 if ours else 0


def watched_packages() -> tuple[set[str], set[str]]:
    """(what the run relies on: vggexport's requirements, torch and the carried packages; the carried ones)."""
    from . import build

    listing = Path(os.environ.get("GPU_CHECK_ROOT", layout.DEVICE_ROOT)) / "carried" / layout.WHEELS / "carried.txt"
    carried = {build.ORT_GPU}
    if listing.is_file():
        carried |= {build.requirement_name(line) for line in listing.read_text().splitlines() if line.strip()}
    relied_on = {build.requirement_name(r) for r in build.requirements()} | {"torch", "torchvision"} | carried
    return relied_on, carried


def pip_check_problems(report: str, relied_on: set[str], carried: set[str]) -> list[str]:
    """The lines of ``pip check`` that are the run's business: a package it relies on with an unmet need, or a
    carried package that breaks one of the machine's. The machine's image may hold conflicts among packages
    the run never imports (it has ~200), which are no reason to stop the run; they are printed all the same."""
    from .build import requirement_name

    found = []
    for line in report.splitlines():
        match = re.match(r"(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9_.\-]+)", line)
        if match and (requirement_name(match.group(1)) in relied_on or requirement_name(match.group(2)) in carried):
            found.append(line.strip())
    return found


def version_of(metadata: object, name: str) -> str:
    try:
        return metadata.version(name)  # type: ignore[attr-defined]
    except Exception:  # PackageNotFoundError: say so in the line
        return "absent"


def gpu_tests() -> int:
    """``pytest -m gpu``, after checking that it collects GPU tests and no collection error."""
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    collected = subprocess.run([*base, "--collect-only", "-q"], cwd=layout.ROOT, text=True, capture_output=True)
    tail = (collected.stdout.strip().splitlines() or [""])[-1]
    match = re.search(r"(\d+)(?:/\d+)? tests? collected", tail)
    count = int(match.group(1)) if match else 0
    print(f"collection: {tail}", flush=True)
    if collected.returncode != 0 or "error" in tail or count == 0:
        print(collected.stdout[-4000:], collected.stderr[-2000:])
        print("error: pytest -m gpu did not collect the GPU tests cleanly", flush=True)
        return 1
    print(f"collected {count} GPU tests", flush=True)
    return subprocess.run([*base, "-q", "-rs"], cwd=layout.ROOT).returncode
