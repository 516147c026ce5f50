"""Choice lists and names the CLI and the server need before anything heavy is imported.

Torch-free: ``--help`` stays instant and the serving process never loads torch.
"""

import re

CFG_NAMES = ("A", "B", "D", "E")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("torchscript", "torchscript-cuda", "torch-export", "torch-export-cuda", "onnxruntime-cpu", "onnxruntime-cuda")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
PROVIDERS = ("auto", "cuda", "cpu")
RECIPES = ("default", "fast")

DEPTHS = {"A": 11, "B": 13, "D": 16, "E": 19}


def torchvision_name(cfg: str, batch_norm: bool) -> str:
    """``vgg11``, ``vgg11_bn``, ... ``vgg19_bn``: torchvision's builder names (torch-free, for the server)."""
    return f"vgg{DEPTHS[cfg]}{'_bn' if batch_norm else ''}"

# A model name is a folder name, a URL path segment and a Triton model name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (start with a letter "
                         f"or digit, at most 100 characters)")
    return name
