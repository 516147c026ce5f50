"""Training: config and recipes, batches, evaluation, checkpoints, the schedule and time budget, the loop."""

from vggexport.training.config import TrainConfig
from vggexport.training.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]
