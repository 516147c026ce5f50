"""The model card and the provenance section: what the model is, how it was made, on what, from which files."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

from vggexport.checkpoint import Checkpoint
from vggexport.store.manifest import versions
from vggexport.model import CFGS
from vggexport.report.html import Section, esc, key_values, note, table

DEPTH = {"A": 11, "B": 13, "D": 16, "E": 19}
RECIPE_KEYS = ("optimizer", "lr", "weight_decay", "epochs", "batch_size", "max_steps", "label_smoothing", "warmup",
               "crop_padding", "erase", "precision", "device", "seed", "compile", "deterministic")


def count_parameters(ckpt: Checkpoint) -> int:
    model = ckpt.build_model("cpu")
    return sum(p.numel() for p in model.parameters())


def architecture(ckpt: Checkpoint) -> str:
    config = ckpt.model_config
    widths = [max(1, round(int(c) * config.width)) for c in CFGS[config.cfg] if c != "M"]
    norm = "with batch norm" if config.batch_norm else "without batch norm"
    return (f"VGG-{DEPTH.get(config.cfg, '?')} (config {config.cfg}) {norm}; conv widths "
            f"{'-'.join(map(str, widths))} (x{config.width:g}); classifier {config.head}-{config.head}-"
            f"{config.num_classes}, dropout {config.dropout:g}")


def training_time(records: list[dict[str, Any]]) -> str:
    seconds = sum(r.get("train_seconds", 0) or 0 for r in records)
    wall = records[-1].get("elapsed_s") if records else None
    if not seconds and not wall:
        return ""
    parts = [f"{seconds:.0f} s in training steps"] if seconds else []
    if wall:
        parts.append(f"{wall:.0f} s wall clock including evaluation")
    return ", ".join(parts)


def recorded_accuracy(saved: dict[str, Any], precision: str | None) -> str:
    found = ", ".join(f"{k} {v:.4f}" for k, v in saved.items() if isinstance(v, float) and "accuracy" in k)
    # Training evaluates at its own precision; this report evaluates in fp32, so the last digit may differ.
    return f"{found} (evaluated in {precision})" if found and precision else found


def saved_at(ckpt: Checkpoint) -> str:
    """best.pt records the epoch and step its weights come from as selected_*: its "step" is where the run
    ended, later than the weights when they were picked on the validation split; last.pt records epoch and step."""
    payload = ckpt.payload
    epoch = payload.get("selected_epoch", payload.get("epoch"))
    step = payload.get("selected_step", payload.get("step"))
    where = [f"epoch {epoch}" if isinstance(epoch, int) and epoch > 0 else "",
             f"step {step}" if isinstance(step, int) and step > 0 else ""]
    when = ", ".join(w for w in where if w)
    return f"{ckpt.path.name}, saved after {when}" if when else ckpt.path.name


def card_section(ckpt: Checkpoint, manifest: dict[str, Any], records: list[dict[str, Any]],
                 parameters: int, test_accuracy: float | None) -> Section:
    config, payload = ckpt.model_config, ckpt.payload
    recipe = payload.get("train_config") or manifest.get("train_config") or {}
    environment = manifest.get("environment") or {}
    dataset = manifest.get("dataset") or {}
    classes = ", ".join(config.class_names) if config.class_names else f"{config.num_classes} (unnamed)"
    saved = payload.get("metrics") or {}
    rows = [
        ("Model", config.name),
        ("Architecture", architecture(ckpt)),
        ("Parameters", f"{parameters:,} ({parameters * 4 / 2**20:.2f} MiB as fp32)"),
        ("Input", f"{config.in_channels} x {config.image_size} x {config.image_size}, normalised with mean "
                  f"{list(config.mean)} and std {list(config.std)}"),
        ("Classes", classes),
        ("Test-time flip average", "on" if config.flip_average else "off"),
        ("Dataset", dataset.get("name") or config.dataset),
        ("Checkpoint", saved_at(ckpt)),
        ("Accuracy recorded in training", recorded_accuracy(saved, payload.get("precision"))),
        ("Test accuracy measured by this report (fp32)",
         f"{test_accuracy:.4f}" if test_accuracy is not None else ""),
        ("Training time", training_time(records)),
        ("Trained on", manifest.get("device", "")),
        ("Training precision", payload.get("precision") or manifest.get("precision", "")),
        ("Machine", ", ".join(str(environment[k]) for k in ("platform", "machine", "python") if k in environment)),
    ]
    recipe_rows = [(k, recipe[k]) for k in RECIPE_KEYS if recipe.get(k) is not None]
    rest = [(k, v) for k, v in sorted(recipe.items()) if k not in RECIPE_KEYS and v is not None]
    body = key_values(rows) + "<h3>Training recipe</h3>"
    body += key_values(recipe_rows) if recipe_rows else note("The checkpoint records no training options.")
    if rest:
        body += f"<details><summary>All {len(rest)} other training options</summary>{key_values(rest)}</details>"
    return Section("card", "Model card", body)


def provenance_section(ckpt: Checkpoint, manifest: dict[str, Any], problem: str | None) -> Section:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"<p>Report made {esc(now)} from the files and manifest in this model's folder.</p>"
    if problem:
        body += note(problem)
    artifacts = manifest.get("artifacts") or {}
    if artifacts:
        extra_versions = any(isinstance(e.get("versions"), dict) for e in artifacts.values())
        rows = []
        for name, entry in sorted(artifacts.items()):
            own = entry.get("versions") if isinstance(entry.get("versions"), dict) else {}
            row = [name, f"{entry.get('size', 0):,}", f'<span class="mono">{esc(entry.get("sha256", ""))}</span>']
            rows.append(row + ([", ".join(f"{k} {v}" for k, v in sorted(own.items()))] if extra_versions else []))
        headers = ["artifact", "bytes", "sha256"] + (["made with"] if extra_versions else [])
        body += "<h3>Artifacts (sha256 from manifest.json)</h3>" + table(headers, rows, numeric=[1], raw=[2])
    elif not problem:
        body += note("No manifest.json in the model folder: no recorded checksums to show.")
    dataset_files = (manifest.get("dataset") or {}).get("files") or {}
    if dataset_files:
        body += "<h3>Dataset files</h3>" + table(
            ["file", "sha256"], [(n, f'<span class="mono">{esc(s)}</span>') for n, s in sorted(dataset_files.items())],
            raw=[1])
    recorded = manifest.get("versions") or {}
    current = versions()
    names = sorted(set(recorded) | set(current))
    body += "<h3>Versions</h3>" + table(["package", "recorded in the manifest", "making this report"],
                                        [(n, recorded.get(n, ""), current.get(n, "")) for n in names])
    body += f'<p class="muted">Checkpoint sha256 <span class="mono">{esc(ckpt.sha256())}</span></p>'
    return Section("provenance", "Provenance", body + signature_part(ckpt.path.parent, manifest))


def signature_part(folder: Path, manifest: dict[str, Any]) -> str:
    """Who signed what, as `vggexport sign` recorded it in manifest.json (unsigned itself: the check is
    `vggexport verify-signature`, with the public key, which this report does not have)."""
    recorded = manifest.get("signature")
    bundle = folder / "model.sig"
    if not isinstance(recorded, dict):
        return "<h3>Signature</h3>" + note("model.sig is present but was not made by `vggexport sign`."
                                           if bundle.is_file() else "Not signed (see docs/signing.md).")
    current = hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.is_file() else None
    listed = recorded.get("files")  # manifest.json is unsigned: any shape may be found there
    files = [str(f) for f in listed] if isinstance(listed, list) else []
    rows = [("Bundle", f"{bundle.name} (OpenSSF model signing, sha256 of each file)"),
            ("Key fingerprint (sha256 of the public key's DER)", str(recorded.get("key_fingerprint", ""))),
            ("Signed files", ", ".join(files))]
    body = "<h3>Signature</h3>" + key_values(rows)
    if current != recorded.get("sha256"):
        body += note("model.sig has changed or gone since it was signed: check it with "
                     "`vggexport verify-signature PUBLIC_KEY.pem`.")
    return body
