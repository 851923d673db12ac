from __future__ import annotations

import math

import pytest

from ttsbench.schedule import Constant, ExponentialDecay, Noam, PiecewiseConstant, learning_rate_schedule

GRADUAL = [[0, 7, 32], [10000, 5, 32], [50000, 3, 32], [130000, 2, 16], [290000, 1, 8]]


def test_piecewise_schedule_changes_exactly_at_boundaries():
    r = PiecewiseConstant.from_rows(GRADUAL, 1)
    batch = PiecewiseConstant.from_rows(GRADUAL, 2)
    assert [r(s) for s in (0, 9999, 10000, 49999, 50000, 129999, 130000, 290000, 10**7)] == [7, 7, 5, 5, 3, 3, 2, 1, 1]
    assert [batch(s) for s in (0, 129999, 130000, 289999, 290000)] == [32, 32, 16, 16, 8]
    assert r.boundaries() == [10000, 50000, 130000, 290000]
    assert r.scaled(0.01).boundaries() == [100, 500, 1300, 2900]


def test_piecewise_schedule_rejects_bad_tables():
    with pytest.raises(ValueError, match="start at step 0"):
        PiecewiseConstant(((5, 1),))
    with pytest.raises(ValueError, match="strictly increase"):
        PiecewiseConstant(((0, 1), (10, 2), (10, 3)))


def test_noam_peaks_at_warmup_and_decays_as_inverse_sqrt():
    lr = Noam(peak=1e-3, warmup=100)
    assert lr(0) == pytest.approx(1e-5)
    assert lr(99) == pytest.approx(1e-3)
    assert lr(399) == pytest.approx(0.5e-3)
    assert max(lr(s) for s in range(1000)) == pytest.approx(1e-3)
    # Glow-TTS: lr 1.0 * d**-0.5 * min(s**-0.5, s * w**-1.5) with d=192, w=4000 peaks at ~1.1e-3.
    assert 192**-0.5 * 4000**-0.5 == pytest.approx(1.14e-3, rel=0.01)


def test_exponential_and_constant():
    lr = ExponentialDecay(peak=1.0, warmup=10, half_life=100)
    assert lr(9) == pytest.approx(1.0) and lr(109) == pytest.approx(0.5)
    assert Constant(3.0)(12345) == 3.0
    assert isinstance(learning_rate_schedule("noam", 1e-3, 10), Noam)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        learning_rate_schedule("cosine", 1e-3, 10)
    assert math.isclose(learning_rate_schedule("constant", 2e-4, 0)(50), 2e-4)
