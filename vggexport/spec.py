"""One spec drives both export and verification (HF Optimum's OnnxConfig is the model).

Names, the dynamic batch axis, the opset and the tolerances are decided here once;
the exporters write what the spec says and the verifier checks against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vggexport.errors import VggExportError

# torch.onnx's dynamo exporter emits opset 18 natively and converts to newer ones.
SUPPORTED_OPSETS = range(18, 24)


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
    batch_sizes: tuple[int, ...] = (1, 7, 64)
    min_top1_agreement: float = 1.0  # on real data; random inputs have near-ties, so they are judged by atol/rtol

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise VggExportError(
                f"unsupported opset {self.opset}: choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}"
            )
        if min(self.atol, self.rtol, self.cuda_atol, self.cuda_rtol) < 0:
            raise VggExportError("tolerances must be >= 0")

    def tolerances(self, *providers: str) -> tuple[float, float]:
        """(atol, rtol) for a comparison between these providers: looser when any side runs on CUDA."""
        if any("cuda" in p.lower() for p in providers):
            return self.cuda_atol, self.cuda_rtol
        return self.atol, self.rtol
