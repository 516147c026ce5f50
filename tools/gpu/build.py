"""What the GPU run carries, built here: the rehearsal's Python 3.12 environment (the GPU machine's packages),
the wheels pip resolves on top of it, onnxruntime-gpu in parts, and the data. And, on the machine (or in the
rehearsal's stand-in for it), how they are unpacked: a ``--target`` site folder on ``PYTHONPATH``, ``--no-index``.

The registry is used only here, by the first build (a few GB: torch's CUDA build and its nvidia-* wheels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from . import layout

DEVICE_PACKAGES = layout.ROOT / "tools" / "gpu_device.txt"
PYTHON = "3.12"  # the GPU machine's Python (3.12.3)
# Not carried: the device has torch and torchvision (pinned in gpu_device.txt); the browser tests do not run there.
NOT_CARRIED = {"torch", "torchvision", "playwright"}
ORT_GPU = "onnxruntime-gpu"
PARTS_LIST = "ort-parts.sha256"  # in the wheels' folder: what a complete set of parts is


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    shown = " ".join(argv)
    print("$", shown if len(shown) < 400 else shown[:400] + " ...", flush=True)
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
    wanted = [*project["dependencies"], *own_extra(project, "test")]
    return [r for r in wanted if requirement_name(r) not in NOT_CARRIED]


def own_extra(project: dict, extra: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """An extra's requirements, with the project's own extras it names (``vggexport[signing]``) expanded in
    place: pip cannot resolve the project itself from an index, and the device never installs it (the checkout
    is imported where it lies)."""
    own = requirement_name(project["name"])
    found: list[str] = []
    for requirement in project["optional-dependencies"][extra]:
        if requirement_name(requirement) != own:
            found.append(requirement)
            continue
        named = requirement.split("[", 1)[1].split("]", 1)[0] if "[" in requirement else ""
        for inner in filter(None, (e.strip() for e in named.split(","))):
            if inner not in seen | {extra}:  # extras that name each other are read once
                found += own_extra(project, inner, seen | {extra})
    return found


def requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-")


def resolve(python: Path) -> dict[str, str]:
    """{name: version} to carry: what pip would install on top of the machine's packages (what it lacks or has
    too old), and every package whose version there is unknown (not pinned in gpu_device.txt) that a carried
    one constrains: the rehearsal has the newest of it, the machine may have an older one."""
    report = cache_dir() / "gpu-resolution.json"
    run([str(python), "-m", "pip", "install", "-q", "--dry-run", "--only-binary=:all:", "--report", str(report),
         *requirements()])
    resolved = json.loads(report.read_text())["install"]
    closure = {requirement_name(item["metadata"]["name"]): item["metadata"]["version"] for item in resolved}
    found = {requirement_name(i["metadata"]["name"]): (i["metadata"]["version"], i["metadata"].get("requires_dist", []),
                                                      i["metadata"].get("provides_extra", [])) for i in resolved}
    installed = needs_of(python, found)
    pinned = {requirement_name(line) for line in device_lines() if "==" in line}
    extras = requested_extras()
    queue = list(closure)
    while queue:  # a package carried for its version may constrain further ones of unknown version
        carrier = queue.pop()
        for name, constrains, only_for in installed.get(carrier, ("", []))[1]:
            wanted = only_for is None or set(only_for) & extras.get(carrier, set())
            if wanted and constrains and name in installed and name not in pinned and name not in closure:
                closure[name] = installed[name][0]
                queue.append(name)
    return closure


def device_lines() -> list[str]:
    lines = [line.split("#")[0].strip() for line in DEVICE_PACKAGES.read_text().splitlines()]
    return [line for line in lines if line]


def requested_extras() -> dict[str, set[str]]:
    """{package: the extras the project asks of it} (tritonclient[http,grpc], uvicorn[standard])."""
    found: dict[str, set[str]] = {}
    for requirement in requirements():
        head = requirement.split(";")[0]
        if "[" in head:
            found.setdefault(requirement_name(head), set()).update(
                e.strip() for e in head.split("[", 1)[1].split("]")[0].split(","))
    return found


# Run by the rehearsal's Python, which has `packaging`: each package's needs, markers evaluated for that
# interpreter; a need behind extras names them (it counts only where the project asks for that extra).
NEEDS = """
import importlib.metadata as m, json, sys
from packaging.requirements import Requirement
def needs(requires, extras):
    out = []
    for text in requires:
        req = Requirement(text)
        only = None
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            only = [e for e in extras if req.marker.evaluate({"extra": e})]
            if not only:
                continue
        out.append([req.name, bool(req.specifier), only])
    return out
given = json.load(sys.stdin)
found = {d.metadata["Name"]: [d.version, needs(d.requires or [], d.metadata.get_all("Provides-Extra") or [])]
         for d in m.distributions()}
found.update({name: [v, needs(r, e)] for name, (v, r, e) in given.items()})
print(json.dumps(found))
"""


def needs_of(python: Path, resolved: dict[str, tuple[str, list[str], list[str]]]) -> dict[str, tuple[str, list]]:
    """{name: (version, [(needed name, constrains its version, only for these extras or None)])}: of every
    package in the rehearsal's environment, and of the resolved ones pip would add."""
    listed = json.loads(run([str(python), "-c", NEEDS], input=json.dumps(resolved), capture_output=True).stdout)
    return {requirement_name(name): (version, [(requirement_name(n), c, o) for n, c, o in needs])
            for name, (version, needs) in listed.items()}


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
    """onnxruntime-gpu in parts, and their list with sha256 in the wheels' folder (it travels with the run),
    so the machine unpacks only a complete, unchanged set."""
    marker, made = layout.ROOT / layout.PARTS / "version.txt", f"{version} in parts of {layout.PART_MIB} MiB"
    if not (marker.is_file() and marker.read_text().strip() == made and layout.part_folders()):
        run(["bash", str(layout.ROOT / "tools" / "ort_gpu_parts.sh"), str(layout.ROOT / layout.PARTS), version,
             str(layout.PART_MIB)])
        marker.write_text(made + "\n")
    pieces = sorted(layout.ROOT.glob(f"{layout.PARTS}/p*/ort.tar.xz.*"), key=lambda p: p.name)
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.parent.name}/{p.name}\n" for p in pieces)
    (layout.ROOT / layout.WHEELS / PARTS_LIST).write_text(listing)


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


def stash(root: Path, names: list[str] | None = None, call: int = 0) -> None:
    """On the machine: copy what this call carried into ``root/carried``, where later calls find it.

    ``call`` (the plan's number for it; 0: unnumbered) is recorded; a call that finds an earlier one missing
    says at once that the machine was replaced between calls (its /tmp went with it).
    """
    carried = root / "carried"
    every = [layout.WHEELS, layout.DATA, *(f"{layout.PARTS}/{p.name}" for p in layout.part_folders())]
    for name in every if names is None else names:
        source = layout.ROOT / name
        if source.is_dir():
            shutil.copytree(source, carried / name, dirs_exist_ok=True)
            print(f"stashed {name} ({layout.folder_bytes(source) / layout.MIB:.1f} MiB) in {carried}", flush=True)
    if call < 1:
        return
    record = carried / "calls.txt"
    done = {int(n) for n in record.read_text().split()} if record.is_file() else set()
    missing = sorted(set(range(1, call)) - done)
    if missing:
        raise SystemExit(f"error: calls {missing} left nothing in {carried}: the machine was replaced between "
                         "calls; start again from the first call")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(" ".join(map(str, sorted(done | {call}))) + "\n")
    print(f"calls stashed so far: {sorted(done | {call})}", flush=True)


def install(root: Path) -> None:
    """onnxruntime-gpu from its parts, then the wheels, into ``root/site`` (``--target``, ``--no-index``).

    The parts are checked against their list first, and unpacked by Python's lzma and tarfile (no xz binary
    is assumed on the machine)."""
    import tarfile

    carried, site = root / "carried", root / "site"
    pieces = check_parts(carried)
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=Chained(pieces), mode="r|xz") as archive:  # type: ignore[call-overload]
        archive.extractall(site, filter="data")
    wheels = sorted((carried / layout.WHEELS).glob("*.whl"))
    if wheels:
        run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
             "--target", str(site), *map(str, wheels)])
    print(f"installed onnxruntime-gpu ({len(pieces)} parts) and {len(wheels)} wheels into {site}", flush=True)


def check_parts(carried: Path) -> list[Path]:
    listed = carried / layout.WHEELS / PARTS_LIST
    if not listed.is_file():
        raise SystemExit(f"error: no {listed}: carry {layout.WHEELS} (made by --build) with the run")
    pieces = []
    for line in listed.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        piece = carried / layout.PARTS / name
        if not piece.is_file():
            raise SystemExit(f"error: part {name} was never stashed in {carried}: carry every part first")
        if hashlib.sha256(piece.read_bytes()).hexdigest() != digest:
            raise SystemExit(f"error: part {name} differs from the one --build made: carry it again")
        pieces.append(piece)
    return pieces


class Chained(io.RawIOBase):
    """The parts read one after the other, as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self.files = [open(p, "rb") for p in paths]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.files:
            count = self.files[0].readinto(buffer)
            if count:
                return count
            self.files.pop(0).close()
        return 0
