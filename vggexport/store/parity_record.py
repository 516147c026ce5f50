"""The verified record: ``parity.json`` beside the files it verified, and the gate that reads it.

Each file's entry keeps its sha256 (of the very bytes verify ran) and one verdict per runtime
(``onnxruntime-cpu``, ``onnxruntime-cuda``, ...), each with its own reference, tolerances, checks and
real-data coverage: verifying on the CPU keeps a CUDA verdict of the same bytes, and the reverse.
``serve`` and ``triton`` ship only a file whose sha256 is recorded as passed on the runtime it will run
on, so an ONNX re-exported (or edited) after verify, or one that verify never ran, is refused. The gate
reads the file once and hands back those bytes: the caller loads (or copies) what was checked, not the path again.
Torch-free: the serving process imports this.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from vggexport.store.paths import PARITY
from vggexport.errors import VggExportError
from vggexport.store.fileio import ArtifactBytes, artifact_of, read_artifact, write_text_atomic
from vggexport.store.manifest import check_artifact, read_manifest, update_manifest

FORMAT = "vggexport.parity/3"
OLDER_FORMATS = ("vggexport.parity/1", "vggexport.parity/2")
FAMILIES = ("cpu", "cuda")  # what a deployment runs on: onnxruntime-cpu or onnxruntime-cuda


def read_parity(folder: Path) -> dict[str, Any]:
    """The folder's record, or {} when there is none; a record edited behind vggexport's back is refused.

    This checks integrity (the manifest's sha256), not who wrote the record: whoever can rewrite both
    files can forge a verdict.
    """
    return read_parity_bytes(folder)[0]


def read_parity_bytes(folder: Path) -> tuple[dict[str, Any], ArtifactBytes | None]:
    """``read_parity``'s record and the bytes it was parsed from (what ``sign`` signs: no second read)."""
    path = folder / PARITY
    if not path.is_file():
        return {}, None
    if PARITY not in read_manifest(folder).get("artifacts", {}):
        raise VggExportError(f"{path} was not written by `vggexport verify` (the manifest does not list it)")
    artifact = read_artifact(path)  # once: the verdict judged is the one whose sha256 the manifest matched
    check_artifact(artifact)
    return parse_parity(artifact), artifact


def parse_parity(artifact: ArtifactBytes) -> dict[str, Any]:
    """The record in bytes already read (and already trusted: by the manifest, or by a signature)."""
    path = artifact.path
    try:
        record = json.loads(artifact.data)
    except (ValueError, RecursionError):
        raise VggExportError(f"{path} is not a vggexport parity report; run `vggexport verify` again") from None
    found = record.get("format") if isinstance(record, dict) else None
    if found in OLDER_FORMATS:  # its one verdict per file does not say which runtime it holds for
        raise VggExportError(f"{path} is an older parity record ({found}: one verdict per file, not one per "
                             f"runtime); run `vggexport verify` again")
    if not isinstance(record, dict) or found != FORMAT or not isinstance(record.get("files"), dict):
        raise VggExportError(f"{path} is not a vggexport parity report (format {FORMAT}); run `vggexport verify` again")
    return record


def family(runtime: str) -> str:
    """``cpu`` or ``cuda``: where a runtime of ``vggexport.names.RUNTIMES`` computes (its name says so)."""
    return "cuda" if runtime.endswith("-cuda") else "cpu"


def runtime_verdict(result: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """One runtime's result with what it was judged against: each verdict keeps its own reference,
    tolerances and real-data coverage, since a CPU run and a CUDA run of the same bytes differ in all three."""
    real = [c for name, c in result["checks"].items() if name.startswith("real")]
    reference = data["runtimes"][0]
    tolerances = {**result.get("tolerances", {}), "min_top1_agreement": data["min_top1_agreement"]}
    if result["precision"] in data["variants"]:  # variants are judged by accuracy, not elementwise
        tolerances["criterion"] = data["variants"][result["precision"]]
    return {**result, "reference": {"runtime": reference["runtime"], "provider": reference["provider"]},
            "tolerances": tolerances,
            "real_data": {"checked": bool(real), "samples": max((c["samples"] for c in real), default=0),
                          "complete": bool(real) and data["real_complete"]},
            "random_seed": data["random_seed"],
            "verified_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def file_entry(previous: dict[str, Any] | None, digest: str, kind: str, takes_pixels: bool,
               results: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    """The file's entry: this run's verdicts, plus the earlier ones of other runtimes on the same bytes.

    A run that produced no result for the file (the reference itself failed) leaves no verdict standing.
    """
    verdicts: dict[str, dict[str, Any]] = {}
    if previous and previous.get("sha256") == digest and results:  # other bytes: their verdicts say nothing
        verdicts = {v["runtime"]: v for v in previous.get("runtimes", [])
                    if isinstance(v, dict) and isinstance(v.get("runtime"), str)}
    for result in results:
        verdicts[result["runtime"]] = runtime_verdict(result, data)  # a re-verify replaces that runtime's
    runtimes = list(verdicts.values())
    entry = {"sha256": digest, "kind": kind, "precision": runtimes[0]["precision"] if runtimes else "fp32",
             "takes_pixels": takes_pixels, "passed": bool(runtimes) and all(v.get("passed") is True for v in runtimes),
             "runtimes": runtimes}
    if not results and data["runtimes"][0].get("error"):
        entry["error"] = data["runtimes"][0]["error"]
    return entry


def write_parity(report: Any, files: list[tuple[Path, str, bool, str]], checkpoint: Path,
                  checkpoint_sha256: str) -> list[Path]:
    """Merge this run's verdicts into parity.json in each verified file's folder.

    ``files``: (path, kind, takes uint8 pixels, the sha256 verify hashed before running it).

    Entries of other files, and verdicts of other runtimes on the same bytes, stay while they were verified
    against the same checkpoint; a new checkpoint makes every earlier verdict stale, so they are dropped.
    """
    data = report.to_dict()
    by_folder: dict[Path, list[tuple[Path, str, bool, str]]] = {}
    for item in files:
        by_folder.setdefault(item[0].resolve().parent, []).append(item)
    written = []
    for folder, items in by_folder.items():
        try:
            previous = read_parity(folder)
        except VggExportError:
            previous = {}  # a broken or older record is replaced by this run's verdicts
        same_checkpoint = previous.get("checkpoint", {}).get("sha256") == checkpoint_sha256
        entries = dict(previous.get("files", {})) if same_checkpoint else {}
        for path, kind, takes_pixels, digest in items:
            results = [r for r in data["runtimes"][1:] if r["artifact"] == path.name and r["sha256"] == digest]
            entries[path.name] = file_entry(entries.get(path.name), digest, kind, takes_pixels, results, data)
        record = {"format": FORMAT, "model": data["model"], "passed": all(e["passed"] for e in entries.values()),
                  "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256}, "files": entries}
        target = write_text_atomic(folder / PARITY, json.dumps(record, indent=2) + "\n")
        update_manifest(folder, [target], parity=manifest_summary(record))
        written.append(target)
    return written


def manifest_summary(record: dict[str, Any]) -> dict[str, Any]:
    files = record["files"]
    return {"passed": record["passed"], "files": {name: e["passed"] for name, e in files.items()},
            "runtimes": {name: {v["runtime"]: v["passed"] for v in e["runtimes"]} for name, e in files.items()}}


def verification_status(artifact: ArtifactBytes, runs_on: str = "cpu",
                        record: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(why these bytes may not ship, a warning): (None, None) when parity.json records this very file as
    passed on the whole real test set by a runtime of ``runs_on`` (``cpu`` or ``cuda``).

    Any failed verdict refuses, whichever runtime it was on, and a deployment needs a passed verdict of its
    own runtime: a CPU verdict says nothing of what cuDNN computes (int8's Q/DQ nodes do not even run the
    same kernels there), so a GPU deployment verified on the CPU only is refused (``--allow-unverified``
    ships it with a warning), and the reverse.

    ``record``: the parsed record to judge (the signed one, under ``--require-signature``); None reads
    parity.json. A signed record is never read again: a swap after the signed read would be judged instead.
    """
    path = artifact.path
    if record is None:
        record = read_parity(path.resolve().parent)
    entry = record.get("files", {}).get(path.name)
    if entry is None:
        return f"{path} has not been verified: run `vggexport verify --model {path}`", None
    if entry.get("sha256") != artifact.sha256:
        return f"{path} changed after it was verified: run `vggexport verify --model {path}` again", None
    verdicts = [v for v in entry.get("runtimes", []) if isinstance(v, dict)]
    failed = [str(v.get("runtime")) for v in verdicts if v.get("passed") is not True]
    if entry.get("passed") is not True or failed or not verdicts:
        where = f" on {', '.join(failed)}" if failed else ""
        return (f"{path} failed verification{where} (see {path.parent / PARITY}); "
                f"fix the export and verify it again"), None
    own = [v for v in verdicts if family(str(v.get("runtime", ""))) == runs_on]
    if own:
        return real_data_status(path, own)
    if runs_on != "cuda":
        return (f"{path} was verified on CUDA only; its CPU results were never compared: "
                f"run `vggexport verify --model {path}`"), None
    return (f"{path} was verified on the CPU only; its CUDA results were never compared: "
            f"run `vggexport verify --model {path} --device cuda` on a GPU"), None


def real_data_status(path: Path, verdicts: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """Refused unless every one of ``verdicts`` compared real images; a warning when on a subset only."""
    for verdict in verdicts:
        real, runtime = verdict.get("real_data", {}), verdict.get("runtime")
        if not isinstance(real, dict) or not real.get("checked"):
            return (f"{path} was verified on random inputs only on {runtime}: "
                    f"run `vggexport verify --model {path}` with real data"), None
    partial = [f"{v['real_data'].get('samples')} real samples only on {v.get('runtime')}"
               for v in verdicts if not v["real_data"].get("complete")]
    if partial:
        return None, f"{path} was verified on {' and '.join(partial)}, not the whole test set"
    return None, None


def require_verified(source: Path | ArtifactBytes, *, allow_unverified: bool = False,
                     runs_on: str = "cpu", record: dict[str, Any] | None = None) -> ArtifactBytes:
    """The file's bytes, read once, when parity.json passed those very bytes; else a one-line error
    (``allow_unverified`` turns it into a warning and still hands the bytes back).

    Load or copy what this returns, never the path again: a file swapped after the check would ship unchecked.
    ``runs_on``: the runtime family the bytes will run on, ``cpu`` or ``cuda`` (resolve ``auto`` first:
    ``vggexport.backend.onnxrt.resolve_provider``); the gate judges by that runtime's verdict.
    ``record``: judge this parsed record (the signed one) instead of reading parity.json.
    """
    if runs_on not in FAMILIES:
        raise ValueError(f"runs_on must be one of {FAMILIES}, not {runs_on!r}")  # a caller's bug, not a user's
    if not isinstance(source, ArtifactBytes) and not Path(source).is_file():
        raise VggExportError(f"no ONNX model at {source}: run `vggexport export` first")
    artifact = artifact_of(source)
    try:
        problem, warning = verification_status(artifact, runs_on, record)
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
