"""``vggexport.train``: the training entry points (the parts live in ``vggexport.training``)."""

from vggexport.training.config import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, TrainConfig
from vggexport.training.trainer import Trainer, TrainResult, train

__all__ = ["DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "TrainConfig", "TrainResult", "Trainer", "train"]
