"""Monotonic alignment search: ours against `monotonic_alignment_search` (the packaged reference).

Both get the same torch float32 tensors with full masks, at a typical training batch
(B=16, 150 tokens, 800 frames), and both are called through their public `maximum_path`, so
each side pays its own conversions. The reference is the Cython build of glow-tts's core.pyx:
its wheel is compiled without OpenMP, so its `prange` runs on one thread; it also copies the
input twice (value * mask, then a float32 copy) and converts an int32 path to the value dtype.
Ours is a numba kernel, parallel over the batch (also timed on one thread). Run with
`pytest tests/benchmarks/test_bench_mas.py --benchmark-only`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttsbench.align.mas import maximum_path

B, T_TEXT, T_MEL = 16, 150, 800


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value, mask, reference path); the reference run also warms up both implementations."""
    from monotonic_alignment_search import maximum_path as mas_maximum_path

    rng = np.random.default_rng(0)
    value = torch.from_numpy(rng.standard_normal((B, T_TEXT, T_MEL)).astype(np.float32))
    mask = torch.ones_like(value)
    expected = mas_maximum_path(value, mask)
    torch.testing.assert_close(maximum_path(value, mask), expected, rtol=0, atol=0)  # compiles
    return value, mask, expected


@pytest.mark.benchmark(group="mas")
def test_bench_ours(benchmark, inputs):
    value, mask, expected = inputs
    path = benchmark(maximum_path, value, mask)
    torch.testing.assert_close(path, expected, rtol=0, atol=0)


@pytest.mark.benchmark(group="mas")
def test_bench_ours_one_thread(benchmark, inputs):
    """The calling thread only: the figure to expect when the other cores are busy."""
    value, mask, expected = inputs
    maximum_path(value, mask, num_threads=1)  # compiles the serial kernel
    path = benchmark(maximum_path, value, mask, num_threads=1)
    torch.testing.assert_close(path, expected, rtol=0, atol=0)


@pytest.mark.benchmark(group="mas")
def test_bench_monotonic_alignment_search(benchmark, inputs):
    from monotonic_alignment_search import maximum_path as mas_maximum_path

    value, mask, expected = inputs
    path = benchmark(mas_maximum_path, value, mask)
    torch.testing.assert_close(path, expected, rtol=0, atol=0)
