"""The package's layering, written down once: which part may import which.

Each part is a top-level module, a stage's folder, or (where one folder holds parts of different weight) a
module of it: ``backend.onnxrt`` may be loaded by the torch-free server, ``backend.pytorch`` may not. Every
part may import ``errors`` and ``names`` (the base, which imports nothing of the package) and itself.
``tests/test_layers.py`` walks the import graph with ``ast`` (function-local and ``TYPE_CHECKING`` imports
included) and fails on a cycle, on an import this table does not allow, and on torch, torchvision or
matplotlib anywhere under the torch-free parts.
"""

from __future__ import annotations

BASE = frozenset({"errors", "names"})
ANYTHING = frozenset({"*"})

MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "names": frozenset(),
    "layers": frozenset(),
    "console": frozenset(),  # rich only: the one console every command prints through
    # the artifact folder: paths, atomic I/O, manifest, parity.json, ONNX files read, model.sig signed and
    # checked (store.signing, store.signature: model-signing imported inside functions, so serve may load them)
    "store": frozenset(),
    "transforms": frozenset(),
    "hardware": frozenset(),
    "model": frozenset(),
    "checkpoint": frozenset({"model", "store"}),
    "data": frozenset({"store", "transforms", "console"}),
    "pretrained": frozenset({"model", "checkpoint", "data", "store"}),
    "training": frozenset({"model", "checkpoint", "data", "transforms", "hardware", "pretrained", "store",
                           "console"}),
    "export": frozenset({"model", "checkpoint", "data", "transforms", "store", "console"}),
    "backend": frozenset(),  # the folder's __init__: a docstring, so loading backend.onnxrt loads nothing else
    "backend.base": frozenset({"store"}),
    "backend.cuda_libs": frozenset(),
    "backend.onnxrt": frozenset({"backend.base", "backend.cuda_libs", "store"}),
    "backend.pytorch": frozenset({"backend.base", "export", "model", "checkpoint", "hardware", "store"}),
    "backend.registry": frozenset({"backend.base", "backend.onnxrt", "backend.pytorch", "store"}),
    "verify": frozenset({"backend.base", "backend.onnxrt", "backend.pytorch", "backend.registry", "export", "data",
                         "model", "checkpoint", "transforms", "hardware", "store", "console"}),
    "report": frozenset({"verify", "backend.base", "backend.onnxrt", "backend.pytorch", "backend.registry", "data",
                         "model", "checkpoint", "transforms", "hardware", "store"}),
    "serve.config_message": frozenset(),  # Triton's ModelConfig builder: below serve and deploy
    "serve": frozenset({"serve.config_message", "backend.base", "backend.onnxrt", "backend.cuda_libs", "store"}),
    "deploy": frozenset({"serve.config_message", "store"}),
    "pipeline": ANYTHING,
    "cli": ANYTHING,
    "__main__": frozenset({"cli"}),
    "": frozenset(),  # the package's own __init__ (its version)
}

# The parts the serving process loads: nothing under them may import these, however indirectly.
TORCH_FREE = ("serve", "store", "backend.base", "backend.onnxrt", "backend.cuda_libs", "deploy")
HEAVY = frozenset({"torch", "torchvision", "matplotlib"})


def part_of(module: str) -> str:
    """The table's part for a dotted module name below ``vggexport`` (``serve.batcher`` -> ``serve``)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in MAY_IMPORT:
            return name
    return module if module in MAY_IMPORT else parts[0]


def allowed(importer: str, imported: str) -> bool:
    """May module ``importer`` import module ``imported`` (both dotted, below ``vggexport``)?"""
    source, target = part_of(importer), part_of(imported)
    if target in BASE or target == source or target == "":
        return True
    rules = MAY_IMPORT.get(source, frozenset())
    return rules is ANYTHING or target in rules
