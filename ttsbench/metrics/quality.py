"""Quality measures against real recordings."""

from __future__ import annotations

import librosa
import numpy as np


def mel_l1_dtw(reference: np.ndarray, synthesis: np.ndarray) -> float:
    """Mean absolute log-mel difference along the DTW path ([frames, n_mels] inputs).

    DTW first, because a free-running system's timing differs from the recording's and a
    frame-by-frame distance would mostly measure timing.
    """
    _, path = librosa.sequence.dtw(X=reference.T, Y=synthesis.T, metric="cityblock")
    diffs = np.abs(reference[path[:, 0]] - synthesis[path[:, 1]])
    return float(diffs.mean())
