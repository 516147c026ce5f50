"""Reading a model file once: hostile sizes and kinds fail in one line, before memory runs out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vggexport.errors import VggExportError
from vggexport.store.fileio import MAX_ARTIFACT_BYTES, read_artifact


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "model.onnx"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_ARTIFACT_BYTES + 1)  # sparse: no disk used
    with pytest.raises(VggExportError, match="larger than any file vggexport writes"):
        read_artifact(huge)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_what_is_not_a_file_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.onnx"
    if kind == "directory":
        os.mkdir(path)
    with pytest.raises(VggExportError, match="no file at" if kind == "missing" else "is a directory") as error:
        read_artifact(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_the_hash_is_of_the_bytes_read(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "model.onnx"
    path.write_bytes(b"abc")
    artifact = read_artifact(path)
    assert artifact.data == b"abc" and artifact.sha256 == hashlib.sha256(b"abc").hexdigest()


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    from vggexport.store.fileio import write_dir_atomic

    target = tmp_path / "repo" / "model"
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.onnx").write_text("old model")
    (target / "config.pbtxt").write_text("old config")
    (target / "2").mkdir()
    (target / "2" / "model.onnx").write_text("another version")

    def half_then_fail(folder: Path) -> None:
        (folder / "1").mkdir()
        (folder / "1" / "model.onnx").write_text("new model")
        raise OSError(28, "No space left on device")

    with pytest.raises(VggExportError, match="No space left on device"):
        write_dir_atomic(target, half_then_fail, replaced=("1", "config.pbtxt"))
    assert (target / "1" / "model.onnx").read_text() == "old model"
    assert (target / "config.pbtxt").read_text() == "old config"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no staging folder left

    def complete(folder: Path) -> None:
        (folder / "1").mkdir()
        (folder / "1" / "model.onnx").write_text("new model")
        (folder / "config.pbtxt").write_text("new config")

    write_dir_atomic(target, complete, replaced=("1", "config.pbtxt"))
    assert (target / "1" / "model.onnx").read_text() == "new model"
    assert (target / "config.pbtxt").read_text() == "new config"
    assert (target / "2" / "model.onnx").read_text() == "another version"  # other versions are kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]
