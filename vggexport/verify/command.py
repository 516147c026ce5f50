"""``vggexport verify``: every artifact file against its checkpoint, numerically and by its metadata.

Which runtime runs a file follows from the file (.onnx on ONNX Runtime, .torchscript.pt on TorchScript,
.pt2 on torch.export; CUDA too where present); a uint8-input file (the preprocessing variant) is fed
the same real images as raw pixels; a reduced-precision variant is judged by accuracy, not elementwise.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.store import paths
from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError, first_line
from vggexport.store.fileio import ArtifactBytes, read_artifact
from vggexport.verify.metadata import check_file_metadata, check_torchscript_config
from vggexport.names import ONNX_PRECISIONS
from vggexport.verify.precision import precision_problems
from vggexport.backend.registry import artifact_kind, make_runner, runtimes_for
from vggexport.export.spec import ExportSpec
from vggexport.verify.run import (
    Candidate,
    Check,
    FailureSaver,
    ParityReport,
    array_batches,
    random_inputs,
    run_parity,
)
from vggexport.verify.inputs import mixed_batches, random_pixel_batches, real_checks

DEFAULT_FILES = (paths.ONNX, paths.ONNX_PREPROCESSING, paths.ONNX_FP16, paths.ONNX_INT8, paths.TORCHSCRIPT,
                 paths.EXPORTED_PROGRAM)


class UsageError(VggExportError):
    """verify's exit code 2: a usage error or missing data (1 is reserved for parity/metadata failures)."""

    exit_code = 2


@dataclass(frozen=True)
class VerifyOptions:
    models: tuple[str, ...] = ()  # files to verify; empty: every artifact in the model folder
    runtimes: tuple[str, ...] = ()  # restrict to these runtimes; empty: every one available here
    data_dir: str | None = None
    samples: int | None = None
    random_only: bool = False
    device: str = "cpu"  # where the PyTorch fp32 reference runs
    report: str | None = None  # an extra copy of this run's report
    save_failures: str | None = None
    seed: int | None = None  # of the random inputs; None: drawn per run, so no graph can recognise them


@dataclass
class Inspected:
    """What verify reads from a file before running it: its bytes, read once, are also what every runtime loads."""

    artifact: ArtifactBytes
    kind: str
    metadata: dict[str, str]
    takes_pixels: bool = False
    problems: tuple[str, ...] = ()  # metadata mismatches; the file fails with them
    error: str | None = None  # unreadable: the file fails with this

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    @property
    def precision(self) -> str:
        return self.metadata.get("precision", "fp32")


def artifact_files(folder: Path, models: Sequence[str], random_only: bool) -> list[Path]:
    if models:
        files = [Path(m) for m in models]
        for path in files:
            if not path.is_file():
                raise UsageError(f"no file at {path}")
            if artifact_kind(path) is None:
                raise UsageError(f"cannot tell how to run {path}: expected .onnx, .torchscript.pt or .pt2")
        return files
    files = [folder / name for name in DEFAULT_FILES if (folder / name).is_file()]
    if random_only:  # variants are judged by accuracy on real data: without it they cannot be verified
        files = [f for f in files if f.name not in (paths.ONNX_FP16, paths.ONNX_INT8)]
    if not files:
        raise UsageError(f"nothing to verify in {folder}: run `vggexport export` first (or pass --model FILE)")
    return files


def read_extra_files(artifact: ArtifactBytes) -> dict[str, str]:
    """TorchScript and .pt2 files are zip archives with their extra files under <root>/extra/."""
    try:
        with zipfile.ZipFile(io.BytesIO(artifact.data)) as archive:
            return {name.rsplit("/extra/", 1)[1]: archive.read(name).decode("utf-8")
                    for name in archive.namelist() if "/extra/" in name}
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, KeyError) as exc:
        raise VggExportError(f"{artifact.path} is not a readable archive ({type(exc).__name__})") from None


def read_onnx(artifact: ArtifactBytes, spec: ExportSpec) -> tuple[dict[str, str], bool, list[str]]:
    """(metadata, takes uint8 pixels, problems) of an ONNX file's bytes, before anything runs them."""
    import onnx

    from vggexport.store.onnx_file import parse_onnx

    proto = parse_onnx(artifact)
    graph = proto.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    takes_pixels = len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    keys = [p.key for p in proto.metadata_props]
    metadata = {p.key: p.value for p in proto.metadata_props}
    problems = [f"[file] metadata key {k!r} appears {keys.count(k)} times" for k in sorted(set(keys))
                if keys.count(k) > 1]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        # Its weights would live in another file, which neither the recorded sha256 nor the manifest covers.
        problems.append("[file] weights stored outside the .onnx file (external data): vggexport exports one file")
    problems += interface_problems(graph, spec, takes_pixels)
    problems += precision_problems(proto, metadata.get("precision", "fp32"))
    return metadata, takes_pixels, problems


def interface_problems(graph: Any, spec: ExportSpec, takes_pixels: bool) -> list[str]:
    """One input named as the spec says; the spec's output first (the preprocessing graph adds its view)."""
    from vggexport.export.metadata import MODEL_VIEW

    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    outputs = [o.name for o in graph.output]
    allowed = [spec.output_name, MODEL_VIEW] if takes_pixels else [spec.output_name]
    problems = []
    if inputs != [spec.input_name]:
        problems.append(f"[file] inputs are {inputs}, expected [{spec.input_name!r}]")
    if not outputs or outputs[0] != spec.output_name or not set(outputs) <= set(allowed):
        problems.append(f"[file] outputs are {outputs}, expected {allowed}")
    return problems


def inspect(path: Path, ckpt: Checkpoint, spec: ExportSpec) -> Inspected:
    """Read ``path`` once; its metadata and graph are judged from those bytes, which the runtimes then load."""
    from vggexport.store.manifest import check_artifact

    try:
        artifact = read_artifact(path)
    except VggExportError as exc:  # unreadable: verify cannot judge it at all
        raise UsageError(str(exc)) from None
    kind = artifact_kind(path) or ""
    found = Inspected(artifact, kind, {})
    try:
        check_artifact(artifact)
        if kind == "onnx":
            found.metadata, found.takes_pixels, problems = read_onnx(artifact, spec)
            problems += check_file_metadata(found.metadata, ckpt, takes_pixels=found.takes_pixels,
                                            known_precisions=ONNX_PRECISIONS)
        else:
            extra = read_extra_files(artifact)
            metadata = json.loads(extra.get("metadata.json") or "{}")
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise VggExportError(f"{path}'s metadata.json is not an object of strings")
            found.metadata = metadata
            problems = check_file_metadata(found.metadata, ckpt, takes_pixels=False, known_precisions=("fp32",))
            problems += check_torchscript_config(extra.get("model_config.json", ""), ckpt)
        found.problems = tuple(problems)
    except (VggExportError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        found.error = first_line(exc)
    return found


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_checks(ckpt: Checkpoint, spec: ExportSpec, options: VerifyOptions, need_pixels: bool,
                 seed: int) -> dict[str, Check]:
    config = ckpt.model_config
    shape = (config.in_channels, config.image_size, config.image_size)
    randoms = random_inputs(shape, spec.batch_sizes, seed)
    checks = {k: Check(array_batches(v, None, len(v))) for k, v in randoms.items()}
    checks["random-mixed"] = Check(mixed_batches(shape, spec.mixed_batch_sizes, seed + 1))
    if need_pixels:
        checks["random-pixels"] = Check(random_pixel_batches(config, seed + 2), has_pixels=True)
    if not options.random_only:
        checks.update(real_checks(ckpt, options.data_dir, options.samples, spec, need_pixels))
    return checks


def candidates_for(found: Inspected, spec: ExportSpec, options: VerifyOptions, cuda: bool) -> list[Candidate]:
    runtimes = runtimes_for(found.kind, cuda=cuda)
    if options.runtimes:
        runtimes = [r for r in runtimes_for(found.kind, cuda=True) if r in options.runtimes]
    criterion = spec.criterion(found.precision) if found.precision in spec.variants else None
    failures = list(found.problems) + ([f"[file] {found.error}"] if found.error else [])
    return [Candidate(make_runner(runtime, found.artifact), takes_pixels=found.takes_pixels, criterion=criterion,
                      artifact=found.path.name, sha256=found.sha256, precision=found.precision,
                      extra_failures=failures) for runtime in runtimes]


def load_reference_checkpoint(checkpoint: Path) -> Checkpoint:
    from vggexport.checkpoint import load_checkpoint

    try:
        return load_checkpoint(checkpoint)
    except VggExportError as exc:
        raise UsageError(str(exc)) from None


def verify(checkpoint: Path, folder: Path, spec: ExportSpec, options: VerifyOptions) -> ParityReport:
    """Verify ``options.models`` (default: every artifact in ``folder``) against ``checkpoint``.

    Parity and metadata failures are in the report (exit 1); anything that stops verify from
    judging at all (no checkpoint, no data, a file that is not an artifact) raises UsageError (exit 2).
    """
    from vggexport.store.parity_record import write_parity
    from vggexport.backend.pytorch import TorchRunner

    ckpt = load_reference_checkpoint(checkpoint)
    files = artifact_files(folder, options.models, options.random_only)
    inspected = [inspect(path, ckpt, spec) for path in files]
    if options.random_only and any(f.precision != "fp32" for f in inspected):
        raise UsageError("fp16 and int8 variants are judged by accuracy on real data: drop --random-only")
    cuda = cuda_available()
    per_file = [(found, candidates_for(found, spec, options, cuda)) for found in inspected]
    inspected = [found for found, runs in per_file if runs]  # --runtimes may leave a file with none
    candidates = [c for _, runs in per_file for c in runs]
    if not candidates:
        raise UsageError(f"no runtime among {', '.join(options.runtimes)} runs "
                         f"{', '.join(f.path.name for f in inspected)}")
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "little")
    checks = build_checks(ckpt, spec, options, need_pixels=any(f.takes_pixels for f in inspected), seed=seed)
    saver = FailureSaver(Path(options.save_failures)) if options.save_failures else None
    reference = TorchRunner(ckpt.build_model("cpu"), device=options.device)
    report = run_parity(reference, candidates, checks, spec, model=ckpt.model_config.name, saver=saver)
    report.random_seed, report.real_complete = seed, options.samples is None and not options.random_only
    if saver is not None:
        saver.write()
    report.parity_files = write_parity(report, [(f.path, f.kind, f.takes_pixels, f.sha256) for f in inspected],
                                   ckpt.path, ckpt.sha256())
    if options.report:
        report.write(options.report)
    return report
