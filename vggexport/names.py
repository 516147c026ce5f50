"""Choice lists and names the CLI and the server need before anything heavy is imported.

Torch-free: ``--help`` stays instant and the serving process never loads torch.
"""

import re

CFG_NAMES = ("A", "B", "D", "E")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("torchscript", "torchscript-cuda", "torch-export", "torch-export-cuda", "onnxruntime-cpu",
            "onnxruntime-cuda")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
PROVIDERS = ("auto", "cuda", "cpu")
RECIPES = ("default", "fast")

DEPTHS = {"A": 11, "B": 13, "D": 16, "E": 19}


def torchvision_name(cfg: str, batch_norm: bool) -> str:
    """``vgg11``, ``vgg11_bn``, ... ``vgg19_bn``: torchvision's builder names (torch-free, for the server)."""
    return f"vgg{DEPTHS[cfg]}{'_bn' if batch_norm else ''}"


def model_folder_name(name: str | None, cfg: str, batch_norm: bool) -> str:
    """A model's folder and served name: the ``--name`` given, else torchvision's builder name (torch-free)."""
    return name or torchvision_name(cfg, batch_norm)

# A model name is a folder name, a URL path segment and a Triton model name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str) -> str:
    """``name`` if it is safe as a folder, a URL segment and a Triton model name; ValueError saying why if not."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (start with a letter "
                         f"or digit, no '..', at most 100 characters)")
    return name


# The one tensor-type table: (KServe v2 / Triton datatype, NumPy dtype name, ONNX TensorProto element type, ONNX
# Runtime's type string, the KServe gRPC InferTensorContents field; "": raw bytes only). Strings and ints only, so
# the CLI and the server read it without importing numpy.
TENSOR_TYPES: tuple[tuple[str, str, int, str, str], ...] = (
    ("FP32", "float32", 1, "tensor(float)", "fp32_contents"),
    ("UINT8", "uint8", 2, "tensor(uint8)", "uint_contents"),
    ("INT8", "int8", 3, "tensor(int8)", "int_contents"),
    ("UINT16", "uint16", 4, "tensor(uint16)", "uint_contents"),
    ("INT16", "int16", 5, "tensor(int16)", "int_contents"),
    ("INT32", "int32", 6, "tensor(int32)", "int_contents"),
    ("INT64", "int64", 7, "tensor(int64)", "int64_contents"),
    ("BYTES", "object", 8, "tensor(string)", "bytes_contents"),
    ("BOOL", "bool", 9, "tensor(bool)", "bool_contents"),
    ("FP16", "float16", 10, "tensor(float16)", ""),
    ("FP64", "float64", 11, "tensor(double)", "fp64_contents"),
    ("UINT32", "uint32", 12, "tensor(uint32)", "uint_contents"),
    ("UINT64", "uint64", 13, "tensor(uint64)", "uint64_contents"),
)
V2_TO_NUMPY = {v2: numpy for v2, numpy, _, _, _ in TENSOR_TYPES}
ONNX_ELEMENT_TO_V2 = {element: v2 for v2, _, element, _, _ in TENSOR_TYPES}
ORT_TO_V2 = {ort: v2 for v2, _, _, ort, _ in TENSOR_TYPES}
V2_TO_GRPC_CONTENTS = {v2: contents for v2, _, _, _, contents in TENSOR_TYPES if contents}
