"""Training output a person reads: a progress bar, one line per epoch, metrics.jsonl, curves.png."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vggexport.console import console
from vggexport.model import ModelConfig
from vggexport.store.fileio import write_atomic, write_text_atomic


@contextmanager
def epoch_progress(total_steps: int, epoch: int, epochs: int, show: bool = True) -> Iterator[Progress]:
    columns = (
        TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not show) as progress:
        progress.add_task("train", total=total_steps, loss=float("nan"), acc=0.0, ips=0.0)
        yield progress


def run_line(mc: ModelConfig, dataset: str, device: str, precision: str, *, epochs: int, steps: int, batch: int,
             processes: int, held_out: int) -> str:
    """What this run trains, on what, and how long: printed once, before the first epoch."""
    ddp = f", {processes} processes (DDP)" if processes > 1 else ""
    val = f", {held_out} training images held out for validation" if held_out else ""
    return (f"training {mc.name} (width {mc.width}, head {mc.head}) on {dataset} at "
            f"{mc.image_size}x{mc.image_size}, {device}, precision {precision}, "
            f"{epochs} epochs x {steps} steps, batch {batch}{ddp}{val}"
            f"{', predictions flip-averaged' if mc.flip_average else ''}")


def epoch_line(record: dict[str, Any]) -> str:
    """One epoch: training numbers, and validation numbers where a split is held out (never the test set)."""
    val = (f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}  "
           if "val_accuracy" in record else "")
    partial = " (stopped mid-epoch)" if record.get("partial") else ""
    return (
        f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
        f"{val}{record['images_per_second']:.0f} img/s  {record['elapsed_s']:.0f}s{partial}"
    )


def shipped_line(record: dict[str, Any]) -> str:
    chosen = (f"picked on the validation split at epoch {record['selected_epoch']}"
              if record["selected_on"] == "val" else "the final model")
    return (f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} on "
            f"{record['test_samples']} images, scored once for the shipped model ({chosen})")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the whole file atomically, so a resumed run never duplicates or truncates lines."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def plot_curves(path: Path, records: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r.get("record", "epoch") == "epoch"]
    tests = [r for r in records if r.get("record") == "test"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        x = [r["epoch"] for r in epochs]
        ax.plot(x, [r[f"train_{metric}"] for r in epochs], "o-", label="train")
        if any(f"val_{metric}" in r for r in epochs):
            ax.plot(x, [r.get(f"val_{metric}", float("nan")) for r in epochs], "o-", label="validation")
        for r in tests:
            ax.plot([r["epoch"]], [r[f"test_{metric}"]], "*", markersize=12, label="test (shipped model, once)")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
