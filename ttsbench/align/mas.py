"""Monotonic alignment search (MAS): the hard text-to-frame alignment of Glow-TTS.

`maximum_path` runs at every training step, so the dynamic programme is compiled with numba and
spread over the batch with `prange`. It is the reference programme (jaywalnut310/glow-tts,
`monotonic_align/core.pyx`) with the same arithmetic: the same recurrence, the same backtracking
rule and, for float32 (or float16) input, float32 work like the reference, so paths agree bit for
bit, ties included. float64 (and integer) input works in float64. No fastmath: it could reorder
the max/add and change which of two equal paths is chosen.

The speed comes from the order of the work, not from other arithmetic. The reference walks one
frame at a time down all tokens (strided memory); walking one token row along the frames is
contiguous but waits on a single max-then-add chain. Here four token rows advance together
along the frames, which gives four independent chains over contiguous memory.

Numba caches the compiled kernel in `__pycache__` beside this file, or in the user cache
directory when that is read-only (numba's own fallback), so only the first run pays the compile.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, TypeVar

import numba
import numpy as np
from numba import njit, prange

if TYPE_CHECKING:
    import torch

__all__ = ["maximum_path"]

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

# Numba would pick its OpenMP layer when available; its spinning workers then compete with
# torch's own OpenMP pool, and on a loaded 2-core machine torch ops after the first MAS call
# were measured ~100x slower. The workqueue layer sleeps between launches. It is not safe for
# concurrent parallel launches from two Python threads (the kernel releases the GIL), so calls
# are serialised here.
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"
_KERNEL_LOCK = threading.Lock()


@njit(inline="always", cache=True)
def _best(move: float, stay: float) -> float:
    """The larger predecessor score, as the reference's `max` (equal scores give equal sums)."""
    return move if move > stay else stay


@njit(inline="always", cache=True)
def _cell(v: np.ndarray, q: np.ndarray, r: int, y: int) -> None:
    """Q[r, y] for one cell inside the region; on its edges a cell has a single predecessor."""
    if r == 0:
        q[0, y] = (v[0, y] + q[0, y - 1]) if y > 0 else v[0, 0]
    elif r == y:
        q[r, y] = v[r, y] + q[r - 1, y - 1]
    else:
        q[r, y] = v[r, y] + _best(q[r - 1, y - 1], q[r, y - 1])


@njit(inline="always", cache=True)
def _band4(v: np.ndarray, q: np.ndarray, x: int, d: int) -> None:
    """Rows x..x+3 (x >= 1, d = t_y - t_x >= 3), advanced together along the frames.

    Row r is valid for frames r..r+d. The leading and trailing triangles, where not all four
    rows are valid, are done cell by cell; in between, each row's running score stays in a
    register and only depends on its own and the row above's previous score.
    """
    for k in range(4):
        for y in range(x + k, x + 4):
            _cell(v, q, x + k, y)
    a0 = q[x, x + 3]
    a1 = q[x + 1, x + 3]
    a2 = q[x + 2, x + 3]
    a3 = q[x + 3, x + 3]
    # Frames x+4..x+d; slices starting at 0 let LLVM drop the negative-index handling.
    up = q[x - 1, x + 3 : x + d]
    v0 = v[x, x + 4 : x + d + 1]
    v1 = v[x + 1, x + 4 : x + d + 1]
    v2 = v[x + 2, x + 4 : x + d + 1]
    v3 = v[x + 3, x + 4 : x + d + 1]
    q0 = q[x, x + 4 : x + d + 1]
    q1 = q[x + 1, x + 4 : x + d + 1]
    q2 = q[x + 2, x + 4 : x + d + 1]
    q3 = q[x + 3, x + 4 : x + d + 1]
    for j in range(d - 3):
        n0 = _best(up[j], a0) + v0[j]
        n1 = _best(a0, a1) + v1[j]
        n2 = _best(a1, a2) + v2[j]
        n3 = _best(a2, a3) + v3[j]
        q0[j] = n0
        q1[j] = n1
        q2[j] = n2
        q3[j] = n3
        a0 = n0
        a1 = n1
        a2 = n2
        a3 = n3
    for k in range(1, 4):
        for y in range(x + d + 1, x + k + d + 1):
            _cell(v, q, x + k, y)


@njit(cache=True)
def _align_item(v: np.ndarray, q: np.ndarray, path: np.ndarray, t_x: int, t_y: int) -> None:
    """Fill Q over the valid region of one item (1 <= t_x <= t_y), then backtrack into `path`.

    Cells outside the region (i > j or i < t_x - t_y + j) are never written nor read.
    """
    d = t_y - t_x
    for y in range(d + 1):
        _cell(v, q, 0, y)
    x = 1
    if d >= 3:
        while x + 4 <= t_x:
            _band4(v, q, x, d)
            x += 4
    for r in range(x, t_x):
        for y in range(r, r + d + 1):
            _cell(v, q, r, y)
    # The reference rule: step back a token when forced (i == j) or when the previous token's
    # score is strictly greater; on a tie the path stays on the current token.
    i = t_x - 1
    for y in range(t_y - 1, -1, -1):
        path[i, y] = 1
        if i != 0 and (i == y or q[i, y - 1] < q[i - 1, y - 1]):
            i -= 1


@njit(cache=True)
def _schedule(cost: np.ndarray, n_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped per worker, largest first to the least loaded (LPT), as (order, starts).

    prange hands each thread a fixed block of iterations, so one batch of long utterances
    would otherwise land on one thread; iterating over balanced workers avoids that.
    """
    by_cost = np.argsort(-cost, kind="mergesort")
    load = np.zeros(n_workers, dtype=np.int64)
    owner = np.empty(cost.size, dtype=np.int64)
    for b in by_cost:
        w = np.argmin(load)
        owner[b] = w
        load[w] += cost[b]
    order = np.argsort(owner, kind="mergesort")
    starts = np.zeros(n_workers + 1, dtype=np.int64)
    for w in owner:
        starts[w + 1] += 1
    return order, np.cumsum(starts)


@njit(cache=True, nogil=True)
def _align_batch_item(
    value: np.ndarray, t_xs: np.ndarray, t_ys: np.ndarray, path: np.ndarray, b: int
) -> None:
    """Overwrite item b of `path` entirely: zeros, then its alignment if it is not empty."""
    path[b] = 0
    t_x = t_xs[b]
    t_y = t_ys[b]
    if t_x > 0 and t_y > 0:
        q = np.empty((t_x, t_y), dtype=value.dtype)
        _align_item(value[b], q, path[b], t_x, t_y)


@njit(parallel=True, cache=True, nogil=True)
def _kernel_parallel(
    value: np.ndarray,
    t_xs: np.ndarray,
    t_ys: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    path: np.ndarray,
) -> None:
    """One balanced group of items (see `_schedule`) per parallel iteration."""
    for w in prange(starts.size - 1):
        for k in range(starts[w], starts[w + 1]):
            _align_batch_item(value, t_xs, t_ys, path, order[k])


@njit(cache=True, nogil=True)
def _kernel_serial(value: np.ndarray, t_xs: np.ndarray, t_ys: np.ndarray, path: np.ndarray) -> None:
    """The same in the calling thread: no worker threads to wake, which matters on a busy host."""
    for b in range(value.shape[0]):
        _align_batch_item(value, t_xs, t_ys, path, b)


def _is_tensor(x: Any) -> bool:
    """Torch tensor check that never imports torch (numpy-only callers don't pay for it)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(x, torch_mod.Tensor)


def _work_array(value: Any) -> np.ndarray:
    """`value` as a C-contiguous float32/float64 numpy array (no copy when it already is one).

    float64 stays float64; other floats work in float32 like the reference; integers and
    booleans in float64, where their sums are exact.
    """
    if _is_tensor(value):
        import torch

        t = value.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float() if t.is_floating_point() else t.double()
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(value)
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.float64)
    return np.ascontiguousarray(arr)


def _lengths(mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-item (t_x, t_y): valid tokens counted down frame 0, valid frames along token 0."""
    if _is_tensor(mask):
        t_x = (mask[:, :, 0] != 0).sum(1).cpu().numpy()
        t_y = (mask[:, 0, :] != 0).sum(1).cpu().numpy()
    else:
        mask = np.asarray(mask)
        t_x = np.count_nonzero(mask[:, :, 0], axis=1)
        t_y = np.count_nonzero(mask[:, 0, :], axis=1)
    return t_x.astype(np.int64), t_y.astype(np.int64)


def maximum_path(
    value: ArrayT, mask: np.ndarray | torch.Tensor, *, num_threads: int | None = None
) -> ArrayT:
    """Most likely monotonic alignment of tokens to frames (Glow-TTS MAS).

    Args:
        value: [B, T_text, T_mel] scores, e.g. log-likelihoods of each frame under each token.
        mask: [B, T_text, T_mel], nonzero inside each item's valid rectangle
            (t_x tokens by t_y frames, a prefix in both axes); numpy or torch, any dtype.
        num_threads: threads over the batch; default `numba.get_num_threads()`, capped by the
            batch size and NUMBA_NUM_THREADS. 1 runs in the calling thread, which is faster
            when the cores are already busy (data-loader workers, other jobs): a parallel
            call waits for every worker thread to be scheduled.

    Returns:
        The 0/1 path, same shape and same type as `value`: numpy with `value`'s dtype, or a
        tensor on `value`'s device with its dtype. Each of the t_y frames has exactly one token,
        tokens are visited in order and each gets at least one frame; the path maximises the
        summed `value`, ties resolved as in the reference. Zero outside the valid rectangle and
        for items with no tokens or no frames.

    Raises:
        ValueError: on mismatched shapes, or for an item with more tokens than frames
            (no alignment gives every token a frame).
    """
    shape = tuple(value.shape)
    if len(shape) != 3 or tuple(mask.shape) != shape:
        raise ValueError(
            f"value and mask must both be [B, T_text, T_mel]; got {shape} and {tuple(mask.shape)}"
        )
    if num_threads is None:
        num_threads = numba.get_num_threads()
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    work = _work_array(value)
    path = np.empty(shape, dtype=work.dtype)  # the kernel writes every element
    if work.size:
        t_xs, t_ys = _lengths(mask)
        bad = np.flatnonzero((t_xs > t_ys) & (t_ys > 0))
        if bad.size:
            b = int(bad[0])
            raise ValueError(
                f"batch item {b} has {t_xs[b]} tokens but only {t_ys[b]} frames: no monotonic "
                f"alignment gives every token a frame (items with T_text > T_mel: {bad.tolist()})"
            )
        n_workers = min(num_threads, numba.config.NUMBA_NUM_THREADS, shape[0])
        if n_workers == 1:
            _kernel_serial(work, t_xs, t_ys, path)
        else:
            # Cost: the DP's cells, plus zeroing the item's slab of the output (much cheaper).
            cells = np.where((t_xs > 0) & (t_ys > 0), t_xs * (t_ys - t_xs + 1), 0)
            cost = cells + shape[1] * shape[2] // 16
            order, starts = _schedule(cost, n_workers)
            with _KERNEL_LOCK:
                previous = numba.get_num_threads()
                numba.set_num_threads(n_workers)  # thread-local; no idle workers to wake
                try:
                    _kernel_parallel(work, t_xs, t_ys, order, starts, path)
                finally:
                    numba.set_num_threads(previous)
    return _like(path, value)


def _like(path: np.ndarray, value: Any) -> Any:
    """`path` converted to `value`'s type, dtype and device (no copy when they already match)."""
    if _is_tensor(value):
        import torch

        out = torch.from_numpy(path)
        if out.dtype != value.dtype or out.device != value.device:
            out = out.to(device=value.device, dtype=value.dtype)
        return out
    return path if path.dtype == value.dtype else path.astype(value.dtype)
