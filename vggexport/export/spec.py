"""One spec drives both export and verification (HF Optimum's OnnxConfig is the model).

Names, the dynamic batch axis, the opset and the tolerances are decided here once;
the exporters write what the spec says and the verifier checks against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vggexport.errors import VggExportError

# torch.onnx's dynamo exporter emits opset 18 natively and converts to newer ones.
SUPPORTED_OPSETS = range(18, 24)
# cuDNN refuses tensors of 2**31 elements or more (CUDNN_STATUS_NOT_SUPPORTED); a real-data batch is
# sized so that its largest activation stays far below that on any device (1 GiB of fp32).
MAX_ACTIVATION_ELEMENTS = 2**28


@dataclass(frozen=True)
class AccuracyCriterion:
    """How a reduced-precision variant is judged: by accuracy on real data, not elementwise."""

    name: str
    max_accuracy_drop: float  # fraction: 0.003 is 0.3 points
    min_top1_agreement: float
    # The median over samples of ||candidate - reference|| / ||reference|| (logits): accuracy alone would
    # pass a variant whose logits are scaled (argmax unchanged, probabilities wrong), and scaling moves
    # every sample, while a genuine variant errs on a few. Measured on the default Fashion-MNIST model
    # (0.938): fp16 median 5e-5 (max 0.009), int8 median 0.0017 (p99 0.06, max 0.2) on real images;
    # int8 up to 0.77 on a lone random normal tensor, far outside its calibration range, so random checks
    # only catch gross faults there (negated logits give 2.0); the real-data bound catches a x2 scale (1.0).
    max_relative_error_real: float = 0.05
    max_relative_error_random: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.max_accuracy_drop <= 1 and 0 <= self.min_top1_agreement <= 1):
            raise VggExportError(f"{self.name} accuracy criteria must be fractions between 0 and 1")


@dataclass(frozen=True)
class ExportSpec:
    input_name: str = "input"
    output_name: str = "logits"
    batch_axis: str = "batch"
    opset: int = 18
    atol: float = 1e-4
    rtol: float = 1e-3
    # cuDNN and ORT's CUDA kernels pick other fp32 conv algorithms (Winograd, FFT) than the CPU:
    # on a full-width VGG-11 at 224x224 they differ from CPU fp32 by up to ~2e-3 (measured on an H200).
    cuda_atol: float = 5e-3
    cuda_rtol: float = 1e-2
    # The largest difference as a fraction of the reference's own range (max - min over the whole check).
    # atol/rtol alone are scale-blind: on a model whose logits are ~1e-4 atol passes a 1.5x copy, and
    # cosine and top-1 never see a scale. A copy scaled by 1.01 errs by >= 0.5 % of the range (1 % for
    # one-signed outputs such as log-probabilities), one offset by 1 % of the range by exactly 1 %. Faithful
    # exports stay far below: ORT CPU 5e-7 of the range on the default model, ORT CUDA on the H200 ~1e-4.
    range_tol: float = 1e-3
    cuda_range_tol: float = 2e-3
    batch_sizes: tuple[int, ...] = (1, 7, 64)
    # More batch sizes, in one check: a server or Triton forms every size up to its max batch.
    mixed_batch_sizes: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 13)
    min_top1_agreement: float = 1.0  # on real data; random inputs have near-ties, so they are judged by atol/rtol
    variants: dict[str, AccuracyCriterion] = field(default_factory=lambda: {
        "fp16": AccuracyCriterion("fp16", max_accuracy_drop=0.001, min_top1_agreement=0.998,
                                  max_relative_error_real=0.005, max_relative_error_random=0.02),
        "int8": AccuracyCriterion("int8", max_accuracy_drop=0.003, min_top1_agreement=0.99,
                                  max_relative_error_real=0.05, max_relative_error_random=1.0),
    })

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise VggExportError(
                f"unsupported opset {self.opset}: choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}"
            )
        if min(self.atol, self.rtol, self.cuda_atol, self.cuda_rtol, self.range_tol, self.cuda_range_tol) < 0:
            raise VggExportError("tolerances must be >= 0")

    def criterion(self, precision: str) -> AccuracyCriterion | None:
        """None for fp32 (elementwise tolerances); the accuracy criterion for a reduced-precision variant."""
        if precision == "fp32":
            return None
        if precision not in self.variants:
            raise VggExportError(f"unknown precision {precision!r} in the model's metadata")
        return self.variants[precision]

    def real_batch_size(self, *, image_size: int, width: float, views: int, limit: int = 500) -> int:
        """Images per real-data batch whose first activation (64 * width channels) fits MAX_ACTIVATION_ELEMENTS."""
        per_image = views * max(1, round(64 * width)) * image_size * image_size
        return max(1, min(limit, MAX_ACTIVATION_ELEMENTS // per_image))

    def tolerances(self, *providers: str) -> tuple[float, float, float]:
        """(atol, rtol, range_tol) between these providers: looser when any side runs on CUDA."""
        if any("cuda" in p.lower() for p in providers):
            return self.cuda_atol, self.cuda_rtol, self.cuda_range_tol
        return self.atol, self.rtol, self.range_tol
