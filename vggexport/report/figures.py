"""Figures as base64 PNG data URIs (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

SPLIT_COLOURS = {"train": "#8a94a6", "val": "#e07b00", "validation": "#e07b00", "test": "#2f5bd3"}


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig: Any, dpi: int = 100) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return png_uri(buffer.getvalue())


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def curves_figure(series: dict[str, dict[str, list[tuple[float, float]]]], x_label: str) -> str:
    """One panel per metric (loss, accuracy, ...), one line per split, labelled with the split."""
    metrics = list(series)
    fig = new_figure(4.6 * len(metrics), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        for split, points in series[metric].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", label=split, color=SPLIT_COLOURS.get(split), markersize=4, linewidth=1.8)
        ax.set(title=metric, xlabel=x_label)
        ax.grid(alpha=0.3)
        ax.legend(title="split", fontsize=9)
    return figure_uri(fig)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """Row-normalised colours (recall per true class), raw counts written in the cells when they fit."""
    n = len(class_names)
    side = min(9.0, max(4.5, 0.55 * n))
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if n <= 30:
        ticks = np.arange(n)
        ax.set_xticks(ticks, [str(c) for c in class_names], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, [str(c) for c in class_names], fontsize=8)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "#1d2330")
    ax.set(xlabel="predicted class", ylabel="true class")
    return figure_uri(fig)


def throughput_figure(labels: Sequence[str], values: Sequence[float], batch: int) -> str:
    fig = new_figure(7.5, 0.45 * len(labels) + 1.2)
    ax = fig.subplots()
    positions = np.arange(len(labels))
    ax.barh(positions, values, color="#2f5bd3")
    ax.set_yticks(positions, labels, fontsize=9)
    ax.invert_yaxis()
    ax.set(xlabel=f"images per second at batch {batch}")
    ax.grid(axis="x", alpha=0.3)
    for y, value in zip(positions, values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    return figure_uri(fig)


def thumbnail_uri(pixels: np.ndarray, size: int = 96) -> str:
    """(H, W, C) uint8 -> PNG; small images stay at native size (CSS enlarges them pixelated)."""
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())
