"""Alignment scores on soft attention A[T_text, T_frames] (rows: tokens, columns: frames).

Two common scores are transposes of each other; both are computed because toolkits report
one or the other: the diagonal score (Coqui) catches skipped tokens, the focus rate
(FastSpeech, ESPnet) measures sharpness per frame.
"""

from __future__ import annotations

import numpy as np


def diagonal_score(attention: np.ndarray) -> float:
    """Mean over tokens of the largest weight any frame gives that token (Coqui's score)."""
    return float(np.asarray(attention).max(axis=1).mean())


def focus_rate(attention: np.ndarray) -> float:
    """Mean over frames of the largest weight given to any token (FastSpeech's focus rate)."""
    return float(np.asarray(attention).max(axis=0).mean())


def monotonicity(attention: np.ndarray) -> tuple[float, int]:
    """Share of frame steps whose argmax token does not move backwards, and the largest forward jump."""
    path = np.asarray(attention).argmax(axis=0)
    if path.size < 2:
        return 1.0, 0
    steps = np.diff(path)
    return float((steps >= 0).mean()), int(max(steps.max(), 0))
