"""Confidence intervals over utterances: a seeded percentile bootstrap.

A test set of a few dozen utterances leaves a metric's mean uncertain by more than the gap
between many systems; the interval says by how much. Utterances are resampled with
replacement (`BOOTSTRAP_RESAMPLES` times, seeded, so a report is reproducible). A rate made of
counts (WER, CER) resamples (errors, length) pairs and takes the corpus rate of each resample,
so the interval is the corpus rate's, not the per-utterance mean's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval (NaN when there is nothing to estimate)."""

    value: float
    low: float
    high: float
    count: int

    def format(self, digits: int) -> str:
        if np.isnan(self.value):
            return ""
        return f"{self.value:,.{digits}f} [{self.low:,.{digits}f}, {self.high:,.{digits}f}]"


def _percentiles(estimates: np.ndarray) -> tuple[float, float]:
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return float(low), float(high)


def _resamples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(BOOTSTRAP_RESAMPLES, count))


def mean_interval(values: Sequence[float], seed: int = BOOTSTRAP_SEED) -> Interval:
    """Mean over utterances (NaNs left out) with its 95 % percentile-bootstrap interval."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if not finite.size:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    estimates = finite[_resamples(finite.size, seed)].mean(axis=1)
    return Interval(float(finite.mean()), *_percentiles(estimates), int(finite.size))


def rate_interval(errors: Sequence[float], lengths: Sequence[float], seed: int = BOOTSTRAP_SEED) -> Interval:
    """Corpus rate sum(errors) / sum(lengths) with its 95 % interval over resampled utterances."""
    e, n = np.asarray(errors, dtype=float), np.asarray(lengths, dtype=float)
    if e.shape != n.shape:
        raise ValueError(f"{len(e)} error counts but {len(n)} lengths")
    if not n.size or n.sum() <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    index = _resamples(n.size, seed)
    estimates = e[index].sum(axis=1) / np.maximum(n[index].sum(axis=1), 1e-12)
    return Interval(float(e.sum() / n.sum()), *_percentiles(estimates), int(n.size))
