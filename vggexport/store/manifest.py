"""Provenance: ``<artifacts>/<name>/manifest.json`` records every artifact's size and sha256.

Each command that writes an artifact records it; each command that reads one
checks it first, so a file changed behind vggexport's back (one flipped byte)
is refused with a clear message instead of being exported or served.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from vggexport import __version__
from vggexport.errors import VggExportError
from vggexport.store.fileio import ArtifactBytes, ModelSource, artifact_of, sha256_file, write_text_atomic

MANIFEST = "manifest.json"
PACKAGES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime-gpu", "onnxruntime", "numpy")


def versions() -> dict[str, str]:
    found = {"vggexport": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise VggExportError(f"{path} is not valid JSON; delete it and re-run the commands that made the "
                             "artifacts") from None
    return data if isinstance(data, dict) else {}


def update_manifest(folder: Path, files: list[Path] = (), **sections: Any) -> Path:  # type: ignore[assignment]
    """Record ``files`` (path, size, sha256, the versions that wrote it) and merge ``sections``, atomically.

    Versions live in each artifact's own entry: a later command must not rewrite what an earlier
    artifact was made with.
    """
    manifest = read_manifest(folder)
    manifest.setdefault("format", "vggexport.manifest/1")
    manifest.pop("versions", None)  # the one shared block of older manifests said only who ran last
    entries = manifest.setdefault("artifacts", {})
    made_with = versions() if files else {}
    for path in files:
        path = Path(path)
        entries[path.name] = {"path": path.name, "size": path.stat().st_size, "sha256": sha256_file(path),
                              "versions": made_with}
    manifest.update(sections)
    return write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check_artifact(source: Path | ArtifactBytes) -> None:
    """Refuse a file if the manifest beside it records other contents. Unrecorded files pass.

    Given the bytes a caller read (``ArtifactBytes``), it judges those bytes, not the file on disk now.
    """
    path = source.path if isinstance(source, ArtifactBytes) else Path(source)
    entry = read_manifest(path.parent).get("artifacts", {}).get(path.name)
    if entry is None:
        return
    if isinstance(source, ArtifactBytes):
        size, digest = source.size, source.sha256
    elif path.is_file():
        size, digest = path.stat().st_size, None
    else:
        return
    if size != entry["size"] or (digest or sha256_file(path)) != entry["sha256"]:
        raise VggExportError(
            f"{path} has changed since vggexport wrote it (sha256 differs from {path.parent / MANIFEST}); "
            f"re-create it with vggexport instead of editing it"
        )


def read_checked(source: ModelSource, missing: str) -> ArtifactBytes:
    """The file's bytes (read once, unless the caller already read them), checked against the manifest beside
    it; ``missing`` is the one-line error when there is no such file."""
    if not isinstance(source, ArtifactBytes) and not Path(source).is_file():
        raise VggExportError(missing)
    artifact = artifact_of(source)
    check_artifact(artifact)
    return artifact


def dataset_identity(name: str, files: tuple[Path, ...]) -> dict[str, Any]:
    return {"name": name, "files": {Path(f).name: sha256_file(f) for f in files}}


def environment() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "machine": platform.machine()}
