"""torchvision's ImageNet VGGs as vggexport models: ``vggexport import`` and fine-tuning's ``--init``.

torchvision's module names are ours (vggexport/model.py), so its state_dicts load
unchanged into a VGG with 3 input channels, a 4096-wide head and 224 x 224 inputs (the
features are then 7 x 7, which torchvision's AdaptiveAvgPool2d((7, 7)) keeps as they are).
Labels and the evaluation preprocessing come from torchvision's weights metadata, which
ships inside torchvision: nothing is downloaded unless ``--weights DEFAULT`` asks for it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vggexport.store import paths
from vggexport.errors import VggExportError, first_line
from vggexport.model import VGG, ModelConfig, build_model
from vggexport.names import DEPTHS, torchvision_name

SOURCE_PREFIX = "torchvision:"
DEFAULT_WEIGHTS = "DEFAULT"
TORCHVISION_MODELS = {torchvision_name(cfg, bn): (cfg, bn) for cfg in DEPTHS for bn in (False, True)}
TORCHVISION_HEAD = 4096
TORCHVISION_DROPOUT = 0.5
LAST_LAYER = "classifier.6."  # the 1000-way ImageNet layer that fine-tuning replaces


@dataclass(frozen=True)
class TorchvisionSource:
    """``torchvision:vgg16_bn``: which builder, and its weights' metadata."""

    model: str
    cfg: str
    batch_norm: bool

    @classmethod
    def parse(cls, source: str) -> TorchvisionSource:
        model = source.removeprefix(SOURCE_PREFIX)
        if not source.startswith(SOURCE_PREFIX) or model not in TORCHVISION_MODELS:
            raise VggExportError(f"unknown model {source!r}: choose torchvision:NAME with NAME one of "
                                 f"{', '.join(TORCHVISION_MODELS)}")
        return cls(model, *TORCHVISION_MODELS[model])

    def weights(self) -> Any:
        """torchvision's ImageNet weights entry (``VGG16_BN_Weights.IMAGENET1K_V1``): metadata, no download."""
        from torchvision.models import get_model_weights

        return get_model_weights(self.model).IMAGENET1K_V1

    def model_config(self, name: str | None = None) -> ModelConfig:
        """The ModelConfig of torchvision's model: its labels and its evaluation transform recorded."""
        weights = self.weights()
        transform = weights.transforms()
        interpolation = getattr(transform.interpolation, "value", str(transform.interpolation))
        try:
            return ModelConfig(
                cfg=self.cfg, batch_norm=self.batch_norm, in_channels=3, num_classes=len(weights.meta["categories"]),
                image_size=transform.crop_size[0], head=TORCHVISION_HEAD, dropout=TORCHVISION_DROPOUT, width=1.0,
                mean=tuple(transform.mean), std=tuple(transform.std),
                class_names=tuple(weights.meta["categories"]), dataset="imagenet",
                flip_average=False,  # torchvision's outputs, not the paper's test-time flip
                model_name=name or self.model, resize_size=transform.resize_size[0], interpolation=interpolation,
            )
        except ValueError as exc:
            raise VggExportError(str(exc)) from None


def read_state_dict(weights: str | os.PathLike[str], source: TorchvisionSource) -> dict[str, torch.Tensor]:
    """A state_dict as torchvision distributes it (a ``.pth``), loaded with ``weights_only``."""
    if str(weights) == DEFAULT_WEIGHTS:
        return download_state_dict(source)
    path = Path(weights)
    if not path.is_file():
        raise VggExportError(f"no weights file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise VggExportError(f"{path} is not a state_dict: it pickles objects other than tensors, which "
                             f"weights_only loading refuses to run") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, TypeError,
            ImportError) as exc:
        reason = first_line(exc, 80)
        raise VggExportError(f"{path} is truncated or not a PyTorch file ({reason})") from None
    return checked_state_dict(state, str(path))


def download_state_dict(source: TorchvisionSource) -> dict[str, torch.Tensor]:
    from vggexport.data.root import download_allowed

    if not download_allowed():
        raise VggExportError(f"--weights {DEFAULT_WEIGHTS} downloads {source.model}'s weights, but downloads are "
                             f"off (VGGEXPORT_OFFLINE); pass --weights FILE")
    try:
        state = source.weights().get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib, hash and unpickling errors all mean "no weights"
        reason = first_line(exc, 120)
        raise VggExportError(f"could not download {source.model}'s weights ({reason}); pass --weights FILE") from None
    return checked_state_dict(state, f"torchvision's {source.model} weights")


def checked_state_dict(state: Any, origin: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VggExportError(f"{origin} is not a state_dict (a dict of tensors, as torch.save(model.state_dict()) "
                             f"writes)")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise VggExportError(f"{origin}: {key} holds NaN or infinity")
    return dict(state)


def load_weights(model: VGG, state: dict[str, torch.Tensor], origin: str, source: TorchvisionSource, *,
                 skip: str | None = None) -> None:
    """Copy ``state`` into ``model``, refusing any key or shape that is not torchvision's ``source.model``.

    ``skip``: a key prefix taken from neither side (the layer fine-tuning replaces).
    """
    expected = {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}
    given = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    # torchvision's own files predate batch norm's step counter; load_state_dict fills it in, as for torchvision.
    missing = [k for k in expected if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in given and given[k].shape != v.shape]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + wrong[:2]
    if problems:
        other = identify(state, skip)
        hint = f" (they are {other}'s: use torchvision:{other})" if other and other != source.model else ""
        raise VggExportError(f"{origin} does not hold torchvision's {source.model} weights{hint}: "
                             f"{'; '.join(problems)}")
    model.load_state_dict(given, strict=skip is None)


def identify(state: dict[str, torch.Tensor], skip: str | None = None) -> str | None:
    """Which of torchvision's VGGs ``state`` is (names and shapes), built on the meta device: no memory, no time."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not (skip and k.startswith(skip))}
    for name, (cfg, batch_norm) in TORCHVISION_MODELS.items():
        with torch.device("meta"):
            model = build_model(ModelConfig(cfg=cfg, batch_norm=batch_norm, in_channels=3, num_classes=1000,
                                            image_size=224, head=TORCHVISION_HEAD, mean=(0.0,) * 3, std=(1.0,) * 3))
        if shapes == {k: tuple(v.shape) for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}:
            return name
    return None


def import_torchvision(source_name: str, weights: str | os.PathLike[str], *, name: str | None = None,
                       artifacts: str | os.PathLike[str] = paths.DEFAULT_ARTIFACTS) -> Path:
    """Write ``<artifacts>/<name>/best.pt`` from torchvision's weights; every check runs before anything is written."""
    from vggexport.checkpoint import save_checkpoint
    from vggexport.store.fileio import ensure_writable_dir
    from vggexport.store.manifest import environment, update_manifest

    source = TorchvisionSource.parse(source_name)
    config = source.model_config(name)
    state = read_state_dict(weights, source)
    model = build_model(config)
    load_weights(model, state, str(weights), source)
    folder = ensure_writable_dir(paths.model_dir(artifacts, config.name))
    origin = {"source": f"{SOURCE_PREFIX}{source.model}", "weights": str(weights)}
    written = save_checkpoint(folder / paths.BEST, model_config=config,
                              state={"model": model.state_dict(), "metrics": {}, "imported": origin})
    update_manifest(folder, [written], model_config=config.to_dict(), imported=origin, environment=environment())
    return written
