"""Where the GPU run's pieces live, here and on the GPU machine, and how big they are.

Three git-ignored folders travel beside the checkout: ``.ortgpu`` (onnxruntime-gpu in parts), ``.gpuwheels``
(the wheels the machine lacks) and ``.gpudata`` (Fashion-MNIST: the one copy of the data in the checkout,
removed after the run). On the machine everything else goes under one root, ``/tmp`` there; the rehearsal
uses a folder of its own in its place, so both run the same commands.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS, WHEELS, DATA = ".ortgpu", ".gpuwheels", ".gpudata"
MIB = 1024 * 1024
CALL_LIMIT = 60 * MIB  # what one device call may carry, the checkout included (the tool's own limit is 64 MiB)
# onnxruntime-gpu's xz (194.4 MiB for 1.31.1) is cut into parts of this size: three fill a call each, and the
# remainder (26.4 MiB) shares one with the data (29.2), with room for the checkout to grow to about 4 MiB. At 55
# the remainder (29.4) and the data no longer fit together once the checkout passed 1.4 MiB: one call more.
PART_MIB = 56
DEVICE_ROOT = Path("/tmp")
DATASET_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def checkout_bytes() -> int:
    """What every call sends: tracked files, and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())


def part_folders() -> list[Path]:
    return sorted((ROOT / PARTS).glob("p*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0)


def data_root() -> Path:
    """Fashion-MNIST's root as torchvision lays it out (``<root>/FashionMNIST/raw``), beside the checkout."""
    return ROOT.parent / "shared" / "data"
