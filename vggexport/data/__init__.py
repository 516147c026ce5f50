"""Datasets as whole uint8 tensors: ``load_dataset`` and one module per source."""

from vggexport.data.load import load_dataset

__all__ = ["load_dataset"]
