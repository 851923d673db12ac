"""The peer comparison: ttsbench's training-step time against coqui-tts's at the same shape.

`peer/bench.py` runs the two programs alternately and hands their raw measurements to
`summarize`, which keeps every run's median and reduces them to one ratio per comparison: in
each round, coqui-tts's median step time / ours (above 1: ours trains faster), then the median
over rounds. The two runs of a round ran back to back, so a machine that slows down or speeds up
between rounds moves both sides of a round's ratio alike, where it would move the two sides'
medians apart (on this project's 2-core host, one side's medians spread by up to 30 % in a run).
The results file it writes (PEER_RESULTS in the run folder) is what the report's section and the
README table are rendered from; nothing here needs coqui-tts installed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEER_RESULTS = "peer_bench.json"
SCHEMA = 2  # 2: `ratio` is the median of the per-round ratios (1: the ratio of the two medians)


@dataclass(frozen=True)
class Comparison:
    """One row: a ttsbench variant, the coqui-tts model it is timed against, and what differs."""

    variant: str
    system: str
    overrides: tuple[str, ...]
    coqui_system: str
    differences: str


def side_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-run medians (each over its timed steps), their median, and the parameter count."""
    if not runs:
        raise ValueError("a side needs at least one run")
    medians = [float(run["median_s"]) for run in runs]
    return {
        "parameters": int(runs[0]["parameters"]),
        "torch": str(runs[0].get("torch_version", "")),
        "run_medians_s": medians,
        "median_s": statistics.median(medians),
        "steps_s": [list(run["seconds"]) for run in runs],
    }


def summarize(comparisons: Sequence[Comparison], ours: Mapping[str, Sequence[Mapping[str, Any]]],
              coqui: Mapping[str, Sequence[Mapping[str, Any]]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The results document: settings, then one entry per comparison with both sides and the ratio.

    `ours` is keyed by variant, `coqui` by coqui system; each holds the raw JSON objects the step
    programs printed, one per run.
    """
    rows = []
    for comparison in comparisons:
        mine, theirs = side_summary(ours[comparison.variant]), side_summary(coqui[comparison.coqui_system])
        per_round = [c / o for o, c in zip(mine["run_medians_s"], theirs["run_medians_s"], strict=True)]
        rows.append({
            "variant": comparison.variant,
            "system": comparison.system,
            "overrides": list(comparison.overrides),
            "coqui_system": comparison.coqui_system,
            "differences": comparison.differences,
            "ours": mine,
            "coqui": theirs,
            "ratio": statistics.median(per_round),
            "round_ratios": per_round,
            "ratio_of_medians": theirs["median_s"] / mine["median_s"],
        })
    return {"schema": SCHEMA, **settings, "comparisons": rows}


def load(path: str | Path) -> dict[str, Any] | None:
    """The results document at `path`, or None when there is none (or it has another schema)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text("utf-8"))
    return data if data.get("schema") == SCHEMA else None


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def table_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """The table's cells, formatted: one row per comparison."""
    rows = []
    for row in results["comparisons"]:
        ours, coqui = row["ours"], row["coqui"]
        rows.append({
            "system": row["variant"],
            "parameters": f"{_millions(ours['parameters'])} / {_millions(coqui['parameters'])}",
            "ttsbench s": _seconds(ours),
            "coqui-tts s": _seconds(coqui),
            "ratio": f"{row['ratio']:.2f}x ({min(row['round_ratios']):.2f}-{max(row['round_ratios']):.2f})",
            "differences": row["differences"],
        })
    return rows


def _seconds(side: Mapping[str, Any]) -> str:
    medians = side["run_medians_s"]
    return f"{side['median_s']:.3f} ({min(medians):.3f}-{max(medians):.3f})"


def markdown_table(results: Mapping[str, Any]) -> str:
    """The comparison as markdown, with a line saying how it was measured."""
    rows = table_rows(results)
    header = list(rows[0]) if rows else ["system"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key] for key in header) + " |" for row in rows]
    shape = results.get("batch", {})
    lines.append("")
    lines.append(
        f"Median step time in seconds over {results.get('rounds', '?')} alternating runs per side (min-max of "
        f"the runs' medians; each run: {results.get('steps', '?')} steps after {results.get('warmup', '?')} "
        f"warm-up), batch {shape.get('batch', '?')} x {shape.get('tokens', '?')} tokens x "
        f"{shape.get('frames', '?')} frames, {results.get('threads', '?')} thread(s), torch "
        f"{results.get('torch', {}).get('ttsbench', '?')} / {results.get('torch', {}).get('coqui-tts', '?')}, "
        f"coqui-tts {results.get('coqui_tts_version', '?')}, commit {str(results.get('commit', '?'))[:12]}. "
        "Ratio: the median over rounds of coqui-tts's median / ttsbench's in the same round, the two run back to back "
        "(min-max over rounds; above 1: ttsbench trains faster). Parameters: ttsbench / coqui-tts."
    )
    return "\n".join(lines)


def ratio_agreement(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, float]:
    """Relative difference of each comparison's ratio between two results documents (|a - b| / a)."""
    before = {row["variant"]: row["ratio"] for row in first["comparisons"]}
    return {row["variant"]: abs(row["ratio"] - before[row["variant"]]) / before[row["variant"]]
            for row in second["comparisons"] if row["variant"] in before}
