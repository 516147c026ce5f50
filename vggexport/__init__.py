"""vggexport: train, export, verify and serve VGG image classifiers."""

__version__ = "0.1.0"
