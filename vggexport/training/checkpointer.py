"""What a run leaves on disk, written by rank 0 alone and always atomically.

- ``last.pt``: the whole training state at the last epoch end or stop, for an exact ``--resume``.
- ``best.pt``: the shipped model (the final one, or the one picked on the validation split) with its one
  test-set score; export reads it.
- ``metrics.jsonl``, ``curves.png`` and the manifest, each number named for the split it comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggexport.store import paths
from vggexport.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vggexport.errors import VggExportError
from vggexport.store.manifest import environment, update_manifest
from vggexport.model import ModelConfig
from vggexport.training.progress import plot_curves, read_metrics, write_metrics

# Fields that change no weight: a resumed run may take new values for them.
INFERENCE_ONLY_FIELDS = ("class_names", "flip_average")


def check_resumable(ckpt: Checkpoint, model_config: ModelConfig) -> None:
    wanted = model_config.to_dict()
    diff = {k: (v, wanted[k]) for k, v in ckpt.model_config.to_dict().items()
            if v != wanted[k] and k not in INFERENCE_ONLY_FIELDS}
    if diff:
        raise VggExportError(f"cannot resume {ckpt.path}: it was trained with a different model ({diff})")


class Checkpointer:
    def __init__(self, out_dir: Path, model_config: ModelConfig, *, is_main: bool = True,
                 run_info: dict[str, Any] | None = None) -> None:
        self.out_dir, self.model_config, self.is_main = out_dir, model_config, is_main
        self.run_info = run_info or {}  # train_config, device, precision, dataset: for the manifest

    @property
    def last(self) -> Path:
        return self.out_dir / paths.LAST

    @property
    def best(self) -> Path:
        return self.out_dir / paths.BEST

    def load_last(self, map_location: Any) -> Checkpoint:
        ckpt = load_checkpoint(self.last, map_location=map_location)
        check_resumable(ckpt, self.model_config)
        return ckpt

    def read_records(self, up_to_step: int) -> list[dict[str, Any]]:
        """The epochs a resumed run keeps: completed ones up to its step (a stop's partial epoch and the
        stop's test score are measured again)."""
        return [r for r in read_metrics(self.out_dir / paths.METRICS)
                if r.get("record", "epoch") == "epoch" and not r.get("partial") and r["step"] <= up_to_step]

    def save_state(self, state: dict[str, Any]) -> None:
        if self.is_main:
            save_checkpoint(self.last, model_config=self.model_config, state=state)

    def save_shipped(self, weights: dict[str, Any], metrics: dict[str, Any], selection: dict[str, Any]) -> None:
        """best.pt: the weights that ship, their test score (``metrics``) and how they were chosen."""
        if self.is_main:
            state = {"model": weights, "metrics": metrics, **selection, **self.run_info}
            save_checkpoint(self.best, model_config=self.model_config, state=state)

    def write_records(self, records: list[dict[str, Any]], title: str) -> None:
        if self.is_main:
            write_metrics(self.out_dir / paths.METRICS, records)
            plot_curves(self.out_dir / paths.CURVES, records, title)

    def write_sample(self, folder: Path, model: Any, optimizer: Any) -> None:
        """One checkpoint, metrics file and curves of the size this run writes, into ``folder`` (the budget
        times it)."""
        save_checkpoint(folder / "timing.pt", model_config=self.model_config,
                        state={"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        records = [{"record": "epoch", "epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}]
        write_metrics(folder / "metrics.jsonl", records)
        plot_curves(folder / "curves.png", records, "timing")

    def update_manifest(self, final: dict[str, Any], dataset: dict[str, Any]) -> None:
        if self.is_main:
            written = [p for p in (self.last, self.best, self.out_dir / paths.METRICS, self.out_dir / paths.CURVES)
                       if p.is_file()]
            update_manifest(self.out_dir, written, model_config=self.model_config.to_dict(),
                            final_metrics=final, dataset=dataset, environment=environment(),
                            **{k: v for k, v in self.run_info.items() if k in ("train_config", "device", "precision")})
