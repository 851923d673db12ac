"""Convergence from validation curves: time to a threshold, best value, area under the curve.

A curve is rows of (step, seconds, metric values), as the trainer writes to val.jsonl.
- Reaching a threshold is direction-aware: a lower-is-better measure reaches it at the first
  validation point with value <= threshold, a higher-is-better one at value >= threshold. The
  answer is that point's step and training seconds (no interpolation between points: the
  curve is only known where it was measured). A run that never reaches it gets inf.
- Area under the curve: trapezoid over steps (or seconds), divided by the span, i.e. the
  curve's mean level over the run, comparable between runs of different lengths.
- Across seeds: median and spread (min, max) per quantity; the count of seeds that reached the
  threshold sits beside them, so "median inf" reads as "most seeds never got there".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# A validation row's measures scored again on more utterances to confirm a quality target
# (train.QualityTarget); a curve of them, where present, decides when the target was reached.
CONFIRMED = "confirm_"
LOWER_IS_BETTER = {"mel_l1_dtw", "loss"}
HIGHER_IS_BETTER = {"diagonal_score", "focus_rate", "free_diagonal_score", "free_focus_rate", "stopped"}


def higher_is_better(metric: str) -> bool:
    """Direction of a validation or quality measure; raises for names it cannot place."""
    from ttsbench.metrics.quality import METRICS

    if metric in METRICS:
        return METRICS[metric].higher_is_better
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    raise KeyError(f"no known direction for {metric!r}; pass higher_is_better explicitly")


def _ordered(curve: pd.DataFrame, metric: str) -> pd.DataFrame:
    missing = [c for c in ("step", metric) if c not in curve]
    if missing:
        raise KeyError(f"curve lacks column(s) {', '.join(missing)}")
    return curve.dropna(subset=[metric]).sort_values("step").reset_index(drop=True)


def time_to_threshold(
    curve: pd.DataFrame, metric: str, threshold: float, higher: bool | None = None
) -> tuple[float, float]:
    """(step, seconds) of the first point at or past `threshold`; (inf, inf) if never reached."""
    higher = higher_is_better(metric) if higher is None else higher
    rows = _ordered(curve, metric)
    reached = rows[metric] >= threshold if higher else rows[metric] <= threshold
    if not reached.any():
        return math.inf, math.inf
    first = rows[reached].iloc[0]
    return float(first["step"]), (float(first["seconds"]) if "seconds" in rows else math.nan)


def area_under_curve(curve: pd.DataFrame, metric: str, x: str = "step") -> float:
    """Trapezoid area of metric over `x`, divided by the x span (the curve's mean level)."""
    rows = _ordered(curve, metric).sort_values(x)
    xs, ys = rows[x].to_numpy(dtype=float), rows[metric].to_numpy(dtype=float)
    if len(xs) == 0:
        return math.nan
    span = xs[-1] - xs[0]
    if span <= 0:
        return float(ys.mean())
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / span)


def summarise_curve(
    curve: pd.DataFrame, metric: str, threshold: float, higher: bool | None = None
) -> dict[str, float]:
    """steps/seconds to threshold, best value and its step, final value, AUC over steps and seconds."""
    higher = higher_is_better(metric) if higher is None else higher
    rows = _ordered(curve, metric)
    if rows.empty:
        raise ValueError(f"the curve has no values of {metric!r}")
    steps, seconds = time_to_threshold(rows, metric, threshold, higher)
    best_index = rows[metric].idxmax() if higher else rows[metric].idxmin()
    summary = {
        "steps_to_threshold": steps,
        "seconds_to_threshold": seconds,
        "best": float(rows.loc[best_index, metric]),
        "best_step": float(rows.loc[best_index, "step"]),
        "final": float(rows[metric].iloc[-1]),
        "auc_steps": area_under_curve(rows, metric, "step"),
    }
    if "seconds" in rows:
        summary["auc_seconds"] = area_under_curve(rows, metric, "seconds")
    return summary


def per_seed(
    curves: pd.DataFrame,
    metric: str,
    threshold: float,
    higher: bool | None = None,
    by: Sequence[str] = ("system",),
    seed: str = "seed",
) -> pd.DataFrame:
    """One row per (group, seed) with `summarise_curve`'s quantities."""
    keys = [k for k in by if k in curves] + [seed]
    if seed not in curves:
        raise KeyError(f"curves lack the seed column {seed!r}")
    rows = []
    for key, group in curves.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **summarise_curve(group, metric, threshold, higher)})
    return pd.DataFrame(rows)


def across_seeds(per_seed_table: pd.DataFrame, by: Sequence[str] = ("system",), seed: str = "seed") -> pd.DataFrame:
    """Median, min, max per group and quantity; `seeds` and `reached` (threshold) counts."""
    keys = [k for k in by if k in per_seed_table]
    quantities = [c for c in per_seed_table.columns if c not in (*keys, seed)]
    groups = per_seed_table.groupby(keys, sort=True) if keys else [((), per_seed_table)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        reached = int(np.isfinite(group["steps_to_threshold"]).sum()) if "steps_to_threshold" in group else len(group)
        for quantity in quantities:
            values = group[quantity].to_numpy(dtype=float)
            rows.append({
                **dict(zip(keys, key)),
                "quantity": quantity,
                "median": float(np.median(values)),
                "min": float(values.min()),
                "max": float(values.max()),
                "seeds": len(group),
                "reached": reached,
            })
    return pd.DataFrame(rows)
