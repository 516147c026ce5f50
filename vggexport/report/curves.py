"""Training curves from metrics.jsonl, each number labelled with the split it was measured on.

Records carry ``<split>_<metric>`` keys (``train_loss``, ``test_accuracy``, ``val_loss`` ...). A record may
also carry a ``split`` marker: a name for unprefixed ``loss``/``accuracy`` keys, or a mapping from key
prefixes to descriptions. Whatever splits exist are drawn; none is assumed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from vggexport.report.figures import curves_figure
from vggexport.report.html import Section, esc, figure, note, table

SPLIT_KEY = re.compile(r"^(?P<split>[a-z][a-z0-9]*)_(?P<metric>loss|accuracy)$")
DESCRIPTIONS = {
    "train": "training images, averaged over each epoch while training (augmentation and dropout on)",
    "val": "validation images held out of training; model selection uses it",
    "validation": "validation images held out of training; model selection uses it",
    "test": "the test split, in eval mode",
}
Series = dict[str, dict[str, list[tuple[float, float]]]]


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_series(records: list[dict[str, Any]]) -> tuple[Series, dict[str, str], str]:
    """({metric: {split: [(x, y)]}}, {split: description}, x-axis name)."""
    x_key = "epoch" if all(finite(r.get("epoch")) for r in records) else "step"
    series: Series = {}
    described: dict[str, str] = {}
    for position, record in enumerate(records, start=1):
        x = record.get(x_key) if finite(record.get(x_key)) else position
        marker = record.get("split")
        if isinstance(marker, dict):
            described.update({str(k): str(v) for k, v in marker.items()})
        for key, value in record.items():
            match = SPLIT_KEY.match(key)
            if match and finite(value):
                split, metric = match["split"], match["metric"]
            elif key in ("loss", "accuracy") and isinstance(marker, str) and finite(value):
                split, metric = marker, key
            else:
                continue
            series.setdefault(metric, {}).setdefault(split, []).append((float(x), float(value)))
    return series, described, x_key


def curves_section(records: list[dict[str, Any]], problem: str | None) -> Section:
    title = "Training curves"
    if problem:
        return Section("curves", title, note(problem))
    series, described, x_key = split_series(records)
    if not series:
        return Section("curves", title, note("metrics.jsonl holds no loss or accuracy numbers to draw."))
    splits = sorted({s for per_split in series.values() for s in per_split})
    legend = table(["split", "where its numbers come from"],
                   [(s, described.get(s) or DESCRIPTIONS.get(s, "as recorded in metrics.jsonl")) for s in splits])
    last = records[-1]
    final_rows = [(metric, split, f"{points[-1][1]:.4f}", f"{x_key} {points[-1][0]:g}")
                  for metric, per_split in series.items() for split, points in per_split.items()]
    body = (figure(curves_figure(series, x_key), "training curves by split",
                   f"{len(records)} records from metrics.jsonl; every line is labelled with its split")
            + "<h3>Splits</h3>" + legend
            + "<h3>Last recorded values</h3>" + table(["metric", "split", "value", "at"], final_rows, numeric=[2])
            + extra_note(last))
    return Section("curves", title, body)


def extra_note(last: dict[str, Any]) -> str:
    known = [k for k in ("lr", "images_per_second", "elapsed_s") if finite(last.get(k))]
    if not known:
        return ""
    parts = ", ".join(f"{k} {last[k]:.4g}" for k in known)
    return f'<p class="muted">Last record also has: {esc(parts)}.</p>'
