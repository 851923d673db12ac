"""Render a run folder as one self-contained HTML page (plots and audio inline) plus results.csv.

Every number on the page is computed here from the run's result rows (results.jsonl) and its
job states; the alignment maps, spectrograms and players come from the files the jobs left in
RUNDIR/jobs/. Text that came from users or corpora (transcripts, suite descriptions, error
messages) is escaped by Jinja's autoescape, never inserted as markup.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
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
from ttsbench.metrics.summary import format_values
from ttsbench.report import peer, plots
from ttsbench.report.table import markdown_rows, markdown_summary, peer_table, summary_table, verdict_rows
from ttsbench.options import VOCODERS
from ttsbench.results import RunStore
from ttsbench.suite import (
    CEILING_PREFIX,
    OLD_CEILING_VARIANT,
    REFERENCE_JOB,
)


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
    """Write OUT/index.html, OUT/results.csv and OUT/summary.md (and peers.md for a suite with
    peers) from the run folder RUN; with
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
    peers = peer_table(results, [tuple(pair) for pair in suite.get("peers", [])], thresholds)
    if peers:
        (out / "peers.md").write_text(markdown_rows(peers) + "\n", "utf-8")
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
        "peers": peers,
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
    if readme:  # a suite of peers puts its pairs in the README, one of claims its verdicts, any other its summary
        if peers:
            update_readme(Path(readme), markdown_rows(peers), suite, environment)
        elif verdicts:
            update_readme(Path(readme), markdown_rows(verdict_rows(verdicts)), suite, environment, VERDICT_LEGEND)
        else:
            update_readme(Path(readme), markdown_summary(columns, summary, README_COLUMNS), suite, environment)
    return index


README_COLUMNS = ("intelligible s", "intelligible step", "align s", "align step", "steps", "train min", "parameters",
                  "MCD dB", "PESQ", "WER", "CER", "speaker sim", "MOS", "RTF", "hard fails")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
SUMMARY_LEGEND = "Cells: median over seeds (min–max) [95 % bootstrap interval over all seeds' test utterances]."
VERDICT_LEGEND = ("A check holds when every seed of the first side beats every seed of the second, does not hold "
                  "when every seed loses, and is inconclusive when the seed ranges overlap; a claim holds when all "
                  "its checks do (ttsbench/claims.py). Times are training seconds or optimizer steps.")


def readme_markers(text: str, suite_name: str) -> tuple[str, str]:
    """The block a suite's table goes in: `<!-- results:SUITE:start -->` ... `:end -->` when the
    README has one for this suite, else the default `<!-- results:start -->` block."""
    named = (f"<!-- results:{suite_name}:start -->", f"<!-- results:{suite_name}:end -->")
    return named if named[0] in text and named[1] in text else (README_START, README_END)


def update_readme(path: Path, table: str, suite: Mapping[str, Any], environment: Mapping[str, Any],
                  legend: str = SUMMARY_LEGEND) -> None:
    """Replace the README's generated results block for this suite (between its markers) with `table`."""
    text = path.read_text("utf-8")
    start, end = readme_markers(text, suite["name"])
    if start not in text or end not in text:
        raise UserError(f"{path} has no {start} ... {end} block to fill")
    note = (f"Generated by `ttsbench report --readme` from suite `{suite['name']}` run on "
            f"{environment.get('started', '?')}: {environment.get('device_name', '?')} "
            f"({environment.get('cpu_count', '?')} cores, {environment.get('threads', '?')} torch threads, "
            f"device {environment.get('device', '?')}), torch {environment.get('torch', '?')}, "
            f"commit {str(environment.get('commit', '?'))[:12]}. {legend}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{note}\n\n{table}\n{end}{tail}", "utf-8")
