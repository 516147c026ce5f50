"""Which weights ship: the best on validation so far (kept as a CPU copy), or else the final ones."""

from __future__ import annotations

from typing import Any

import torch


def cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy on the CPU: training goes on changing the model's own tensors."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Selection:
    """Keeps the candidate: its weights, its validation accuracy, and where in the run it was seen.

    The candidate is a plain dict, so the checkpoint carries it and a resumed run picks up where it was.
    """

    def __init__(self, candidate: dict[str, Any] | None = None) -> None:
        self.candidate = candidate

    def consider(self, record: dict[str, Any], model: torch.nn.Module, step: int) -> None:
        """Keep the model's weights if this epoch's validation accuracy beats the best so far."""
        if self.candidate is None or record["val_accuracy"] > self.candidate["val_accuracy"]:
            self.candidate = {"model": cpu_copy(model), "val_accuracy": record["val_accuracy"],
                              "epoch": record["epoch"], "step": step}

    def pick(self, model: torch.nn.Module, last_epoch: int, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(weights, how they were selected): the candidate if validation chose one, else the final model."""
        if self.candidate is not None:
            return self.candidate["model"], {"selected_on": "val", "selected_epoch": self.candidate["epoch"],
                                             "selected_step": self.candidate["step"]}
        return cpu_copy(model), {"selected_on": "final", "selected_epoch": last_epoch, "selected_step": step}
