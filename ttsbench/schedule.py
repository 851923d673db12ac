"""Step-indexed schedules: one abstraction for every quantity that changes during training.

Tacotron's reduction factor and batch size, SNIPER's sparsity and every learning rate are all
"a value as a function of the optimizer step". The trainer evaluates each schedule at the step
about to run, logs the value, and hands it to the model or optimizer, so all scheduled
quantities change at exact, logged step boundaries.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


class Schedule(ABC):
    """A value per 0-based optimizer step."""

    @abstractmethod
    def __call__(self, step: int) -> float: ...

    def boundaries(self) -> list[int]:
        """Steps where a piecewise-constant schedule changes (empty for smooth ones)."""
        return []


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """[(start_step, value), ...]: the value of the last row whose start_step <= step."""

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        starts = [s for s, _ in self.points]
        if not self.points or starts[0] != 0:
            raise ValueError(f"a piecewise schedule must start at step 0, got {list(self.points)}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"schedule start steps must strictly increase, got {starts}")

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]], column: int) -> "PiecewiseConstant":
        """One column of a table like Tacotron's `[[start_step, r, batch_size], ...]`."""
        return cls(tuple((int(row[0]), row[column]) for row in rows))

    def __call__(self, step: int) -> float:
        starts = [s for s, _ in self.points]
        return self.points[bisect.bisect_right(starts, step) - 1][1]

    def boundaries(self) -> list[int]:
        return [s for s, _ in self.points[1:]]

    def scaled(self, factor: float) -> "PiecewiseConstant":
        """The same values with start steps multiplied (e.g. epochs -> steps)."""
        return PiecewiseConstant(tuple((int(round(s * factor)), v) for s, v in self.points))


@dataclass(frozen=True)
class Noam(Schedule):
    """Transformer warm-up: linear rise for `warmup` steps, then 1/sqrt(step) decay.

    Normalised so the peak (at step == warmup) equals `peak`, which is easier to reason about
    than the d_model**-0.5 form; Glow-TTS's lr 1.0 with d=192, warmup 4000 is peak ~= 1.1e-3.
    """

    peak: float
    warmup: int

    def __call__(self, step: int) -> float:
        s = step + 1
        if self.warmup <= 0:
            return self.peak
        return self.peak * min(s / self.warmup, math.sqrt(self.warmup / s))


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """Linear warm-up, then halve every `half_life` steps (Tacotron-style decay)."""

    peak: float
    warmup: int
    half_life: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        return self.peak * 0.5 ** ((step + 1 - self.warmup) / self.half_life)


def learning_rate_schedule(kind: str, peak: float, warmup: int, half_life: int = 0) -> Schedule:
    """Build the learning-rate schedule a config names: constant, noam or exponential."""
    if kind == "constant":
        return Constant(peak)
    if kind == "noam":
        return Noam(peak, warmup)
    if kind == "exponential":
        if half_life <= 0:
            raise ValueError("exponential lr schedule needs lr_half_life > 0")
        return ExponentialDecay(peak, warmup, half_life)
    raise ValueError(f"unknown lr schedule {kind!r}; use constant, noam or exponential")
