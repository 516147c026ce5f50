"""The verified-only gate: which bytes a server may load, read once and checked before any session sees them.

``refuse`` (the CLI's default) serves only bytes that parity.json passed on the runtime they will run on;
``warn`` (``--allow-unverified``) serves others with a warning; ``off`` is an embedder's own call. With a
public key (``--require-signature``) the bytes must first be the ones ``model.sig`` signs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vggexport.backend.onnxrt import resolve_provider
from vggexport.errors import VggExportError
from vggexport.store.fileio import ArtifactBytes
from vggexport.store.manifest import read_checked

# refuse: serve only what parity.json passed (the CLI); warn: --allow-unverified; off: an embedder's own call.
GATES = ("refuse", "warn", "off")


class GateSettings(Protocol):
    """What the gate reads of a server's configuration (``ServeConfig`` has all three). Read-only members, as
    properties: a frozen dataclass matches them, and the gate never sets them."""

    @property
    def gate(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def require_signature(self) -> str | None: ...


def gated_bytes(path: Path | ArtifactBytes, config: GateSettings) -> ArtifactBytes:
    """The file's bytes, read once; with the gate on, only when parity.json passed those very bytes on the
    runtime they will run on (``--provider auto`` resolved first: CUDA only where a GPU is present).
    With ``require_signature`` the signature is checked first, on the bytes then gated and loaded."""
    if config.require_signature:
        return signed_bytes(path, config)
    if config.gate == "off":
        return read_checked(path, f"no ONNX model at {path}: run `vggexport onnx` first")
    from vggexport.store.parity_record import require_verified

    return require_verified(path, allow_unverified=config.gate == "warn", runs_on=resolve_provider(config.provider))


def signed_bytes(path: Path | ArtifactBytes, config: GateSettings) -> ArtifactBytes:
    """Read once, checked against model.sig, then the gate of ``config.gate`` on those same bytes, judged by
    the signed parity record itself (parity.json is not read again: a swap after the signed read is moot)."""
    from vggexport.store.fileio import artifact_of
    from vggexport.store.manifest import check_artifact
    from vggexport.store.parity_record import require_verified
    from vggexport.store.signature import require_signed

    if not isinstance(path, ArtifactBytes) and not Path(path).is_file():
        raise VggExportError(f"no ONNX model at {path}: run `vggexport onnx` first")
    artifact = artifact_of(path)
    record = require_signed(artifact, config.require_signature or "")
    if config.gate == "off":
        check_artifact(artifact)
        return artifact
    return require_verified(artifact, allow_unverified=config.gate == "warn",
                            runs_on=resolve_provider(config.provider), record=record)
