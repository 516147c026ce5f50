"""Choice lists the CLI needs before anything heavy is imported (``--help`` stays instant)."""

CFG_NAMES = ("A", "B", "D", "E")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("torchscript", "torchscript-cuda", "torch-export", "torch-export-cuda", "onnxruntime-cpu", "onnxruntime-cuda")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
PROVIDERS = ("auto", "cuda", "cpu")
RECIPES = ("default", "fast")
