"""Monotonic alignment search against two oracles and against the reference package.

Small cases: an exhaustive search over every monotonic surjective path, with the reference's tie
rule restated in brute-force terms, and a plain transcription of the reference programme
(glow-tts `monotonic_align/core.pyx`). Large cases: `monotonic_alignment_search`, the packaged
reference, on the very same inputs.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from ttsbench.align.mas import maximum_path

T_TEXT, T_MEL = 6, 10  # padded size of the exhaustive cases; 5+ tokens reach the 4-row bands


# --------------------------------------------------------------------------------------------
# Oracles


def all_paths(t_x: int, t_y: int) -> list[tuple[int, ...]]:
    """Every monotonic surjective alignment, as the token index of each frame."""
    paths = []
    for cuts in itertools.combinations(range(1, t_y), t_x - 1):
        bounds = (0, *cuts, t_y)
        paths.append(tuple(i for i in range(t_x) for _ in range(bounds[i + 1] - bounds[i])))
    return paths


def brute_force(value: np.ndarray, t_x: int, t_y: int) -> tuple[tuple[int, ...], int]:
    """(chosen path, number of optimal paths) by enumeration.

    Among the optimal paths the reference keeps, walking back from the last frame, the later
    token whenever that is still optimal: the greatest token sequence read from the end.
    """
    scored = [(sum(float(value[i, j]) for j, i in enumerate(p)), p) for p in all_paths(t_x, t_y)]
    best = max(s for s, _ in scored)
    optimal = [p for s, p in scored if s == best]
    return max(optimal, key=lambda p: p[::-1]), len(optimal)


def reference_dp(value: np.ndarray, t_x: int, t_y: int) -> tuple[int, ...]:
    """A line-by-line transcription of core.pyx `maximum_path_each`, in `value`'s dtype."""
    value = value[:t_x, :t_y].copy()
    max_neg_val = value.dtype.type(-1e9)
    for y in range(t_y):
        for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
            v_cur = max_neg_val if x == y else value[x, y - 1]
            if x == 0:
                v_prev = value.dtype.type(0.0) if y == 0 else max_neg_val
            else:
                v_prev = value[x - 1, y - 1]
            value[x, y] = max(v_cur, v_prev) + value[x, y]
    index = t_x - 1
    tokens = [0] * t_y
    for y in range(t_y - 1, -1, -1):
        tokens[y] = index
        if index != 0 and (index == y or value[index, y - 1] < value[index - 1, y - 1]):
            index -= 1
    return tuple(tokens)


def tokens_of(path: np.ndarray, t_x: int, t_y: int) -> tuple[int, ...]:
    """The token of each valid frame, after checking the path's shape of a valid alignment."""
    assert path[t_x:, :].sum() == 0 and path[:, t_y:].sum() == 0, "ones outside the region"
    region = path[:t_x, :t_y]
    assert set(np.unique(region)) <= {0, 1}
    assert (region.sum(0) == 1).all(), "each frame must have exactly one token"
    tokens = region.argmax(0)
    steps = np.diff(tokens)
    assert tokens[0] == 0 and tokens[-1] == t_x - 1
    assert ((steps == 0) | (steps == 1)).all(), "tokens must advance in order, one at a time"
    durations = region.sum(1)
    assert durations.sum() == t_y and (durations >= 1).all()
    return tuple(int(i) for i in tokens)


# --------------------------------------------------------------------------------------------
# Inputs


def ragged_mask(lengths: list[tuple[int, int]], t_text: int, t_mel: int) -> np.ndarray:
    mask = np.zeros((len(lengths), t_text, t_mel), dtype=np.float32)
    for b, (t_x, t_y) in enumerate(lengths):
        mask[b, :t_x, :t_y] = 1
    return mask


# Every (t_x, t_y) with t_x <= T_TEXT and t_x <= t_y <= T_MEL, plus an empty item, in one batch.
ALL_LENGTHS = [(t_x, t_y) for t_x in range(1, T_TEXT + 1) for t_y in range(t_x, T_MEL + 1)]
ALL_LENGTHS.insert(5, (0, 0))


def small_values(kind: str, rng: np.random.Generator, dtype: type) -> np.ndarray:
    shape = (len(ALL_LENGTHS), T_TEXT, T_MEL)
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "integers":  # many exact ties
        return rng.integers(-1, 2, shape).astype(dtype)
    return np.full(shape, -0.5, dtype=dtype)  # all equal: every path is optimal


# --------------------------------------------------------------------------------------------
# Exhaustive small cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "integers", "equal"])
def test_matches_exhaustive_search_and_reference_dp(kind, dtype):
    rng = np.random.default_rng(1234)
    mask = ragged_mask(ALL_LENGTHS, T_TEXT, T_MEL)
    tied = 0
    for _ in range(8 if kind != "equal" else 1):
        value = small_values(kind, rng, dtype)
        path = maximum_path(value, mask)
        assert type(path) is np.ndarray and path.dtype == dtype and path.shape == value.shape
        for b, (t_x, t_y) in enumerate(ALL_LENGTHS):
            if t_x == 0:
                assert not path[b].any()
                continue
            got = tokens_of(path[b], t_x, t_y)
            expected, n_optimal = brute_force(value[b], t_x, t_y)
            tied += n_optimal > 1
            assert got == expected, (b, t_x, t_y, value[b, :t_x, :t_y])
            assert got == reference_dp(value[b], t_x, t_y)
    if kind == "normal":
        assert tied == 0  # continuous values: the optimum is unique, no tie rule involved
    else:
        assert tied > 0  # the tie rule really was exercised


def test_tie_keeps_the_later_token():
    """All paths tie: walking back, the last token keeps every frame it can."""
    value = np.zeros((1, 2, 4), dtype=np.float32)
    mask = np.ones_like(value)
    np.testing.assert_array_equal(maximum_path(value, mask)[0], [[1, 0, 0, 0], [0, 1, 1, 1]])


def test_forced_diagonal_and_single_token():
    value = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    mask = ragged_mask([(3, 3), (1, 3)], 3, 3)
    path = maximum_path(value, mask)
    np.testing.assert_array_equal(path[0], np.eye(3))
    np.testing.assert_array_equal(path[1], [[1, 1, 1], [0, 0, 0], [0, 0, 0]])


# --------------------------------------------------------------------------------------------
# Large cases against the packaged reference


def large_case(seed: int, integer_values: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [(50, 200), (1, 37), (23, 23), (31, 117)]
    shape = (len(lengths), 50, 200)
    if integer_values:
        value = rng.integers(-2, 3, shape).astype(np.float32)
    else:
        value = (rng.standard_normal(shape) * 3).astype(np.float32)
    return value, ragged_mask(lengths, 50, 200)


def reference(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`monotonic_alignment_search.maximum_path(value, mask)`: torch in, torch out, float32 DP."""
    from monotonic_alignment_search import maximum_path as mas_maximum_path

    return mas_maximum_path(torch.from_numpy(value), torch.from_numpy(mask)).numpy()


@pytest.mark.parametrize("integer_values", [False, True], ids=["normal", "integers"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_monotonic_alignment_search(seed, integer_values):
    value, mask = large_case(seed, integer_values)
    expected = reference(value, mask)

    path_np = maximum_path(value, mask)
    assert type(path_np) is np.ndarray and path_np.dtype == np.float32
    np.testing.assert_array_equal(path_np, expected)

    value_t = torch.from_numpy(value).requires_grad_()
    path_t = maximum_path(value_t, torch.from_numpy(mask).bool())
    assert isinstance(path_t, torch.Tensor) and path_t.dtype == torch.float32
    assert path_t.device == value_t.device and not path_t.requires_grad
    np.testing.assert_array_equal(path_t.numpy(), expected)

    np.testing.assert_array_equal(maximum_path(value, mask, num_threads=1), expected)  # serial

    t_xs, t_ys = mask[:, :, 0].sum(1).astype(int), mask[:, 0, :].sum(1).astype(int)
    for b in range(len(value)):
        tokens_of(path_np[b], t_xs[b], t_ys[b])


def test_float64_and_non_contiguous_inputs_match_reference():
    # Integer values: sums are exact, so float64 work agrees with the reference's float32.
    value, mask = large_case(3, integer_values=True)
    expected = reference(value, mask)
    value64 = np.ascontiguousarray(value.astype(np.float64).transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not value64.flags.c_contiguous
    path = maximum_path(value64, mask.astype(np.int64))
    assert path.dtype == np.float64
    np.testing.assert_array_equal(path, expected)
    path_t = maximum_path(torch.from_numpy(value64), torch.from_numpy(mask))
    assert path_t.dtype == torch.float64
    np.testing.assert_array_equal(path_t.numpy(), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: v.astype(np.float16),
        lambda v: v.astype(np.int32),
        lambda v: torch.from_numpy(v).to(torch.bfloat16),
        lambda v: torch.from_numpy(v).to(torch.float16),
    ],
    ids=["np-float16", "np-int32", "torch-bfloat16", "torch-float16"],
)
def test_output_keeps_type_dtype_and_shape(make):
    value, mask = large_case(4, integer_values=True)  # exact in every dtype here
    expected = reference(value, mask)
    arg = make(value)
    path = maximum_path(arg, mask)
    assert type(path) is type(arg) and path.dtype == arg.dtype and path.shape == arg.shape
    got = path.float().numpy() if isinstance(path, torch.Tensor) else path.astype(np.float32)
    np.testing.assert_array_equal(got, expected)


def test_concurrent_calls_from_threads():
    value, mask = large_case(5)
    expected = maximum_path(value, mask)
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(5):
            results.append(maximum_path(value, mask))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    for r in results:
        np.testing.assert_array_equal(r, expected)


# --------------------------------------------------------------------------------------------
# Edge cases


def test_more_tokens_than_frames_raises_with_batch_index():
    value = np.zeros((3, 5, 6), dtype=np.float32)
    mask = ragged_mask([(2, 6), (5, 4), (1, 1)], 5, 6)
    with pytest.raises(ValueError, match="batch item 1 has 5 tokens but only 4 frames"):
        maximum_path(value, mask)
    with pytest.raises(ValueError, match="batch item 1"):
        maximum_path(torch.from_numpy(value), torch.from_numpy(mask))


def test_zero_length_items_and_empty_shapes():
    value = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    mask = ragged_mask([(0, 0), (2, 5), (0, 0)], 4, 6)
    path = maximum_path(value, mask)
    assert not path[0].any() and not path[2].any()
    assert tokens_of(path[1], 2, 5)
    assert not maximum_path(value, np.zeros_like(mask)).any()
    for shape in [(0, 4, 6), (2, 0, 6), (2, 4, 0)]:
        empty = np.zeros(shape, dtype=np.float32)
        assert maximum_path(empty, empty).shape == shape


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="must both be"):
        maximum_path(np.zeros((2, 3, 4)), np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="must both be"):
        maximum_path(np.zeros((3, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="num_threads"):
        maximum_path(np.zeros((2, 3, 4)), np.ones((2, 3, 4)), num_threads=0)
