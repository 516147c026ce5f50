"""The CUDA and cuDNN libraries ONNX Runtime's CUDA provider needs, found wherever this interpreter imports from.

ORT's own ``preload_dlls()`` looks for the nvidia-* wheels only beside onnxruntime (``onnxruntime/..``) or in
one given folder, and prints what it cannot load. Where onnxruntime-gpu is installed apart from the wheels
(``pip install --target`` on PYTHONPATH, the wheels in the venv), it finds none; after ``import torch`` (which
loads them) nobody notices, but the torch-free server then has no CUDA provider. So this module searches the
``nvidia/*/lib`` folder of every ``sys.path`` entry (CUDA 12's per-library wheels, ``nvidia/cublas/lib``, ...,
and CUDA 13's ``nvidia/cu13/lib`` alike), loads what it found in dependency order, and says in one line which
library is missing and where it looked. Discovery (``find_cuda_libraries``) touches no library, so tests can
run it on a fake layout; ``load_cuda_libraries`` loads. ``vggexport.backend.onnxrt`` imports this only when a
session is to run on CUDA.

Torch-free, like everything the server imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vggexport.errors import first_line

# cuDNN 9's libcudnn.so.9 is a shim that dlopens these from its own folder (its RPATH is $ORIGIN), as it does
# under PyTorch; loading them ourselves would cost ~90 MB of RSS for nothing, so they are only checked for:
# a missing one is named at start-up instead of failing the first convolution.
CUDNN_PARTS = ("graph", "ops", "cnn", "heuristic", "engines_precompiled", "engines_runtime_compiled")


@dataclass(frozen=True)
class Library:
    name: str  # the soname: what ORT's CUDA provider links or dlopens, so what an earlier load satisfies
    required: bool = True


def cuda_libraries(cuda_major: int) -> list[Library]:
    """What ORT's CUDA provider loads, each after the ones it needs (ORT's own Linux preload list, reordered).

    cufft and nvrtc are optional as in ORT: only FFT ops and runtime-compiled kernels use them.
    """
    cufft = 12 if cuda_major >= 13 else 11
    return [Library(f"libcudart.so.{cuda_major}"), Library(f"libcublasLt.so.{cuda_major}"),
            Library(f"libcublas.so.{cuda_major}"), Library("libcurand.so.10"),
            Library(f"libcufft.so.{cufft}", required=False), Library(f"libnvrtc.so.{cuda_major}", required=False),
            Library("libcudnn.so.9")]


def library_dirs(paths: Iterable[str] | None = None) -> list[Path]:
    """Every ``nvidia/<wheel>/lib`` folder under ``paths``, in order; default ``sys.path`` and the nvidia package's.

    The ``nvidia`` namespace package's ``__path__`` adds folders a .pth file or an import hook put there.
    """
    if paths is None:
        spec = importlib.util.find_spec("nvidia") if "nvidia" not in sys.modules else sys.modules["nvidia"].__spec__
        extra = list(spec.submodule_search_locations or []) if spec is not None else []
        roots = [Path(entry or ".") / "nvidia" for entry in sys.path] + [Path(p) for p in extra]
    else:
        roots = [Path(entry) / "nvidia" for entry in paths]
    found: dict[Path, None] = {}
    for root in roots:
        if root.is_dir():
            for lib in sorted(root.glob("*/lib")):
                found.setdefault(lib.resolve(), None)
    return list(found)


@dataclass
class CudaLibraries:
    """Where each library was found (``None``: in no wheel folder; the system's loader may still have it)."""

    cuda_major: int
    found: dict[Library, Path | None] = field(default_factory=dict)
    missing_parts: list[str] = field(default_factory=list)  # cuDNN sub-libraries absent beside libcudnn.so.9
    searched: list[Path] = field(default_factory=list)

    def not_in_wheels(self) -> list[str]:
        return [lib.name for lib, path in self.found.items() if path is None and lib.required] + self.missing_parts

    def not_found(self, name: str) -> str:
        """One line: which library, and where it was looked for."""
        if not self.searched:
            return f"{name} not found: no nvidia/*/lib folder on sys.path (pip install onnxruntime-gpu[cuda,cudnn])"
        return f"{name} not found in {', '.join(str(d) for d in self.searched)}"


def find_cuda_libraries(cuda_major: int, paths: Iterable[str] | None = None) -> CudaLibraries:
    """Find, never load: the nvidia-* wheels' copy of each library ORT's CUDA provider needs."""
    result = CudaLibraries(cuda_major, searched=library_dirs(paths))
    for lib in cuda_libraries(cuda_major):
        result.found[lib] = next((d / lib.name for d in result.searched if (d / lib.name).is_file()), None)
    cudnn = result.found[Library("libcudnn.so.9")]
    if cudnn is not None:
        result.missing_parts = [name for part in CUDNN_PARTS
                                if not (cudnn.parent / (name := f"libcudnn_{part}.so.9")).is_file()]
    return result


def load_cuda_libraries(libraries: CudaLibraries) -> list[str]:
    """Load each library with RTLD_GLOBAL, in order; one line per required library that could not be loaded.

    One already in the process (``import torch`` loaded it) is left as it is: a second copy of the same
    soname would be a second CUDA runtime. One in no wheel folder is asked of the system's loader
    (LD_LIBRARY_PATH, ldconfig), as ORT does.
    """
    problems = [libraries.not_found(name) for name in libraries.missing_parts]
    for lib, path in libraries.found.items():
        if is_loaded(lib.name):
            continue
        try:
            ctypes.CDLL(str(path) if path is not None else lib.name, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            if not lib.required:
                continue
            if path is None:
                problems.append(f"{libraries.not_found(lib.name)}, nor on the system's library path")
            else:
                problems.append(f"{path} does not load ({first_line(exc)})")
    return problems


def is_loaded(name: str) -> bool:
    try:
        ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
    except OSError:
        return False
    return True


# ORT's C++ logger writes to file descriptor 2 (not sys.stderr), coloured, one record per line:
# "2026-... [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] /src/...cc:2043 ... : FAIL : why".
ORT_LOG = re.compile(r"\S+ \S+ \[([EWIV]):onnxruntime:[^\]]*\]\s*(.*)$")
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """ORT's log records written to fd 2 inside the block, into the list (colours removed) when it ends.

    Whatever else was written meanwhile (another thread, another library) goes back out to fd 2.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        records: list[str] = []
        try:
            yield records
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = [line for line in ANSI_COLOUR.sub("", sink.read().decode(errors="replace")).splitlines()
                     if line.strip()]
            records.extend(line for line in lines if ORT_LOG.match(line))
            others = "".join(f"{line}\n" for line in lines if not ORT_LOG.match(line))
            if others:
                os.write(2, others.encode())


def ort_error(lines: list[str]) -> str | None:
    """ORT's first error record of ``lines``, as one short line (library folders dropped), or None."""
    for line in lines:
        match = ORT_LOG.match(line)
        if match and match.group(1) == "E":
            text = match.group(2)
            text = text.split(" : FAIL : ", 1)[-1] if " : FAIL : " in text else text
            return re.sub(r"/\S*/(lib[\w.+-]+\.so[\w.]*)", r"\1", text)[:240]
    return None
