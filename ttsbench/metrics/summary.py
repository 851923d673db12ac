"""Quantities read off the result rows of one seed, or of every seed of a variant, for tables.

A per-seed quantity takes that seed's rows and gives one number (the report shows the median
and range over seeds). An interval takes every seed's rows of a variant and pools their test
utterances, giving the set's value with its 95 % bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ttsbench.metrics.convergence import CONFIRMED, time_to_threshold
from ttsbench.metrics.quality import COUNT_PARTS, METRICS, count_keys
from ttsbench.metrics.stats import Interval, mean_interval, rate_interval


def _count_table(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per (seed, utterance) with columns errors and length, from eval/NAME/PART rows."""
    metrics = [f"eval/{key}" for key in count_keys(name)]
    picked = rows[rows["metric"].isin(metrics)].dropna(subset=["value"])
    table = picked.pivot_table(index=["seed", "item"], columns="metric", values="value", aggfunc="first")
    if table.empty or len(table.columns) < len(COUNT_PARTS):
        return pd.DataFrame(columns=["errors", "length"])
    hits, subs, dels, ins = (table[m] for m in metrics)
    return pd.DataFrame({"errors": subs + dels + ins, "length": hits + subs + dels})


def corpus_rate(name: str) -> Callable[[pd.DataFrame], float]:
    """Per seed: an error rate over its test utterances, summed errors / summed reference length."""
    def quantity(rows: pd.DataFrame) -> float:
        counts = _count_table(rows, name)
        return float(counts["errors"].sum() / counts["length"].sum()) if counts["length"].sum() > 0 else math.nan
    return quantity


def pooled_interval(name: str) -> Callable[[pd.DataFrame], Interval]:
    """Every seed's test utterances pooled: the corpus rate (error rates) or mean, with its interval."""
    def interval(rows: pd.DataFrame) -> Interval:
        if METRICS[name].counts is not None:
            counts = _count_table(rows, name)
            return rate_interval(counts["errors"].tolist(), counts["length"].tolist())
        return mean_interval(rows.loc[rows["metric"] == f"eval/{name}", "value"].dropna().tolist())
    return interval


def variant_rows(results: pd.DataFrame, variant: str) -> pd.DataFrame:
    rows = results[results["variant"] == variant]
    if rows.empty:
        raise LookupError(f"the results hold no rows of variant {variant!r}")
    return rows


def per_seed(results: pd.DataFrame, variant: str, quantity: Callable[[pd.DataFrame], float]) -> list[float]:
    """`quantity` of each seed's rows, in seed order."""
    rows = variant_rows(results, variant)
    return [float(quantity(group)) for _, group in sorted(rows.groupby("seed"), key=lambda kv: kv[0])]


def final_value(metric: str) -> Callable[[pd.DataFrame], float]:
    """The metric at the seed's last step (a curve) or its mean over items (an evaluation)."""
    def quantity(rows: pd.DataFrame) -> float:
        picked = rows[rows["metric"] == metric].dropna(subset=["value"])
        if picked.empty:
            return math.nan
        if picked["step"].notna().any() and (picked["item"] == "").all():
            return float(picked.sort_values("step")["value"].iloc[-1])
        return float(picked["value"].mean())
    return quantity


def median_value(metric: str) -> Callable[[pd.DataFrame], float]:
    def quantity(rows: pd.DataFrame) -> float:
        values = rows.loc[rows["metric"] == metric, "value"].dropna()
        return float(values.median()) if len(values) else math.nan
    return quantity


def time_to(metric: str, threshold: float, higher: bool, axis: str = "step") -> Callable[[pd.DataFrame], float]:
    """Steps (or training seconds) until the validation curve first reaches `threshold`; inf if never.

    Where a quality target confirmed the measure on more utterances (`val/confirm_...` rows, scored
    only at validations whose own few utterances met it), the confirmed curve decides.
    """
    def quantity(rows: pd.DataFrame) -> float:
        confirmed = "val/" + CONFIRMED + metric.removeprefix("val/")
        name = confirmed if metric.startswith("val/") and (rows["metric"] == confirmed).any() else metric
        curve = rows[rows["metric"] == name][["step", "seconds", "value"]].rename(columns={"value": metric})
        if curve.empty:
            return math.nan
        steps, seconds = time_to_threshold(curve.dropna(subset=[metric]), metric, threshold, higher)
        return steps if axis == "step" else seconds
    return quantity


def format_values(values: Sequence[float]) -> str:
    """Seed values and their spread, e.g. '0.41, 0.52 (0.41..0.52)'."""
    if not values:
        return "-"
    shown = ", ".join("never" if math.isinf(v) else f"{v:.3g}" for v in values)
    finite = [v for v in values if np.isfinite(v)]
    return shown if len(values) == 1 or not finite else f"{shown} (median {np.median(values):.3g})"
