"""Quantities read off the result rows of one seed, or of every seed of a variant, for tables.

A per-seed quantity takes that seed's rows and gives one number (the report shows the median
and range over seeds). An interval takes every seed's rows of a variant and pools their test
utterances, giving the set's value with its 95 % bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

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
