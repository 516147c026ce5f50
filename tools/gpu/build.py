"""What the GPU run carries, built here: the rehearsal's Python 3.12 environment (the GPU machine's packages),
the wheels pip resolves on top of it, onnxruntime-gpu in parts, and the data. And, on the machine (or in the
rehearsal's stand-in for it), how they are unpacked: a ``--target`` site folder on ``PYTHONPATH``, ``--no-index``.

The registry is used only here, by the first build (a few GB: torch's CUDA build and its nvidia-* wheels).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from . import layout

DEVICE_PACKAGES = layout.ROOT / "tools" / "gpu_device.txt"
PYTHON = "3.12"  # the GPU machine's Python (3.12.3)
# Not carried: the device has torch and torchvision (pinned in gpu_device.txt); the browser tests do not run there.
NOT_CARRIED = {"torch", "torchvision", "playwright"}
ORT_GPU = "onnxruntime-gpu"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vggexport"


def python312() -> str:
    """pyenv's Python 3.12 (or python3.12 on PATH)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{PYTHON}.*/bin/python{PYTHON}")) if root.is_dir() else []
    if found:
        return str(found[-1])
    on_path = shutil.which(f"python{PYTHON}")
    if on_path is None:
        raise SystemExit(f"error: no Python {PYTHON} (pyenv install {PYTHON}, or put python{PYTHON} on PATH)")
    return on_path


def rehearsal_venv() -> Path:
    """The GPU machine's packages in a Python 3.12 venv, cached outside the repository by the list's hash."""
    digest = hashlib.sha256(DEVICE_PACKAGES.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"gpu-rehearsal-{digest}"
    if (venv / "bin" / "python").exists():
        return venv
    staging = venv.with_name(venv.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    print(f"building {venv} (the first build downloads a few GB)", flush=True)
    run([python312(), "-m", "venv", str(staging)])
    run([str(staging / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(DEVICE_PACKAGES)])
    staging.rename(venv)  # venvs keep absolute paths in their scripts, but `python -m pip` is all we use
    return venv


def requirements() -> list[str]:
    """What the GPU run imports: the project's dependencies and test extra, less what the machine has or skips."""
    project = tomllib.loads((layout.ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [r for r in wanted if requirement_name(r) not in NOT_CARRIED]


def requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-")


def resolve(python: Path) -> dict[str, str]:
    """{name: version} pip would install on top of the machine's packages: what it lacks or has too old."""
    report = cache_dir() / "gpu-resolution.json"
    run([str(python), "-m", "pip", "install", "-q", "--dry-run", "--only-binary=:all:", "--report", str(report),
         *requirements()])
    resolved = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in resolved}


def download_wheels(python: Path, closure: dict[str, str]) -> None:
    """Exactly the resolved wheels but onnxruntime-gpu (too big for one call: it travels in parts)."""
    wheels = layout.ROOT / layout.WHEELS
    pins = sorted(f"{name}=={version}" for name, version in closure.items() if name != ORT_GPU)
    listing = "\n".join(pins) + "\n"
    if (wheels / "carried.txt").is_file() and (wheels / "carried.txt").read_text() == listing:
        return
    shutil.rmtree(wheels, ignore_errors=True)
    staging = wheels.with_name(wheels.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(staging), *pins])
    (staging / "carried.txt").write_text(listing)
    staging.rename(wheels)


def build_parts(version: str) -> None:
    marker = layout.ROOT / layout.PARTS / "version.txt"
    if marker.is_file() and marker.read_text().strip() == version and layout.part_folders():
        return
    run(["bash", str(layout.ROOT / "tools" / "ort_gpu_parts.sh"), str(layout.ROOT / layout.PARTS), version])
    marker.write_text(version + "\n")


def copy_data(shared: Path) -> None:
    """Fashion-MNIST into the git-ignored folder that travels (and is removed after the run)."""
    source = shared / "FashionMNIST" / "raw"
    missing = [name for name in layout.DATASET_FILES if not (source / name).is_file()]
    if missing:
        raise SystemExit(f"error: {source} lacks {', '.join(missing)}: the GPU run needs the real Fashion-MNIST")
    target = layout.ROOT / layout.DATA / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in layout.DATASET_FILES:
        shutil.copyfile(source / name, target / name)


def build(shared: Path) -> Path:
    """Everything the calls carry; returns the rehearsal's interpreter."""
    venv = rehearsal_venv()
    python = venv / "bin" / "python"
    closure = resolve(python)
    print("carried (pip resolved on top of the machine's packages):",
          ", ".join(f"{k}=={v}" for k, v in sorted(closure.items())), flush=True)
    if ORT_GPU not in closure:
        raise SystemExit(f"error: pip did not resolve {ORT_GPU}; the GPU run needs it")
    download_wheels(python, closure)
    build_parts(closure[ORT_GPU])
    copy_data(shared)
    return python


def stash(root: Path, names: list[str] | None = None) -> None:
    """On the machine: copy what this call carried into ``root/carried``, where later calls find it."""
    carried = root / "carried"
    for name in names or [layout.WHEELS, layout.DATA, *(f"{layout.PARTS}/{p.name}" for p in layout.part_folders())]:
        source = layout.ROOT / name
        if source.is_dir():
            shutil.copytree(source, carried / name, dirs_exist_ok=True)
            print(f"stashed {name} ({layout.folder_bytes(source) / layout.MIB:.1f} MiB) in {carried}", flush=True)


def install(root: Path) -> None:
    """onnxruntime-gpu from its parts, then the wheels, into ``root/site`` (``--target``, ``--no-index``)."""
    carried, site = root / "carried", root / "site"
    pieces = sorted((carried / layout.PARTS).glob("p*/ort.tar.xz.*"), key=lambda p: p.name)
    if not pieces:
        raise SystemExit(f"error: no onnxruntime-gpu parts under {carried / layout.PARTS}: carry them first")
    site.mkdir(parents=True, exist_ok=True)
    cat = subprocess.Popen(["cat", *map(str, pieces)], stdout=subprocess.PIPE)
    unxz = subprocess.Popen(["xz", "-d", "-T0"], stdin=cat.stdout, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(site)], stdin=unxz.stdout, check=True)
    if cat.wait() or unxz.wait():
        raise SystemExit("error: the onnxruntime-gpu parts are incomplete or corrupt")
    wheels = sorted((carried / layout.WHEELS).glob("*.whl"))
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
         "--target", str(site), *map(str, wheels)])
    print(f"installed onnxruntime-gpu and {len(wheels)} wheels into {site}", flush=True)
