"""The verified record: ``parity.json`` beside the files it verified, and the gate that reads it.

Each file's entry keeps its sha256 (of the very bytes verify ran), runtimes, checks and verdict.
``serve`` and ``triton`` ship only a file whose sha256 is recorded as passed, so an ONNX re-exported
(or edited) after verify, or one that verify never ran, is refused. The gate reads the file once and
hands back those bytes: the caller loads (or copies) what was checked, not the path again.
Torch-free: the serving process imports this.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from vggexport.artifacts import PARITY
from vggexport.errors import VggExportError
from vggexport.fileio import ArtifactBytes, artifact_of, read_artifact, write_text_atomic
from vggexport.manifest import check_artifact, read_manifest, update_manifest

FORMAT = "vggexport.parity/2"


def read_record(folder: Path) -> dict[str, Any]:
    """The folder's record, or {} when there is none; a record edited behind vggexport's back is refused.

    This checks integrity (the manifest's sha256), not who wrote the record: whoever can rewrite both
    files can forge a verdict.
    """
    path = folder / PARITY
    if not path.is_file():
        return {}
    if PARITY not in read_manifest(folder).get("artifacts", {}):
        raise VggExportError(f"{path} was not written by `vggexport verify` (the manifest does not list it)")
    artifact = read_artifact(path)  # once: the verdict judged is the one whose sha256 the manifest matched
    check_artifact(artifact)
    try:
        record = json.loads(artifact.data)
    except (OSError, ValueError):
        raise VggExportError(f"{path} is not a vggexport parity report; run `vggexport verify` again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise VggExportError(f"{path} is not a vggexport parity report (format {FORMAT}); run `vggexport verify` again")
    return record


def file_entry(sha256: str, kind: str, takes_pixels: bool, results: list[dict[str, Any]],
               complete: bool) -> dict[str, Any]:
    real = [c for r in results for name, c in r["checks"].items() if name.startswith("real")]
    return {"sha256": sha256, "kind": kind,
            "precision": results[0]["precision"] if results else "fp32", "takes_pixels": takes_pixels,
            "passed": bool(results) and all(r["passed"] for r in results), "runtimes": results,
            "real_data": {"checked": bool(real), "samples": max((c["samples"] for c in real), default=0),
                          "complete": bool(real) and complete},
            "verified_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_records(report: Any, files: list[tuple[Path, str, bool, str]], checkpoint: Path,
                  checkpoint_sha256: str) -> list[Path]:
    """Merge this run's verdicts into parity.json in each verified file's folder.

    ``files``: (path, kind, takes uint8 pixels, the sha256 verify hashed before running it).

    Entries of other files stay while they were verified against the same checkpoint; a new
    checkpoint makes every earlier verdict stale, so they are dropped.
    """
    data = report.to_dict()
    reference = data["runtimes"][0]
    by_folder: dict[Path, list[tuple[Path, str, bool, str]]] = {}
    for item in files:
        by_folder.setdefault(item[0].resolve().parent, []).append(item)
    written = []
    for folder, items in by_folder.items():
        try:
            previous = read_record(folder)
        except VggExportError:
            previous = {}  # a broken record is replaced by this run's verdicts
        same_checkpoint = previous.get("checkpoint", {}).get("sha256") == checkpoint_sha256
        entries = dict(previous.get("files", {})) if same_checkpoint else {}
        for path, kind, takes_pixels, digest in items:
            results = [r for r in data["runtimes"][1:] if r["artifact"] == path.name and r["sha256"] == digest]
            entries[path.name] = file_entry(digest, kind, takes_pixels, results, data["real_complete"])
        record = {"format": FORMAT, "model": data["model"], "passed": all(e["passed"] for e in entries.values()),
                  "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256},
                  "tolerances": {k: data[k] for k in ("atol", "rtol", "cuda_atol", "cuda_rtol", "min_top1_agreement")},
                  "variants": data["variants"], "reference": reference, "files": entries,
                  "runtimes": [reference, *(r for e in entries.values() for r in e["runtimes"])]}
        target = write_text_atomic(folder / PARITY, json.dumps(record, indent=2) + "\n")
        update_manifest(folder, [target], parity={"passed": record["passed"],
                                                  "files": {k: e["passed"] for k, e in entries.items()}})
        written.append(target)
    return written


def verification_status(artifact: ArtifactBytes, device: str = "cpu") -> tuple[str | None, str | None]:
    """(why these bytes may not ship, a warning): (None, None) when parity.json records this very file as
    passed on the whole real test set, on ``device``'s runtime too."""
    path = artifact.path
    entry = read_record(path.resolve().parent).get("files", {}).get(path.name)
    if entry is None:
        return f"{path} has not been verified: run `vggexport verify --model {path}`", None
    if entry.get("sha256") != artifact.sha256:
        return f"{path} changed after it was verified: run `vggexport verify --model {path}` again", None
    if entry.get("passed") is not True:
        return f"{path} failed verification (see {path.parent / PARITY}); fix the export and verify it again", None
    real = entry.get("real_data", {})
    if not real.get("checked"):
        return f"{path} was verified on random inputs only: run `vggexport verify --model {path}` with real data", None
    if not real.get("complete"):
        return None, f"{path} was verified on {real.get('samples')} real samples only, not the whole test set"
    if device == "cuda" and not any(r.get("runtime", "").endswith("-cuda") for r in entry.get("runtimes", [])):
        return None, f"{path} was verified on the CPU only; its CUDA results were never compared (verify it on a GPU)"
    return None, None


def require_verified(source: Path | ArtifactBytes, *, allow_unverified: bool = False,
                     device: str = "cpu") -> ArtifactBytes:
    """The file's bytes, read once, when parity.json passed those very bytes; else a one-line error
    (``allow_unverified`` turns it into a warning and still hands the bytes back).

    Load or copy what this returns, never the path again: a file swapped after the check would ship unchecked.
    ``device``: where it will run ("cuda" warns when no CUDA runtime was among the verified ones).
    """
    if not isinstance(source, ArtifactBytes) and not Path(source).is_file():
        raise VggExportError(f"no ONNX model at {source}: run `vggexport export` first")
    artifact = artifact_of(source)
    try:
        problem, warning = verification_status(artifact, device)
    except VggExportError as exc:
        problem, warning = str(exc), None
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if problem is None:
        return artifact
    if not allow_unverified:
        raise VggExportError(f"{problem} (or pass --allow-unverified)")
    print(f"warning: {problem}; serving it anyway (--allow-unverified)", file=sys.stderr, flush=True)
    return artifact
