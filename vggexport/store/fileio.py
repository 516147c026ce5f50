"""Atomic writes (an artifact is either whole or absent, never half-written) and reads (hashed as loaded)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from vggexport.errors import VggExportError


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success.

    The temporary file lives in the same folder so the final ``os.replace`` is
    atomic on POSIX; on any exception it is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise VggExportError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_dir_atomic(target: str | os.PathLike[str], fill: Callable[[Path], None], *,
                     replaced: Collection[str]) -> Path:
    """Build folder ``target`` with ``fill(staging)`` beside it, then move it into place.

    A reader of the folder (a Triton server polling its repository) sees the old folder or the new one, never
    a mix of the two; while they swap (two renames) it is briefly absent. Entries of an existing ``target``
    not named in ``replaced`` (a model's other versions) are carried over. On any error nothing changes.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise VggExportError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    try:
        for entry in target.iterdir() if target.is_dir() else ():
            if entry.name in replaced:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
        fill(staging)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; a repository is an ordinary folder
        retired = target.with_name(f"{staging.name}.old")
        if target.exists():
            os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    except OSError as exc:
        raise VggExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and prove it takes files, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
            pass
    except OSError as exc:
        raise VggExportError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


@dataclass(frozen=True, eq=False)  # eq by identity: never compare two ~90 MB byte strings by accident
class ArtifactBytes:
    """A model file read once: what is hashed, checked and loaded is this one byte string.

    Reading the path again to load it would let a file swapped in between run under another's sha256.
    """

    path: Path
    data: bytes = field(repr=False)
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)

    def __str__(self) -> str:  # messages name the file, as they do for a path
        return str(self.path)


ModelSource = Union[str, "os.PathLike[str]", ArtifactBytes]
# VGG-19's checkpoint with optimizer state and EMA weights is under 2 GiB; ONNX files stop at protobuf's 2 GiB.
MAX_ARTIFACT_BYTES = 4 * 2**30


def read_artifact(path: str | os.PathLike[str]) -> ArtifactBytes:
    """Read ``path`` once into memory and hash those bytes; a one-line error when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_ARTIFACT_BYTES:
                raise VggExportError(f"{path} is {size / 2**30:.1f} GiB: larger than any file vggexport writes "
                                     f"({MAX_ARTIFACT_BYTES // 2**30} GiB at most), so it is not read")
            data = handle.read()
    except MemoryError:
        raise VggExportError(f"{path} does not fit in memory") from None
    except FileNotFoundError:
        raise VggExportError(f"no file at {path}") from None
    except IsADirectoryError:
        raise VggExportError(f"{path} is a directory, not a model file") from None
    except OSError as exc:
        raise VggExportError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return ArtifactBytes(path, data, hashlib.sha256(data).hexdigest())


def artifact_of(source: ModelSource) -> ArtifactBytes:
    """``source`` itself when it was already read, else the file at that path, read once now."""
    return source if isinstance(source, ArtifactBytes) else read_artifact(source)
