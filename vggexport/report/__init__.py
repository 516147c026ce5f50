"""``vggexport report``: one self-contained HTML file about a trained, exported and verified model.

Each missing piece (no metrics, no parity.json, no test data) becomes a note in its section; only a
missing or unreadable checkpoint stops the report, since every section describes that model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.store import paths
from vggexport.checkpoint import load_checkpoint
from vggexport.errors import VggExportError
from vggexport.store.fileio import write_text_atomic
from vggexport.store.manifest import read_manifest, update_manifest


@dataclass(frozen=True)
class ReportConfig:
    folder: Path  # <artifacts>/<name>/
    checkpoint: str | None = None  # default: <folder>/best.pt
    data_dir: str | None = None
    samples: int | None = None  # test images to evaluate; None: the whole test split
    mistakes: int = 24
    bench: bool = True
    bench_seconds: float = 1.0
    device: str = "cpu"
    out: str | None = None  # default: <folder>/report.html

    def __post_init__(self) -> None:
        if not math.isfinite(self.bench_seconds) or not 0 < self.bench_seconds <= 60:
            raise VggExportError(f"--bench-seconds must be a number of seconds in (0, 60], got {self.bench_seconds}")
        if self.samples is not None and self.samples < 1:
            raise VggExportError(f"--samples must be at least 1, got {self.samples}")
        if self.mistakes < 0:
            raise VggExportError(f"--mistakes must be 0 or more, got {self.mistakes}")

    @property
    def target(self) -> Path:
        return Path(self.out) if self.out else Path(self.folder) / paths.REPORT


def read_json_file(path: Path, what: str) -> tuple[Any, str | None]:
    """(data, None), or (None, a sentence for the report saying what is missing or broken)."""
    if not path.is_file():
        return None, f"No {path.name}: {what}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is unreadable ({type(exc).__name__}); {what}"


def read_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    if not path.is_file():
        return [], "No metrics.jsonl: the model was not trained by `vggexport train`, or its metrics were removed."
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            return records, f"metrics.jsonl line {number} is not JSON; curves stop before it."
        if isinstance(record, dict):
            records.append(record)
    return records, None if records else "metrics.jsonl is empty."


def safe_manifest(folder: Path) -> tuple[dict[str, Any], str | None]:
    try:
        return read_manifest(folder), None
    except VggExportError as exc:
        return {}, str(exc)


def recorded_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    entries = manifest.get("artifacts") or {}
    return {name: e["sha256"] for name, e in entries.items() if isinstance(e, dict) and e.get("sha256")}


def build_report(config: ReportConfig) -> Path:
    """Evaluate, measure and write ``report.html``; returns its path."""
    from vggexport.hardware import resolve_device
    from vggexport.report import bench, card, curves, parity_table, testset
    from vggexport.report.evaluation import evaluate_test_set
    from vggexport.report.html import page

    folder = Path(config.folder)
    ckpt = load_checkpoint(config.checkpoint or folder / paths.BEST)
    device = str(resolve_device(config.device))  # --device cuda without CUDA is the user's error, not a note
    manifest, manifest_problem = safe_manifest(folder)
    records, metrics_problem = read_records(folder / paths.METRICS)
    parity, parity_problem = read_json_file(folder / paths.PARITY, "not verified; run `vggexport verify`.")
    if parity is not None and not isinstance(parity, dict):
        parity, parity_problem = None, f"{paths.PARITY} is not a JSON object; not shown."
    evaluation, eval_problem = None, None
    try:
        evaluation = evaluate_test_set(ckpt, data_dir=config.data_dir, samples=config.samples,
                                       keep_mistakes=config.mistakes, device=device)
    except VggExportError as exc:
        eval_problem = f"No test-set evaluation: {exc}"
    timings = bench.measure(folder, ckpt, config.bench_seconds) if config.bench else None
    parameters = card.count_parameters(ckpt)
    sections = [
        card.card_section(ckpt, manifest, records, parameters, evaluation.accuracy if evaluation else None),
        curves.curves_section(records, metrics_problem),
        testset.confusion_section(evaluation, eval_problem),
        testset.per_class_section(evaluation, eval_problem),
        testset.mistakes_section(evaluation, eval_problem),
        parity_table.parity_section(parity, parity_problem, recorded_hashes(manifest)),
        bench.speed_section(timings, config.bench_seconds),
        card.provenance_section(ckpt, manifest, manifest_problem),
    ]
    name = ckpt.model_config.name
    tiles = summary_tiles(evaluation, parameters, parity, timings)
    html = page(f"{name} model report", f"{ckpt.model_config.dataset}, from {folder}", tiles, sections,
                "Made by vggexport report. Self-contained: no external resources.")
    target = write_text_atomic(config.target, html)
    if target.resolve().parent == folder.resolve():
        update_manifest(folder, [target])
    return target


def summary_tiles(evaluation: Any, parameters: int, parity: dict[str, Any] | None,
                  timings: Any) -> list[tuple[str, str]]:
    from vggexport.report.parity_table import verdict_of

    tiles = [("parameters", f"{parameters / 1e6:.2f} M" if parameters >= 1e5 else f"{parameters:,}")]
    if evaluation is not None:
        tiles.insert(0, ("test accuracy", f"{evaluation.accuracy:.2%}"))
    tiles.append(("parity", (verdict_of(parity) or "unknown") if parity else "not verified"))
    fastest = max((t for t in timings or [] if t.images_per_second and t.batch == 64),
                  key=lambda t: t.images_per_second or 0.0, default=None)
    if fastest is not None:
        tiles.append((f"img/s at batch 64 ({fastest.runtime})", f"{fastest.images_per_second:,.0f}"))
    return tiles
