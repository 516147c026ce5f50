"""The comparator: NaN and Inf fail before anything is compared; statistics as Polygraphy reports them."""

from __future__ import annotations

import numpy as np
import pytest

from vggexport.verify.compare import Comparison
from vggexport.export.spec import AccuracyCriterion, ExportSpec

SPEC = ExportSpec()


def reference(n: int = 8, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, classes)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_fails(bad: float) -> None:
    ref = reference()
    out = ref.copy()
    out[2, 5] = bad
    cmp = Comparison(1e-4, 1e-3)
    mask = cmp.update(ref, out, labels=ref.argmax(1))
    failures = cmp.failures(SPEC, judge_top1=True)
    assert cmp.nonfinite == 1 and any("non-finite" in f for f in failures)
    assert mask.tolist() == [i == 2 for i in range(8)], "the failing sample is marked for --save-failures"
    assert np.isfinite([cmp.max_abs, cmp.max_rel, cmp.min_cosine]).all(), "statistics stay finite"
    assert cmp.top1_agree == 7 and cmp.correct == 7, "a non-finite row neither agrees nor counts as correct"


def test_all_nan_output_fails_even_where_argmax_would_agree() -> None:
    ref = np.zeros((4, 10), np.float32)
    ref[:, 0] = 1.0  # argmax 0, and numpy's argmax of an all-NaN row is also 0
    cmp = Comparison(1e-4, 1e-3)
    cmp.update(ref, np.full_like(ref, np.nan))
    assert cmp.top1_agreement == 0.0 and cmp.nonfinite == 40
    assert cmp.failures(SPEC, judge_top1=False)


def test_exact_copy_passes_with_zero_statistics() -> None:
    ref = reference()
    cmp = Comparison(1e-4, 1e-3)
    cmp.update(ref, ref.copy())
    assert not cmp.failures(SPEC, judge_top1=True)
    assert cmp.diff_percentiles() == {"mean_abs": 0.0, "median_abs": 0.0, "p99_abs": 0.0}


def test_percentiles_over_all_batches() -> None:
    ref = np.zeros((100, 10), np.float32)
    cmp = Comparison(1.0, 0.0)
    offsets = np.tile(np.arange(100, dtype=np.float32)[:, None] / 1000, (1, 10))  # 0 .. 0.099
    cmp.update(ref[:50], offsets[:50])
    cmp.update(ref[50:], offsets[50:])
    stats = cmp.diff_percentiles()
    assert stats["mean_abs"] == pytest.approx(0.0495, abs=1e-6)
    assert stats["median_abs"] == pytest.approx(0.0495, abs=1e-6)
    assert stats["p99_abs"] == pytest.approx(0.098, abs=1e-3) and cmp.max_abs == pytest.approx(0.099)


def test_accuracy_criterion_judges_variants() -> None:
    int8 = AccuracyCriterion("int8", max_accuracy_drop=0.003, min_top1_agreement=0.99)
    labels = np.arange(1000) % 10
    ref = np.eye(10, dtype=np.float32)[labels]
    out = ref.copy()
    out[:4] = np.roll(out[:4], 1, axis=1)  # 4 of 1000 wrong: 0.4 points down, 99.6 % agreement
    cmp = Comparison(1e-4, 1e-3)
    cmp.update(ref, out, labels)
    failures = cmp.failures(SPEC, judge_top1=True, criterion=int8)
    assert failures == [f for f in failures if "points below" in f] and len(failures) == 1
    assert not any("atol" in f for f in failures), "variants are not held to elementwise tolerances"
    loose = AccuracyCriterion("int8", max_accuracy_drop=0.005, min_top1_agreement=0.99)
    assert not cmp.failures(SPEC, judge_top1=True, criterion=loose)


def test_a_variant_without_labelled_data_cannot_pass() -> None:
    fp16 = SPEC.criterion("fp16")
    ref = reference()
    cmp = Comparison(1e-4, 1e-3)
    cmp.update(ref, ref)
    assert any("needs labelled real data" in f for f in cmp.failures(SPEC, judge_top1=True, criterion=fp16))


def test_real_batches_stay_below_cudnn_limits() -> None:
    """224x224 full width, flip-averaged: 500 images x 2 views x 64 x 224 x 224 > 2**31 crashed cuDNN."""
    size = SPEC.real_batch_size(image_size=224, width=1.0, views=2)
    assert size * 2 * 64 * 224 * 224 <= 2**28 < (size + 1) * 2 * 64 * 224 * 224
    assert SPEC.real_batch_size(image_size=32, width=0.25, views=2) == 500
