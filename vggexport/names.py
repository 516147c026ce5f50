"""Choice lists the CLI needs before anything heavy is imported (``--help`` stays instant)."""

CFG_NAMES = ("A", "B", "D", "E")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("torchscript", "torchscript-cuda", "onnxruntime-cpu", "onnxruntime-cuda")
PROVIDERS = ("auto", "cuda", "cpu")
