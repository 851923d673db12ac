"""What both sides of the peer benchmark share: the batch shape, its lengths, and the timer.

Imported by `ours_step.py` (ttsbench's venv) and `coqui_step.py` (the coqui-tts venv), so it
needs nothing but torch and the standard library. Both sides draw the same lengths from the
same seed, so the two programs train on batches of the same shape and the same padding.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

BATCH = 8
TOKENS = 60
FRAMES = 240
LENGTH_SEED = 0


@dataclass(frozen=True)
class Lengths:
    """Token and frame counts per utterance; the longest sets the padded shape."""

    tokens: list[int]
    frames: list[int]


def batch_lengths(frame_multiple: int = 1, seed: int = LENGTH_SEED) -> Lengths:
    """BATCH utterances of TOKENS/2..TOKENS tokens and FRAMES/2..FRAMES frames, sorted longest
    text first (coqui's Tacotron packs sequences and needs that order); the first item has the
    full shape. Frame counts are floored to `frame_multiple` (Tacotron's r) on both sides."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(TOKENS // 2, TOKENS + 1, (BATCH,), generator=generator)
    frames = torch.randint(FRAMES // 2, FRAMES + 1, (BATCH,), generator=generator)
    tokens[0], frames[0] = TOKENS, FRAMES
    tokens = tokens.sort(descending=True).values
    frames = frames // frame_multiple * frame_multiple
    return Lengths([int(t) for t in tokens], [int(f) for f in frames])


@dataclass
class StepTimes:
    """One program's measurement: every step's wall time, warm-up steps first."""

    side: str
    system: str
    variant: str
    parameters: int
    threads: int
    warmup: int
    seconds: list[float] = field(default_factory=list)
    torch_version: str = torch.__version__
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds[self.warmup :])

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "median_s": self.median})


def time_steps(step: Callable[[], None], steps: int, warmup: int) -> list[float]:
    """Wall time of `warmup + steps` calls of `step` (one full training step each)."""
    seconds = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds
