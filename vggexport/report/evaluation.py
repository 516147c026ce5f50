"""The test split through the checkpoint's PyTorch model: confusion matrix, per-class accuracy, worst mistakes.

Thumbnails are the preprocessed input mapped back to pixels (x * std + mean), i.e. exactly what the
model saw, not the file on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vggexport.backend.base import softmax
from vggexport.checkpoint import Checkpoint
from vggexport.errors import VggExportError


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test split
    true: int
    predicted: int
    confidence: float  # probability of the predicted class
    true_probability: float
    pixels: np.ndarray  # (H, W, C) uint8, what the model saw


@dataclass
class Evaluation:
    class_names: list[str]
    confusion: np.ndarray  # [true, predicted] counts
    source: str
    mistakes: list[Mistake] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / max(1, self.samples)

    def per_class(self) -> list[tuple[str, int, int, float | None]]:
        """(class, correct, support, accuracy or None when the class has no test image)."""
        rows = []
        for i, name in enumerate(self.class_names):
            support = int(self.confusion[i].sum())
            correct = int(self.confusion[i, i])
            rows.append((name, correct, support, correct / support if support else None))
        return rows

    def confused_pairs(self, limit: int = 8) -> list[tuple[str, str, int]]:
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None)[:limit]
        pairs = [np.unravel_index(i, off.shape) for i in order]
        return [(self.class_names[t], self.class_names[p], int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def class_names_of(ckpt: Checkpoint) -> list[str]:
    config = ckpt.model_config
    return list(config.class_names) or [str(i) for i in range(config.num_classes)]


def to_pixels(batch: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Normalised (N, C, H, W) float32 -> (N, H, W, C) uint8."""
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    unit = np.clip(batch * std_a + mean_a, 0.0, 1.0)
    return np.round(unit * 255).astype(np.uint8).transpose(0, 2, 3, 1)



def test_split(ckpt: Checkpoint, data_dir: str | None, samples: int | None,
               batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The test split the model was trained against, preprocessed as training evaluated it, batch by batch."""
    import torch

    from vggexport.data.dataset import announce
    from vggexport.data.load import load_dataset
    from vggexport.transforms import preprocess

    config = ckpt.model_config
    # By default the data the model was trained on, as `verify` does: no --data-dir to repeat.
    root = data_dir or (ckpt.payload.get("train_config") or {}).get("data_dir")
    data = load_dataset(config.dataset, root, image_size=config.image_size, channels=config.in_channels)
    announce(data, "test split")
    images, labels = data.test_images[:samples], data.test_labels[:samples].numpy()
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            x = preprocess(images[start : start + batch_size], image_size=config.image_size, mean=config.mean,
                           std=config.std)
        yield x.numpy(), labels[start : start + batch_size].astype(np.int64)


def evaluate_test_set(ckpt: Checkpoint, *, data_dir: str | None, samples: int | None, keep_mistakes: int,
                      device: str = "cpu", batch_size: int = 256) -> Evaluation:
    from vggexport.backend.pytorch import TorchRunner

    config = ckpt.model_config
    names = class_names_of(ckpt)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    mistakes: list[Mistake] = []
    offset = 0
    with TorchRunner(ckpt.build_model("cpu"), device=device) as runner:
        for batch, truth in test_split(ckpt, data_dir, samples, batch_size):
            if truth.min(initial=0) < 0 or truth.max(initial=0) >= len(names):
                raise VggExportError(f"the {config.dataset} test split has labels outside the model's "
                                     f"{len(names)} classes")
            probabilities = softmax(runner.infer(batch))
            predicted = probabilities.argmax(axis=1)
            np.add.at(confusion, (truth, predicted), 1)
            mistakes = worst_mistakes(mistakes, batch, truth, predicted, probabilities, offset, keep_mistakes,
                                      config.mean, config.std)
            offset += len(batch)
    if offset == 0:
        raise VggExportError(f"the {config.dataset} test split is empty")
    source = (f"PyTorch eager fp32 on {device}, from {ckpt.path.name}, "
              f"{offset} images of the {config.dataset} test split")
    return Evaluation(names, confusion, source, mistakes)


def worst_mistakes(kept: list[Mistake], batch: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
                   probabilities: np.ndarray, offset: int, limit: int, mean: Any, std: Any) -> list[Mistake]:
    """The ``limit`` most confident wrong answers so far; pixels are converted only for those kept."""
    if limit <= 0:
        return []
    wrong = np.flatnonzero(predicted != truth)
    confidence = probabilities[wrong, predicted[wrong]]
    floor = kept[-1].confidence if len(kept) >= limit else -1.0
    chosen = [i for i, c in zip(wrong, confidence) if c > floor]
    chosen = sorted(chosen, key=lambda i: -probabilities[i, predicted[i]])[:limit]
    if not chosen:
        return kept
    pixels = to_pixels(batch[chosen], mean, std)
    new = [Mistake(offset + int(i), int(truth[i]), int(predicted[i]), float(probabilities[i, predicted[i]]),
                   float(probabilities[i, truth[i]]), pixels[k]) for k, i in enumerate(chosen)]
    return sorted(kept + new, key=lambda m: -m.confidence)[:limit]
