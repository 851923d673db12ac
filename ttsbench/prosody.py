"""Pitch and energy per mel frame: FastSpeech2's variance targets, as cached feature kinds.

Kept apart from `ttsbench.models.fastspeech2` (which imports torch) so that the feature workers
of `ttsbench data prepare` compute them without importing torch: importing this module registers
the kinds `pitch` and `energy`, and a worker imports it for them (`featurecache.feature_modules`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ttsbench.audio import Clip, num_frames
from ttsbench.featurecache import register_feature

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # pyworld imports the deprecated pkg_resources
    import pyworld

# ESPnet's Dio defaults (f0min, f0max), which SNIPER's LJSpeech recipe used.
PITCH_FLOOR_HZ = 80.0
PITCH_CEILING_HZ = 400.0


def pitch_feature(clip: Clip) -> np.ndarray:
    """F0 in Hz per mel frame, 0 where unvoiced: WORLD's DIO refined by StoneMask.

    DIO at the mel hop puts its frame i at sample i * hop, the centre of the centred STFT's
    frame i, so the contour lines up with the mel; the count is forced to 1 + n // hop. DIO with
    StoneMask takes ~0.2 s per 9.7 s clip here where librosa's pYIN takes ~10 s (its Viterbi
    over a fine pitch grid), and DIO is what ESPnet (hence SNIPER) and ming024 extract.
    """
    audio, config = clip.audio, clip.config
    signal = np.asarray(audio, dtype=np.float64)
    frame_period_ms = 1000.0 * config.hop_length / config.sample_rate
    coarse, times = pyworld.dio(
        signal, config.sample_rate, f0_floor=PITCH_FLOOR_HZ, f0_ceil=PITCH_CEILING_HZ, frame_period=frame_period_ms
    )
    refined = pyworld.stonemask(signal, coarse, times, config.sample_rate)
    f0 = np.zeros(num_frames(len(audio), config), dtype=np.float32)
    shared = min(len(f0), len(refined))
    f0[:shared] = refined[:shared]
    return f0


def energy_feature(clip: Clip) -> np.ndarray:
    """L2 norm of each frame of the STFT magnitude the mel is computed from (the same one)."""
    return np.linalg.norm(clip.magnitude, axis=0).astype(np.float32)


register_feature("pitch", pitch_feature, __name__)
register_feature("energy", energy_feature, __name__)
KINDS = ("pitch", "energy")
