"""Render a run folder as one self-contained HTML page (plots and audio inline) plus results.csv.

Every number on the page is computed here from the run's result rows (results.jsonl) and its
job states; the alignment maps, spectrograms and players come from the files the jobs left in
RUNDIR/jobs/. Text that came from users or corpora (transcripts, suite descriptions, error
messages) is escaped by Jinja's autoescape, never inserted as markup.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from ttsbench.audio import AudioConfig, load_audio, mel_spectrogram
from ttsbench.claims import FAILS, HOLDS, judge
from ttsbench.fileio import read_json
from ttsbench.errors import RunStoreError, UserError
from ttsbench.metrics.alignment import durations_path
from ttsbench.metrics.stats import Interval
from ttsbench.metrics.summary import (
    corpus_rate,
    final_value,
    format_values,
    median_value,
    per_seed,
    pooled_interval,
    time_to,
)
from ttsbench.report import peer, plots
from ttsbench.options import VOCODERS
from ttsbench.results import RunStore
from ttsbench.suite import (
    CEILING_PREFIX,
    OLD_CEILING_VARIANT,
    REFERENCE_JOB,
    REFERENCE_VARIANT,
    is_reference_variant,
)


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
               "(validation.metrics: wer); never: not within the budget",
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
# Sections drawn from the jobs' files


def _first_jobs(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """variant -> the job id of its lowest seed that finished (the one shown in maps and players)."""
    chosen: dict[str, tuple[int, str]] = {}
    for job_id, info in jobs.items():
        if info["state"] != "finished" or job_id == REFERENCE_JOB:
            continue
        if info["variant"] not in chosen or info["seed"] < chosen[info["variant"]][0]:
            chosen[info["variant"]] = (info["seed"], job_id)
    return {variant: job for variant, (_, job) in sorted(chosen.items())}


def alignment_figures(store: RunStore, jobs: Mapping[str, Mapping[str, Any]], count: int = 4) -> list[dict[str, str]]:
    """Per variant, the alignment maps of its first seed at `count` validation steps spread evenly."""
    figures = []
    for variant, job_id in _first_jobs(jobs).items():
        stored = store.job_folder(job_id).alignment_steps()
        if not stored:
            continue
        picks = [stored[i] for i in sorted(set(np.linspace(0, len(stored) - 1, min(count, len(stored))).round().astype(int)))]
        maps, kind, utterance = {}, "attention", ""
        for step, path in picks:
            with np.load(path) as data:
                key = sorted(data.files, key=lambda k: k.endswith("/durations"))[0]  # soft attention first
                utterance = key.split("/")[0]
                if not key.endswith("/durations"):
                    maps[step] = data[key]
                    continue
                durations = data[key]
            maps[step], kind = _duration_matrix(durations), "hard durations"
        figures.append({"variant": variant, "kind": kind,
                        "image": plots.alignment_maps(maps, f"{variant}: {utterance} ({kind}, teacher-forced)")})
    return figures


def _duration_matrix(durations: np.ndarray) -> np.ndarray:
    """Hard durations as a 0/1 token x frame map, drawn like attention."""
    tokens = durations_path(durations)
    matrix = np.zeros((len(durations), max(1, len(tokens))))
    matrix[tokens, np.arange(len(tokens))] = 1.0
    return matrix


def _audio_uri(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _spectrogram_uri(path: Path, title: str) -> str:
    config = AudioConfig(trim_db=None)
    return plots.spectrogram(mel_spectrogram(load_audio(path, config), config), title)


def sample_players(store: RunStore, jobs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per test utterance kept: the recording, its copy through each vocoder, then every system."""
    reference = store.job_folder(REFERENCE_JOB)
    suffix = ".recording.wav"
    utterances = sorted(p.name[: -len(suffix)] for p in reference.samples.glob(f"*{suffix}"))
    ceilings = [name for name in VOCODERS if any(reference.samples.glob(f"*.{name}.wav"))]
    groups = []
    for utt in utterances:
        text_path = reference.sample_text(utt)
        entries = [("recording", reference.sample(utt, "recording")),
                   (f"{OLD_CEILING_VARIANT} (Griffin-Lim of the recording's mel)", reference.sample(utt, "vocoder"))]
        entries += [(f"{CEILING_PREFIX}{name} (the recording's mel through it)", reference.sample(utt, name))
                    for name in ceilings]
        entries += [(variant, store.job_folder(job).sample(utt)) for variant, job in _first_jobs(jobs).items()]
        players = [{"label": label, "audio": _audio_uri(path), "spectrogram": _spectrogram_uri(path, label[:40])}
                   for label, path in entries if path.is_file()]
        groups.append({"id": utt, "text": text_path.read_text("utf-8") if text_path.is_file() else "",
                       "players": players})
    return groups


def hard_sentence_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = results[results["metric"].str.startswith("hard/")]
    if rows.empty:
        return pd.DataFrame()
    per_seed_totals = rows.groupby(["variant", "seed", "metric"])["value"].sum(min_count=1).reset_index()
    table = per_seed_totals.groupby(["variant", "metric"])["value"].median().unstack("metric")
    sentences = rows.groupby("variant")["item"].nunique()
    table.insert(0, "sentences", sentences)
    keep = [c for c in ("sentences", "hard/hit_guard", "hard/stopped_early", "hard/asr_skipped", "hard/asr_repeated",
                        "hard/path_skipped", "hard/path_repeated") if c in table]
    table = table[keep].rename(columns=lambda c: c.removeprefix("hard/"))
    return table.reset_index()


def cost_table(results: pd.DataFrame, price_per_hour: float) -> list[dict[str, Any]]:
    """Training hours per variant (and per network where there are two), median over seeds, x price."""
    rows = []
    seconds = results[results["metric"].str.startswith("train/seconds")]
    for variant, group in seconds.groupby("variant", sort=False):
        for metric, per_metric in group.groupby("metric"):
            network = metric.removeprefix("train/seconds").lstrip("/") or "all networks"
            hours = float(per_metric.groupby("seed")["value"].last().median()) / 3600
            rows.append({"variant": variant, "network": network, "hours": hours, "cost": hours * price_per_hour})
    return rows


def benchmark_table(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    data = read_json(path, dict)
    rows = []
    for bench in data.get("benchmarks", []):
        stats = bench["stats"]
        rows.append({"group": bench.get("group") or "", "name": bench["name"], "mean_ms": stats["mean"] * 1e3,
                     "median_ms": stats["median"] * 1e3, "stddev_ms": stats["stddev"] * 1e3,
                     "rounds": stats["rounds"]})
    return sorted(rows, key=lambda r: (r["group"], r["mean_ms"]))


def peer_section(run: Path) -> dict[str, Any] | None:
    """The peer comparison's table rows and settings, when the run folder holds `make peer-bench`'s file."""
    results = peer.load(run / peer.PEER_RESULTS)
    if results is None:
        return None
    return {"rows": peer.table_rows(results), "results": results, "note": peer.markdown_table(results).splitlines()[-1]}


# --------------------------------------------------------------------------------------------
# The page


def build_report(run: str | Path, out: str | Path, benchmarks: str | Path | None = None,
                 price_per_hour: float | None = None, readme: str | Path | None = None,
                 skip_damaged: bool = False, log: Callable[[str], object] = print) -> Path:
    """Write OUT/index.html, OUT/results.csv and OUT/summary.md from the run folder RUN; with
    `skip_damaged`, each damaged results line left out is named through `log`."""
    store = RunStore(run, skip_damaged=skip_damaged)
    if not store.results_path.is_file():
        raise RunStoreError(f"{store.root} holds no results.jsonl: run a suite into it first (ttsbench run)")
    results = store.results()
    for line in store.damaged:
        log(f"left out: {line}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = store.jobs()
    suite = read_json(store.suite_path, dict)
    environment = read_json(store.environment_path, dict)
    thresholds = dict(suite["thresholds"])
    price = suite.get("price_per_hour", 0.0) if price_per_hour is None else price_per_hour
    bench_path = Path(benchmarks) if benchmarks else store.root / "benchmarks.json"
    results.to_csv(out / "results.csv", index=False)

    columns, summary = summary_table(results, thresholds)
    (out / "summary.md").write_text(markdown_summary(columns, summary, tuple(c.title for c in columns)) + "\n", "utf-8")
    curves = [(title, plots.convergence(results, metric, label, log_y))
              for title, metric, label, log_y in (
                  ("Validation mel L1 (free-running, DTW)", "val/mel_l1_dtw", "mel L1 after DTW", False),
                  ("Validation MCD (vocoded; when the suite's validation.metrics has mcd)", "val/mcd", "MCD dB", False),
                  ("Validation WER (vocoded, Whisper; when validation.metrics has wer)", "val/wer", "WER", False),
                  ("Diagonal score (teacher-forced attention)", "val/diagonal_score", "diagonal score", False),
                  ("Duration change between validations", "val/duration_change", "frames per token", True),
                  ("Synthesised / recorded length", "val/length_ratio", "length ratio", True),
                  ("Training loss (each system's own; not comparable across systems)", "train/loss", "loss", False),
              )]
    curves = [(title, image) for title, image in curves if image]  # a metric no job logged has no plot
    claims_roles = {claim: dict(roles) for claim, roles in suite.get("claims", [])}
    verdicts = judge(results, claims_roles, thresholds) if claims_roles else []
    context = {
        "suite": suite,
        "run_id": store.run_id,
        "environment": environment,
        "columns": columns,
        "summary": summary,
        "curves": curves,
        "rtf_plot": plots.rtf_against_length(results),
        "alignments": alignment_figures(store, jobs),
        "samples": sample_players(store, jobs),
        "hard": hard_sentence_table(results),
        "costs": cost_table(results, price),
        "price": price,
        "benchmarks": benchmark_table(bench_path),
        "peer": peer_section(store.root),
        "verdicts": verdicts,
        "format_values": format_values,
        "HOLDS": HOLDS,
        "FAILS": FAILS,
        "jobs": sorted(jobs.items()),
        "rows": len(results),
        "thresholds": thresholds,
    }
    templates = Environment(loader=PackageLoader("ttsbench", "report/templates"), autoescape=select_autoescape(default=True))
    html = templates.get_template("report.html.j2").render(**context)
    index = out / "index.html"
    index.write_text(html, "utf-8")
    if readme:
        update_readme(Path(readme), markdown_summary(columns, summary, README_COLUMNS), suite, environment)
    return index


README_COLUMNS = ("intelligible s", "intelligible step", "align s", "align step", "steps", "train min", "parameters",
                  "MCD dB", "PESQ", "WER", "CER", "speaker sim", "MOS", "RTF", "hard fails")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_markers(text: str, suite_name: str) -> tuple[str, str]:
    """The block a suite's table goes in: `<!-- results:SUITE:start -->` ... `:end -->` when the
    README has one for this suite, else the default `<!-- results:start -->` block."""
    named = (f"<!-- results:{suite_name}:start -->", f"<!-- results:{suite_name}:end -->")
    return named if named[0] in text and named[1] in text else (README_START, README_END)


def update_readme(path: Path, table: str, suite: Mapping[str, Any], environment: Mapping[str, Any]) -> None:
    """Replace the README's generated results block for this suite (between its markers) with `table`."""
    text = path.read_text("utf-8")
    start, end = readme_markers(text, suite["name"])
    if start not in text or end not in text:
        raise UserError(f"{path} has no {start} ... {end} block to fill")
    note = (f"Generated by `ttsbench report --readme` from suite `{suite['name']}` run on "
            f"{environment.get('started', '?')}: {environment.get('device_name', '?')} "
            f"({environment.get('cpu_count', '?')} cores, {environment.get('threads', '?')} torch threads, "
            f"device {environment.get('device', '?')}), torch {environment.get('torch', '?')}, "
            f"commit {str(environment.get('commit', '?'))[:12]}. Cells: median over seeds (min–max) "
            "[95 % bootstrap interval over all seeds' test utterances].")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{note}\n\n{table}\n{end}{tail}", "utf-8")
