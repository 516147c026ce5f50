"""Training output a person reads: a progress bar, one line per epoch, metrics.jsonl, curves.png."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vggexport.store.fileio import write_atomic, write_text_atomic

# Logs and CI have no terminal width; 132 columns keeps the parity table readable there.
console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 132)


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


def print_parity(report: Any) -> None:
    """One table: a row per file, runtime and check, failures in red, then the verdict."""
    from rich.table import Table

    table = Table(title=f"parity of {report.model} against PyTorch eager fp32", show_lines=False)
    # The runtime's name says cpu or cuda; the provider behind it is in parity.json.
    columns = ("file", "runtime", "check", "max abs", "of range", "p99 abs", "max rel", "min cos", "top-1",
               "accuracy", "ok")
    for column in columns:
        left = column in ("file", "runtime", "check")
        table.add_column(column, justify="left" if left else "right", no_wrap=column != "ok")
    for result in report.runtimes:
        name = result.artifact or "(reference)"
        if result.error:
            table.add_row(name, result.runtime, "-", *[""] * (len(columns) - 4), f"[red]{escape(result.error)}[/red]")
        for check, cmp in result.checks.items():
            accuracy = "" if cmp.accuracy is None else f"{cmp.accuracy:.4f}"
            failed = any(f.startswith(f"[{check}]") for f in result.failures)
            table.add_row(name, result.runtime, check, f"{cmp.max_abs:.2e}", f"{cmp.range_error:.1e}",
                          f"{cmp.diff_percentiles()['p99_abs']:.2e}", f"{cmp.max_rel:.2e}", f"{cmp.min_cosine:.6f}",
                          f"{cmp.top1_agreement:.2%}", accuracy, "[red]FAIL[/red]" if failed else "[green]ok[/green]")
    console.print(table)
    print_kept_verdicts(report)
    console.print("[green]parity: all runtimes agree[/green]" if report.passed else
                  f"[red]parity FAILED[/red]\n{escape(report.summary())}")


def print_kept_verdicts(report: Any) -> None:
    """The verdicts parity.json keeps from earlier runs on other runtimes, for the same bytes of the files
    this run verified: the serving gate reads them too (a failed CUDA verdict refuses a CUDA deployment)."""
    from vggexport.errors import VggExportError
    from vggexport.store.parity_record import read_record

    ran = {(r.artifact, r.runtime) for r in report.runtimes if r.artifact}
    for parity in getattr(report, "records", []):
        try:
            files = read_record(Path(parity).parent).get("files", {})
        except VggExportError:
            continue  # verify just wrote it; one it cannot read back has nothing to add
        for name in sorted({artifact for artifact, _ in ran} & set(files)):
            for kept in files[name].get("runtimes", []):
                if (name, kept.get("runtime")) in ran:
                    continue
                reference = kept.get("reference", {})
                verdict = "[green]pass[/green]" if kept.get("passed") else "[red]FAIL[/red]"
                console.print(f"kept from an earlier run: {escape(name)} on {escape(str(kept.get('runtime')))} "
                              f"({escape(str(kept.get('provider')))}, against {escape(str(reference.get('runtime')))} "
                              f"{escape(str(reference.get('provider')))}, {kept.get('verified_at')}): {verdict}")


def escape(text: str) -> str:
    """Failure messages quote file contents: rich must not read their brackets as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)
