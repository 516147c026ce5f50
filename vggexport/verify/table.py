"""What ``vggexport verify`` prints: the parity table, the verdicts kept from earlier runs, and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggexport.console import console, escape
from vggexport.errors import VggExportError
from vggexport.store.parity_record import read_parity


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
    ran = {(r.artifact, r.runtime) for r in report.runtimes if r.artifact}
    for parity in getattr(report, "parity_files", []):
        try:
            files = read_parity(Path(parity).parent).get("files", {})
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
