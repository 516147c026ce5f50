"""The parity table from parity.json, tolerant of its layout.

parity.json lists results per runtime (``runtimes``) and, in newer versions, per verified file
(``files``/``artifacts``, each with sha256, runtime, checks and a verdict); since ``vggexport.parity/3`` each
file keeps one verdict per runtime, each with its own reference and tolerances, shown on its rows. Whatever
entries it holds become rows; every model file in the manifest that no entry covers is shown as "not
verified", and a file whose sha256 differs from the one verified is shown as stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from vggexport.report.html import Section, badge, esc, note, table

ENTRY_LISTS = ("files", "artifacts", "results", "runtimes", "models")
FILE_KEYS = ("file", "path", "artifact", "model_file", "model")
METRICS = (("max_abs", "max abs", "{:.2e}"), ("range_error", "of range", "{:.1e}"), ("max_rel", "max rel", "{:.2e}"),
           ("p99_abs", "p99 abs", "{:.2e}"), ("min_cosine", "min cos", "{:.6f}"),
           ("top1_agreement", "top-1 agree", "{:.2%}"), ("accuracy", "accuracy", "{:.4f}"), ("samples", "n", "{:d}"))
MODEL_SUFFIXES = (".onnx", ".pt2", ".torchscript.pt")
RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".pt2": "torch-export", ".torchscript.pt": "torchscript"}


@dataclass(frozen=True)
class Row:
    file: str
    sha256: str
    runtime: str
    provider: str
    check: str
    metrics: dict[str, Any]
    verdict: str
    detail: str = ""
    reference: str = ""  # what this verdict was compared against, e.g. "pytorch cuda"
    limits: str = ""  # the tolerances it was judged by


def verdict_of(data: dict[str, Any]) -> str | None:
    verdict = data.get("verdict", data.get("status"))
    if isinstance(verdict, str):
        return verdict
    if isinstance(data.get("passed"), bool):
        return "pass" if data["passed"] else "FAIL"
    return None


def entries(data: Any, inherited: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Flatten nested lists/dicts of results; inner entries inherit the outer file, sha256 and runtime."""
    inherited = inherited or {}
    for key in ENTRY_LISTS:
        found = data.get(key) if isinstance(data, dict) else None
        if isinstance(found, dict):
            found = [{"file": name, **value} for name, value in found.items() if isinstance(value, dict)]
        if isinstance(found, list):
            for item in found:
                if not isinstance(item, dict):
                    continue
                merged = {**inherited, **item}
                inner = list(entries(item, merged))
                yield from inner or [merged]
            return


def file_of(entry: dict[str, Any]) -> str:
    for key in FILE_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value.rsplit("/", 1)[-1]
    return ""


def checks_of(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    checks = entry.get("checks")
    if isinstance(checks, dict):
        return [(str(k), v) for k, v in checks.items() if isinstance(v, dict)]
    if isinstance(checks, list):
        return [(str(c.get("name", c.get("check", i))), c) for i, c in enumerate(checks) if isinstance(c, dict)]
    return []


def problems_of(entry: dict[str, Any]) -> list[str]:
    failures = entry.get("failures") if isinstance(entry.get("failures"), list) else []
    return [str(x) for x in [entry.get("error"), *failures] if x]


def check_verdict(values: dict[str, Any], check: str, entry_verdict: str, problems: list[str]) -> str:
    explicit = verdict_of(values)
    if explicit and entry_verdict != "reference" and not entry_verdict.startswith("stale"):
        return explicit
    if problems and entry_verdict not in ("reference",) and not entry_verdict.startswith("stale"):
        # verify names the check a failure belongs to ("[real] ..."): only that check failed.
        return "FAIL" if any(p.startswith(f"[{check}]") for p in problems) else "pass"
    return entry_verdict


def all_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(entries(data))
    reference = data.get("reference")
    if isinstance(reference, dict) and not any(str(e.get("runtime", "")).startswith("pytorch") for e in found):
        found.insert(0, reference)
    return found


def parity_rows(data: dict[str, Any], recorded: dict[str, str]) -> list[Row]:
    rows = []
    for entry in all_entries(data):
        runtime = str(entry.get("runtime", ""))
        name = file_of(entry) or default_file(runtime)
        sha = str(entry.get("sha256") or "")
        verdict = "reference" if runtime.startswith("pytorch") else verdict_of(entry) or "unknown"
        if name and sha and recorded.get(name) and recorded[name] != sha:
            verdict = "stale: file changed since verify"
        problems = problems_of(entry)
        base = dict(file=name, sha256=sha, runtime=runtime, provider=str(entry.get("provider", "")),
                    reference=reference_of(entry), limits=limits_of(entry.get("tolerances")))
        checks = checks_of(entry)
        for check, values in checks:
            rows.append(Row(**base, check=check, metrics=values,
                            verdict=check_verdict(values, check, verdict, problems)))
        unattributed = [p for p in problems if not any(p.startswith(f"[{c}]") for c, _ in checks)]
        if not checks or unattributed:
            rows.append(Row(**base, check="whole file" if checks else "-", metrics={}, verdict=verdict,
                            detail="; ".join(unattributed)))
        if problems:
            rows[-1] = replace(rows[-1], detail="\n".join(problems))
    return rows


def reference_of(entry: dict[str, Any]) -> str:
    reference = entry.get("reference")
    if not isinstance(reference, dict):
        return ""
    return " ".join(str(reference[k]) for k in ("runtime", "provider") if reference.get(k))


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def limits_of(tolerances: Any) -> str:
    """"atol 0.0001, rtol 0.001", or a variant's accuracy criterion: what a verdict was judged by."""
    if not isinstance(tolerances, dict):
        return ""
    criterion = tolerances.get("criterion")
    if isinstance(criterion, dict):
        pairs = [("max accuracy drop", criterion.get("max_accuracy_drop")),
                 ("min top-1", criterion.get("min_top1_agreement"))]
    else:
        pairs = [(k, tolerances.get(k)) for k in ("atol", "rtol", "range_tol", "cuda_atol", "cuda_rtol")]
    return ", ".join(f"{k} {v:g}" for k, v in pairs if number(v))


def default_file(runtime: str) -> str:
    for prefix, name in (("onnxruntime", "model.onnx"), ("torchscript", "model.torchscript.pt"),
                         ("torch-export", "model.pt2"), ("pytorch", "best.pt")):
        if runtime.startswith(prefix):
            return name
    return ""


def model_files(recorded: dict[str, str]) -> list[str]:
    return sorted(name for name in recorded if name.endswith(MODEL_SUFFIXES))


def covered(name: str, rows: list[Row]) -> bool:
    return any(r.file == name for r in rows)


def format_metric(values: dict[str, Any], key: str, pattern: str) -> str:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return pattern.format(int(value)) if pattern == "{:d}" else pattern.format(value)


def parity_section(data: dict[str, Any] | None, problem: str | None, recorded: dict[str, str]) -> Section:
    title = "Parity of every artifact"
    rows = parity_rows(data, recorded) if data else []
    intro = ""
    if problem:
        intro = note(problem)
    elif data is not None:
        tolerance = limits_of(data.get("tolerances") if isinstance(data.get("tolerances"), dict) else data)
        limits = esc(f"({tolerance})") if tolerance else "(each verdict's reference and tolerances on its rows)"
        intro = (f"<p>Every runtime compared against PyTorch eager fp32 {limits}. "
                 f"Overall: {badge(verdict_of(data) or 'unknown')}</p>")
    unverified = [Row(name, recorded[name], RUNTIME_OF_SUFFIX[next(s for s in MODEL_SUFFIXES if name.endswith(s))],
                      "", "-", {}, "not verified") for name in model_files(recorded) if not covered(name, rows)]
    all_rows = rows + unverified
    if not all_rows:
        return Section("parity", title, intro + note("No exported artifact and no parity result: run "
                                                     "`vggexport export` then `vggexport verify`."))
    used = [(k, label, pattern) for k, label, pattern in METRICS if any(format_metric(r.metrics, k, pattern)
                                                                        for r in all_rows)]
    with_sha = any(r.sha256 for r in all_rows)
    with_reference, with_limits = any(r.reference for r in all_rows), any(r.limits for r in all_rows)
    headers = ["file", *(["sha256"] if with_sha else []), "runtime", "provider",
               *(["compared with"] if with_reference else []), *(["tolerances"] if with_limits else []),
               "check", "verdict", *[label for _, label, _ in used]]
    lines = []
    for row in all_rows:
        sha = f'<span class="mono" title="{esc(row.sha256)}">{esc(row.sha256[:12])}</span>' if row.sha256 else ""
        lines.append([row.file or "(runtime default)", *([sha] if with_sha else []), row.runtime, row.provider,
                      *([row.reference] if with_reference else []), *([row.limits] if with_limits else []),
                      row.check, badge(row.verdict), *[format_metric(row.metrics, k, p) for k, _, p in used]])
    first_metric = headers.index("verdict") + 1
    numeric = range(first_metric, first_metric + len(used))
    raw = [headers.index("verdict"), *([1] if with_sha else [])]
    return Section("parity", title, intro + table(headers, lines, numeric=numeric, raw=raw) + failure_list(all_rows))


def failure_list(rows: list[Row]) -> str:
    """Each entry's failures once, below the table, instead of repeated in every one of its rows."""
    items = [f"<li><b>{esc(r.file)}</b> on {esc(r.runtime)}: {esc(line[:400])}</li>"
             for r in rows if r.detail for line in r.detail.splitlines()]
    return f"<h3>Why</h3><ul>{''.join(items)}</ul>" if items else ""
