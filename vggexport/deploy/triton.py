"""A Triton Inference Server model repository from a verified ONNX export.

Layout: ``<repository>/<name>/config.pbtxt``, ``<repository>/<name>/1/model.onnx``
and ``labels.txt``. config.pbtxt is a ``model_config_pb2.ModelConfig`` (tritonclient's
generated schema) printed by protobuf's ``text_format``, so every string is escaped
and every field exists. Inputs and outputs come from the ONNX graph itself; the
batch dimension is left out of ``dims`` (Triton adds it when max_batch_size > 0 and
refuses a model whose first dimension is not dynamic: triton-inference-server/server#7003).
``vggexport.serve.config_message`` builds the message, as it does for ``vggexport serve``'s model configuration
extension, so it imports neither torch nor onnx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggexport.errors import VggExportError
from vggexport.store.fileio import ArtifactBytes, ModelSource, write_dir_atomic
from vggexport.store.signature import SIGNATURE
from vggexport.names import check_model_name
from vggexport.serve.config_message import LABELS_FILE, ConfigFields, build_model_config

KINDS = ("gpu", "cpu")


@dataclass(frozen=True)
class TritonConfig:
    name: str | None = None  # None: the ONNX metadata's model_name (validated like any other)
    max_batch_size: int = 64
    instances: int = 1
    kind: str = "gpu"
    max_queue_delay_us: int = 100
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VggExportError(f"unknown instance kind {self.kind!r}: use gpu or cpu")
        if self.max_batch_size < 1 or self.instances < 1:
            raise VggExportError("--max-batch-size and --instances must be >= 1")
        if self.max_queue_delay_us < 0:
            raise VggExportError("--max-queue-delay-us must be >= 0")


def triton_model_name(name: str, source: str) -> str:
    """Triton names a folder after the model: the project's one model-name rule, said in Triton's terms."""
    try:
        return check_model_name(name)
    except ValueError:
        raise VggExportError(f"model name {name[:60]!r} from {source} is not a safe Triton model name "
                             "(letters, digits, _ . -; no path separators, no '..'); pass --name") from None


def check_labels(raw: str) -> list[str]:
    try:
        labels = json.loads(raw)
    except ValueError:
        labels = None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise VggExportError("the ONNX metadata's class_names is not a list of strings; re-export the model")
    if any("\n" in x or "\r" in x for x in labels):
        raise VggExportError("a class name contains a line break; labels.txt needs one label per line")
    return labels


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [s for s in (4, 8, 16, 32, 64, 128, 256) if s <= max_batch_size]
    return (sizes[-3:] if sizes else []) or [max_batch_size]


def model_config(name: str, onnx_path: ModelSource, meta: dict[str, str], config: TritonConfig) -> Any:
    """The ModelConfig message for this ONNX: only the first output (the logits) is declared."""
    from vggexport.store.onnx_file import graph_io

    inputs, outputs = graph_io(onnx_path)
    if len(inputs) != 1 or not outputs:
        raise VggExportError(f"{onnx_path} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and >= 1")
    for _, _, dims in (inputs[0], outputs[0]):
        if not dims or dims[0] != -1:
            raise VggExportError(f"{onnx_path} has no dynamic batch dimension; Triton batching needs one")
    return build_model_config(ConfigFields(
        name=name, inputs=inputs, outputs=outputs[:1], max_batch_size=config.max_batch_size, kind=config.kind,
        instances=config.instances, max_queue_delay_us=config.max_queue_delay_us,
        preferred_batch_sizes=tuple(preferred_batch_sizes(config.max_batch_size)), label_filename=LABELS_FILE,
        warmup_batch_sizes=(1,) if config.warmup else (), image_size=int(meta.get("image_size", "0") or 0)))


def config_pbtxt(name: str, onnx_path: ModelSource, meta: dict[str, str], config: TritonConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(name, onnx_path, meta, config))


def check_verified(artifact: ArtifactBytes, *, allow_unverified: bool = False, runs_on: str = "cpu",
                   record: dict[str, Any] | None = None) -> ArtifactBytes:
    """Only bytes that parity.json (or ``record``, the signed one) records as passed, with this very sha256,
    on ``runs_on``'s runtime (``cpu`` or ``cuda``), go into a repository."""
    from vggexport.store.parity_record import require_verified

    return require_verified(artifact, allow_unverified=allow_unverified, runs_on=runs_on, record=record)


def check_signing_options(allow_unverified: bool, require_signature: str | None, sign_key: str | None) -> None:
    """A signed entry vouches for its source: only a source whose own signature was checked, never one
    the gate was told to let through, may be re-signed (else --sign-key launders forged or unverified bytes)."""
    if sign_key and allow_unverified:
        raise VggExportError("--sign-key cannot sign an entry written with --allow-unverified: verify the model")
    if sign_key and not require_signature:
        raise VggExportError("--sign-key needs --require-signature PUB.pem: only a signed source is re-signed")


def write_repository(onnx_path: Path, repository: Path, config: TritonConfig, *, allow_unverified: bool = False,
                     require_signature: str | None = None, sign_key: str | None = None) -> Path:
    """Write ``<repository>/<name>/`` for ``onnx_path`` (model.onnx or a precision/preprocessing variant).

    The file is read once: the bytes whose sha256 the gate checked are the ones described in config.pbtxt
    and written to model.onnx (a second read of the path could copy a file swapped in after the check).
    ``require_signature`` (a public key PEM): those bytes must be the ones the source folder's model.sig
    signs. ``sign_key`` (a private key PEM): the written entry's three files are signed into its model.sig.
    """
    from vggexport.store.onnx_file import read_onnx_artifact, read_onnx_metadata

    check_signing_options(allow_unverified, require_signature, sign_key)
    artifact = read_onnx_artifact(onnx_path)  # the one read: checked, described and written from these bytes
    record = None
    if require_signature:
        from vggexport.store.signature import require_signed

        record = require_signed(artifact, require_signature)  # the signed verdict: the one the gate judges
    meta = read_onnx_metadata(artifact)
    # Triton's KIND_GPU runs ONNX Runtime's CUDA provider, KIND_CPU its CPU one: the gate judges by that runtime.
    check_verified(artifact, allow_unverified=allow_unverified, runs_on="cuda" if config.kind == "gpu" else "cpu",
                   record=record)
    # An empty --name is a name, and refused as one: only None means "the model's own".
    name = triton_model_name(config.name, "--name") if config.name is not None else triton_model_name(
        meta["model_name"], f"{artifact.path.name}'s metadata")
    labels = check_labels(meta["class_names"])
    text = config_pbtxt(name, artifact, meta, config)
    labels_text = "".join(f"{label}\n" for label in labels)

    def fill(folder: Path) -> None:
        (folder / "1").mkdir()
        (folder / "1" / "model.onnx").write_bytes(artifact.data)
        (folder / LABELS_FILE).write_text(labels_text, encoding="utf-8")
        (folder / "config.pbtxt").write_text(text, encoding="utf-8")
        if sign_key:  # signed in staging: the files and their signature arrive in the one move, or neither does
            sign_entry(folder, artifact, labels_text, text, sign_key)

    replaced = ("1", LABELS_FILE, "config.pbtxt", SIGNATURE)
    if sign_key:
        check_no_other_entries(repository / name, replaced)
    # One move for the three files: Triton never loads a new model.onnx beside an old config.pbtxt.
    # An earlier entry's model.sig goes too: it signs the files this move replaces.
    return write_dir_atomic(repository / name, fill, replaced=replaced)


def check_no_other_entries(target: Path, replaced: tuple[str, ...]) -> None:
    """A signed entry must be wholly signed: earlier versions (``2/model.onnx``) kept beside it would be
    served unsigned under a signature that says nothing of them."""
    others = sorted(p.name for p in target.iterdir() if p.name not in replaced) if target.is_dir() else []
    if others:
        raise VggExportError(f"{target} holds {', '.join(others)} besides what this writes, which --sign-key "
                             f"would leave unsigned: remove them or write to another --repository")


def sign_entry(target: Path, artifact: ArtifactBytes, labels_text: str, config_text: str, sign_key: str) -> None:
    """Sign the entry's three files, each expected to hold the bytes written from what the gate checked, then
    check the entry's coverage rules (every version's model.onnx, config.pbtxt, labels.txt) on what was signed."""
    import hashlib

    from vggexport.store.signature import required_files
    from vggexport.store.signing import sign_files

    expected = {"1/model.onnx": artifact.sha256, LABELS_FILE: hashlib.sha256(labels_text.encode()).hexdigest(),
                "config.pbtxt": hashlib.sha256(config_text.encode()).hexdigest()}
    signed = sign_files(target, sign_key, expected).signed
    missing = [name for name in required_files(target) if name not in signed]
    if missing:
        raise VggExportError(f"the entry's signature would not cover {', '.join(missing)}: nothing was written")
