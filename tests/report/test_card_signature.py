"""The model card's signature part: who signed what, and when the signed files changed."""

from __future__ import annotations

from pathlib import Path


def test_the_report_shows_the_signature(signed: Path, keys: dict[str, Path]) -> None:
    from vggexport.report.card import signature_part
    from vggexport.store.manifest import read_manifest
    from vggexport.store.signature import fingerprint, load_public_key

    shown = signature_part(signed, read_manifest(signed))
    assert fingerprint(load_public_key(keys["pub"])) in shown and "model.onnx, parity.json" in shown
    assert "changed or gone" not in shown
    (signed / "model.sig").unlink()
    assert "changed or gone" in signature_part(signed, read_manifest(signed))


def test_the_report_survives_a_hand_edited_signature_record(signed: Path) -> None:
    from vggexport.report.card import signature_part
    from vggexport.store.manifest import read_manifest

    manifest = read_manifest(signed)
    manifest["signature"]["files"] = 3
    assert "Key fingerprint" in signature_part(signed, manifest)  # no TypeError from the hand-edited list

