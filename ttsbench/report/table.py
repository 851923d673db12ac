"""The summary table: one row per variant, one column per measure, each cell a per-seed quantity
shown as its median (and range over seeds), quality cells with their pooled 95 % interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ttsbench.claims import Verdict
from ttsbench.metrics.stats import Interval
from ttsbench.metrics.summary import (
    corpus_rate,
    final_value,
    median_value,
    per_seed,
    pooled_interval,
    time_to,
)
from ttsbench.suite import REFERENCE_VARIANT, is_reference_variant


@dataclass(frozen=True)
class Column:
    """A summary-table column: a per-seed quantity, then median (and range) across seeds."""

    title: str
    tip: str
    quantity: Callable[[pd.DataFrame], float]
    digits: int = 3
    reference: bool = False  # also shown for the recording and the vocoder ceiling
    interval: Callable[[pd.DataFrame], Interval] | None = None  # all seeds' utterances pooled: [low, high]


def _quality(title: str, tip: str, name: str, digits: int, quantity: Callable[[pd.DataFrame], float] | None = None
             ) -> Column:
    """A quality column: per-seed value (mean over utterances, or corpus rate), and its 95 % interval."""
    return Column(title, tip + "; [95 % bootstrap interval over all seeds' test utterances]",
                  quantity or final_value(f"eval/{name}"), digits, True, pooled_interval(name))


def _sum_items(metrics: tuple[str, ...]) -> Callable[[pd.DataFrame], float]:
    def quantity(rows: pd.DataFrame) -> float:
        picked = rows[rows["metric"].isin(metrics)]["value"].dropna()
        return float(picked.sum()) if len(picked) else math.nan
    return quantity


def _time_to_alignment(thresholds: Mapping[str, float], axis: str) -> Callable[[pd.DataFrame], float]:
    """Soft-attention systems: diagonal score reaches the threshold. Hard-alignment systems
    (MAS, duration policies) score trivially there, so for them: durations stop moving."""
    def quantity(rows: pd.DataFrame) -> float:
        if (rows["metric"] == "val/diagonal_score").any():
            return time_to("val/diagonal_score", thresholds["alignment"], True, axis)(rows)
        if (rows["metric"] == "val/duration_change").any():
            return time_to("val/duration_change", thresholds["duration_change"], False, axis)(rows)
        return math.nan
    return quantity


def summary_columns(thresholds: Mapping[str, float]) -> list[Column]:
    return [  # the headline first: time to intelligible speech and to alignment (MLPerf's "time to train")
        Column("intelligible s", f"training seconds to the first validation with WER <= {thresholds['wer']} "
               "(validation.metrics: wer; on the confirmation utterances where the budget has `confirm`); "
               "never: not within the budget",
               time_to("val/wer", thresholds["wer"], False, "seconds"), 0),
        Column("intelligible step", "the same, in optimizer steps", time_to("val/wer", thresholds["wer"], False, "step"), 0),
        Column("align s", f"training seconds to the first validation with diagonal score >= {thresholds['alignment']} "
               f"(attention) or duration change <= {thresholds['duration_change']} frames/token (hard alignment)",
               _time_to_alignment(thresholds, "seconds"), 0),
        Column("align step", "the same, in optimizer steps", _time_to_alignment(thresholds, "step"), 0),
        Column("parameters", "trainable parameters", final_value("parameters"), 0),
        Column("steps", "optimizer steps trained", final_value("train/steps"), 0),
        Column("train min", "training wall minutes (evaluation excluded)",
               lambda r: final_value("train/seconds")(r) / 60, 2),
        Column("steps/s", "training steps per second", final_value("train/steps_per_second"), 2),
        Column("val mel L1", "final validation mel L1 after DTW (free-running)", final_value("val/mel_l1_dtw")),
        Column("diag.", "final teacher-forced diagonal score (attention systems)", final_value("val/diagonal_score")),
        Column("free diag.", "final free-running diagonal score: far below the teacher-forced one, the model "
               "knows the alignment but loses it when fed its own output", final_value("val/free_diagonal_score")),
        Column("focus", "final teacher-forced focus rate (attention systems)", final_value("val/focus_rate")),
        Column("length ratio", "final synthesised / recorded length on validation", final_value("val/length_ratio")),
        Column("val WER", "final free-running validation WER: what the model does", final_value("val/wer")),
        Column("tf val WER", "final validation WER of the teacher-forced output through the same vocoder and ASR: "
               "what the model knows (autoregressive systems); far below val WER, it loses the speech when "
               "fed its own output", final_value("val/tf_wer")),
        Column("cut by guard", "share of the final validation syntheses that never stopped by themselves",
               lambda r: 1.0 - final_value("val/stopped")(r)),
        _quality("MCD dB", "mel-cepstral distortion (DTW, order 24) on test utterances", "mcd", 2),
        _quality("F0 RMSE ¢", "log-F0 RMSE in cents on frames voiced in both", "f0_rmse", 1),
        _quality("PESQ", "wide-band PESQ on the time-aligned synthesis", "pesq", 2),
        _quality("STOI", "STOI on the time-aligned synthesis", "stoi", 3),
        _quality("WER", "Whisper tiny.en word error rate, corpus rate over the test utterances", "wer", 3,
                 corpus_rate("wer")),
        _quality("CER", "Whisper tiny.en character error rate, corpus rate", "cer", 3, corpus_rate("cer")),
        _quality("speaker sim", "cosine of speaker embeddings to the corpus speaker's recordings", "speaker_sim", 3),
        _quality("MOS", "DistillMOS naturalness estimate (no reference; SSL-distilled predictor)", "mos", 2),
        _quality("DNSMOS", "DNSMOS P.835 overall (no reference; a noise-suppression model: second opinion)",
                 "dnsmos_ovrl", 2),
        Column("RTF", "median real-time factor, acoustic model + vocoder (lower is faster)",
               median_value("rtf/total")),
        Column("RTF acoustic", "median real-time factor of the acoustic model alone", median_value("rtf/acoustic")),
        Column("hard fails", "hard sentences cut by the length guard or stopped early",
               _sum_items(("hard/hit_guard", "hard/stopped_early")), 0),
        Column("skipped words", "words skipped on hard sentences (ASR, else the alignment path)",
               lambda r: _sum_items(("hard/asr_skipped",))(r) if (r["metric"] == "hard/asr_skipped").any()
               else _sum_items(("hard/path_skipped",))(r), 0),
    ]


def _format(values: list[float], digits: int) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return ""

    def one(v: float) -> str:
        if math.isinf(v):
            return "never"
        return f"{v:,.{digits}f}"

    low, median, high = one(min(finite)), one(float(np.median(finite))), one(max(finite))
    return median if low == high else f"{median} ({low}–{high})"


def _format_interval(interval: Interval, digits: int) -> str:
    if math.isnan(interval.low) or interval.count < 2:
        return ""
    return f" [{interval.low:,.{digits}f}, {interval.high:,.{digits}f}]"


def summary_table(results: pd.DataFrame, thresholds: Mapping[str, float]) -> tuple[list[Column], list[dict[str, Any]]]:
    """Rows per variant: cells 'median (min–max across seeds)'; empty columns dropped."""
    columns = summary_columns(thresholds)
    present = list(results["variant"].drop_duplicates())
    variants = [v for v in present if not is_reference_variant(v)]
    variants += [v for v in present if v == REFERENCE_VARIANT] + [v for v in present
                                                                    if is_reference_variant(v) and v != REFERENCE_VARIANT]
    rows = []
    for variant in variants:
        reference = is_reference_variant(variant)
        variant_rows = results[results["variant"] == variant]
        cells = {}
        for column in columns:
            if reference and not column.reference:
                cells[column.title] = ""
                continue
            cells[column.title] = _format(per_seed(results, variant, column.quantity), column.digits)
            if column.interval is not None and cells[column.title]:
                cells[column.title] += _format_interval(column.interval(variant_rows), column.digits)
        rows.append({"variant": variant, "system": variant_rows["system"].iloc[0], "vocoder": _vocoder(variant_rows),
                     "seeds": int(variant_rows["seed"].nunique()), "reference": reference, "cells": cells})
    kept = [c for c in columns if any(r["cells"][c.title] for r in rows)]
    rows = [r for r in rows if not r["reference"] or any(r["cells"][c.title] for c in kept)]
    return kept, rows


def _vocoder(rows: pd.DataFrame) -> str:
    """The vocoder a variant's audio went through ("-" for the recordings; Griffin-Lim in runs
    made before vocoders were recorded, the only one there was)."""
    if rows["variant"].iloc[0] == REFERENCE_VARIANT:
        return "-"
    named = rows["vocoder"].dropna().unique() if "vocoder" in rows else []
    return ", ".join(sorted(named)) if len(named) else "griffin-lim"


def markdown_summary(columns: list[Column], rows: list[dict[str, Any]], keep: tuple[str, ...]) -> str:
    """The summary table as Markdown (for the README), with the chosen columns."""
    chosen = [c for c in columns if c.title in keep]
    lines = ["| system | vocoder | seeds | " + " | ".join(c.title for c in chosen) + " |",
             "|---|---|---|" + "---|" * len(chosen)]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['vocoder']} | {row['seeds'] if not row['reference'] else '-'} | "
                     + " | ".join(row["cells"][c.title] or "-" for c in chosen) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Peers: the same architecture from another toolkit, side by side

PEER_COLUMNS = ("intelligible s", "intelligible step", "align s", "steps/s", "WER", "MCD dB", "MOS")


def peer_table(results: pd.DataFrame, peers: Sequence[tuple[str, str]], thresholds: Mapping[str, float]
               ) -> list[dict[str, str]]:
    """Per pair present in the results: 'ours / theirs' in each of PEER_COLUMNS (median and
    range over seeds) and the ratio of their median times to intelligible (theirs / ours)."""
    columns = {column.title: column for column in summary_columns(thresholds)}
    present = set(results["variant"])
    rows = []
    for ours, theirs in peers:
        if ours not in present or theirs not in present:
            continue
        row = {"ttsbench / peer": f"{ours} / {theirs}"}
        for title in PEER_COLUMNS:
            column = columns[title]
            row[title] = " / ".join(_format(per_seed(results, variant, column.quantity), column.digits) or "-"
                                    for variant in (ours, theirs))
        row["ratio"] = _time_ratio(*(_seconds_to_intelligible(results, v, thresholds) for v in (ours, theirs)))
        rows.append(row)
    return rows


def _seconds_to_intelligible(results: pd.DataFrame, variant: str, thresholds: Mapping[str, float]
                             ) -> tuple[float, bool]:
    """Median training seconds to intelligible over seeds, a seed that never got there counted at
    its whole training time; and whether any seed never did (then the median is a lower bound)."""
    reached = per_seed(results, variant, time_to("val/wer", thresholds["wer"], False, "seconds"))
    trained = per_seed(results, variant, final_value("train/seconds"))
    seconds = [r if math.isfinite(r) else t for r, t in zip(reached, trained)]
    return float(np.median(seconds)), any(not math.isfinite(r) for r in reached)


def _time_ratio(ours: tuple[float, bool], theirs: tuple[float, bool]) -> str:
    """theirs / ours, marked '>' or '<' where a side never got there (its time is then a bound)."""
    (mine, mine_bound), (other, other_bound) = ours, theirs
    if math.isnan(mine) or math.isnan(other) or mine <= 0 or mine_bound and other_bound:
        return "-"
    ratio = f"{other / mine:.2f}x"
    return (">" + ratio) if other_bound else ("<" + ratio) if mine_bound else ratio


def verdict_rows(verdicts: Sequence[Verdict]) -> list[dict[str, str]]:
    """One row per check, the claim and its verdict on the claim's first row, with both sides'
    per-seed values (for the README; the report shows each check's rule too)."""
    rows = []
    for verdict in verdicts:
        for index, check in enumerate(verdict.checks):
            sides = [(check.a, check.a_values), (check.b, check.b_values)]
            rows.append({"claim": verdict.title if index == 0 else "", "verdict": verdict.verdict if index == 0 else "",
                         "check": check.name, "result": check.verdict,
                         "per seed": "; ".join(f"{name}: {_seed_values(values)}" for name, values in sides if name)})
    return rows


def _seed_values(values: Sequence[float]) -> str:
    def one(v: float) -> str:
        if math.isinf(v):
            return "never"
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if v.is_integer() and abs(v) >= 100 else f"{v:.3g}"
    return ", ".join(one(v) for v in values) or "-"


def markdown_rows(rows: Sequence[Mapping[str, str]]) -> str:
    """Rows of equal keys as a Markdown table."""
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row[key] or "-" for key in header) + " |" for row in rows])
