"""The report's figures, each returned as a PNG data URI so the page needs no other file."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def variant_colors(results: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    """The same colour for a variant in every plot of a report (by its place among all variants)."""
    variants = sorted(results["variant"].dropna().unique())
    return {variant: COLORS[i % len(COLORS)] for i, variant in enumerate(variants)}


def to_data_uri(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _band(curves: Sequence[pd.DataFrame], x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median and min..max across seeds; seeds are put on one grid (their steps, or interpolated seconds)."""
    if x == "step":
        merged = pd.concat(curves).groupby("step")["value"]
        grid = np.asarray(sorted(merged.groups), dtype=float)
        return grid, merged.median().to_numpy(), merged.min().to_numpy(), merged.max().to_numpy()
    end = min(float(c[x].max()) for c in curves)
    start = max(float(c[x].min()) for c in curves)
    grid = np.linspace(start, end, 50) if end > start else np.asarray([start])
    stacked = np.stack([np.interp(grid, c[x].to_numpy(float), c["value"].to_numpy(float)) for c in curves])
    return grid, np.median(stacked, axis=0), stacked.min(axis=0), stacked.max(axis=0)


def convergence(results: pd.DataFrame, metric: str, label: str, log_y: bool = False) -> str | None:
    """One metric against steps (left) and training seconds (right): median line, seed range shaded."""
    rows = results[(results["metric"] == metric)].dropna(subset=["value", "step"])
    if rows.empty:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    colors = variant_colors(results)
    for variant, group in rows.groupby("variant", sort=True):
        color = colors[variant]
        curves = [seed_rows.sort_values("step") for _, seed_rows in group.groupby("seed")]
        seeds = len(curves)
        for axis, x in zip(axes, ("step", "seconds")):
            grid, median, low, high = _band(curves, x)
            axis.plot(grid, median, color=color, marker="o" if len(grid) < 12 else None, markersize=3,
                      label=f"{variant} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                axis.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training seconds (evaluation excluded)")
    axes[0].set_ylabel(label)
    for axis in axes:
        axis.grid(alpha=0.3)
        if log_y:
            axis.set_yscale("log")
    axes[1].legend(fontsize=8, loc="best")
    return to_data_uri(figure)


def rtf_against_length(results: pd.DataFrame) -> str | None:
    """RTF (total and acoustic model alone) against characters, median over seeds per sentence."""
    rows = results[results["metric"].isin(["rtf/chars", "rtf/total", "rtf/acoustic"])]
    if rows.empty:
        return None
    table = rows.pivot_table(index=["variant", "item"], columns="metric", values="value", aggfunc="median").reset_index()
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    colors = variant_colors(results)
    for variant, group in table.groupby("variant", sort=True):
        group = group.sort_values("rtf/chars")
        for axis, column in zip(axes, ("rtf/total", "rtf/acoustic")):
            axis.plot(group["rtf/chars"], group[column], marker="o", color=colors[variant], label=variant)
    axes[0].set_ylabel("RTF (lower is faster)")
    axes[0].set_title("acoustic model + Griffin-Lim", fontsize=10)
    axes[1].set_title("acoustic model alone", fontsize=10)
    for axis in axes:
        axis.set_xlabel("characters (cleaned text)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8)
    return to_data_uri(figure)


def alignment_maps(maps: Mapping[int, np.ndarray], title: str) -> str:
    """Alignment maps (tokens x decoder steps) at several training steps, side by side."""
    figure, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 2.8), squeeze=False)
    for axis, (step, matrix) in zip(axes[0], sorted(maps.items())):
        axis.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
        axis.set_title(f"step {step}", fontsize=9)
        axis.set_xlabel("decoder step", fontsize=8)
        axis.set_ylabel("text token", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    return to_data_uri(figure)


def spectrogram(mel: np.ndarray, title: str) -> str:
    """A log-mel spectrogram [frames, bins]."""
    figure, axis = plt.subplots(figsize=(4.2, 2.2))
    axis.imshow(mel.T, aspect="auto", origin="lower", interpolation="nearest", cmap="magma")
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("frame", fontsize=8)
    axis.set_ylabel("mel bin", fontsize=8)
    axis.tick_params(labelsize=7)
    return to_data_uri(figure)
