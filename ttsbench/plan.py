"""`ttsbench plan SUITE`: what a run would do, and what it would cost, before it starts.

A suite meant for days of GPU time should fail in minutes on a laptop if it is going to fail.
`plan` validates the suite, names the corpus it will use (or generate), lists the job matrix
with each job's budget, config hash and state in `--out`, and totals device-hours and cost from
the budgets' caps. `try_suite` then builds every variant's model at its preset and runs two
training steps on a batch of two of the suite's own utterances and one synthesis (its first
seconds vocoded through the suite's vocoder), on the device at hand: shapes, overrides, memory
and the vocoder path, checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ttsbench import models, vocoders
from ttsbench.audio import AudioConfig
from ttsbench.batches import collate
from ttsbench.data import Corpus, CorpusListing, check_listed_audio, load_corpus, read_metadata
from ttsbench.errors import UserError
from ttsbench.models import Synthesis
from ttsbench.options import EMBEDDED
from ttsbench.results import DONE_STATES, RunStore
from ttsbench.suite import Job, Suite
from ttsbench.synthetic import corpus_cache_path
from ttsbench.train import (
    load_model_examples,
    loss_scalers,
    optimizer_update,
    pad_values,
    ready_for_training,
    resolve_device,
    training_schedules,
)

TRY_STEPS = 2
TRY_BATCH = 2
TRY_VOCODED_SECONDS = 2.0


@dataclass(frozen=True)
class PlannedJob:
    job: Job
    state: str  # pending | finished | diverged | failed | config changed (with --out)

    @property
    def hours(self) -> float | None:
        """The budget's time cap; None for a step budget (no time known before it runs)."""
        seconds = self.job.budget.max_seconds
        return seconds / 3600 if self.job.kind == "train" and seconds is not None else None

    def budget_text(self) -> str:
        if self.job.kind == "reference":
            return "scores the recordings"
        budget = self.job.budget
        caps = [f"{budget.minutes:g} min" if budget.minutes is not None else "",
                f"{budget.steps:,} steps" if budget.steps is not None else ""]
        text = " or ".join(c for c in caps if c)
        if budget.until:
            target = ", ".join(f"{m} {t:g}" for m, t in budget.until)
            rule = [f"{budget.consecutive}x"] if budget.consecutive > 1 or not budget.confirm else []
            rule += [f"confirmed on {budget.confirm} utterances"] if budget.confirm else []
            text = f"until {target} ({', '.join(rule)}), at most {text}"
        return text


def corpus_description(suite: Suite) -> str:
    """Where the data comes from, or a UserError naming what is missing (an unset variable)."""
    spec = suite.corpus_spec()
    if spec is not None:
        path = corpus_cache_path(spec)
        where = f"cached at {path}" if (path / "metadata.csv").is_file() else f"generated into {path} on first use"
        return f"{suite.corpus} ({spec.count} utterances, seed {spec.seed}), {where}"
    location = suite.corpus_location()
    if location == EMBEDDED:
        return "embedded (24 LJSpeech clips shipped with ttsbench)"
    if problem := suite.corpus_folder_problem():
        raise UserError(problem)
    listing = read_metadata(location)
    bad = f", {len(listing.problems)} lines with problems (`ttsbench data check`)" if listing.problems else ""
    return f"{location}: {len(listing.entries):,} utterances in metadata.csv{bad}"


def plan_jobs(suite: Suite, out: str | Path | None) -> list[PlannedJob]:
    """Every job of the matrix, its time cap and its state in `out` (pending when not run there)."""
    stored = RunStore(out).jobs() if out is not None else {}
    planned = []
    for job in suite.jobs():
        entry = stored.get(job.id)
        state = "pending" if entry is None else entry["state"]
        if entry is not None and entry["config_hash"] != job.config_hash:
            state = "config changed"
        planned.append(PlannedJob(job, state))
    return planned


def plan_lines(suite: Suite, planned: Sequence[PlannedJob], corpus: str) -> list[str]:
    """The plan as the terminal shows it: header, job table, totals."""
    spec = suite.executor
    lines = [f"suite {suite.name} ({suite.path})", f"corpus: {corpus}",
             f"device: {suite.device}, {suite.threads or 'default'} CPU threads per job; vocoder {suite.vocoder}; "
             f"executor {spec.type}, {spec.parallel} at a time", ""]
    header = ("job", "system", "preset", "seed", "budget", "hash", "state")
    rows = [(p.job.id, p.job.system, p.job.preset, str(p.job.seed) if p.job.kind == "train" else "-",
             p.budget_text(), p.job.config_hash, p.state) for p in planned]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return lines + [""] + total_lines(suite, planned)


def total_lines(suite: Suite, planned: Sequence[PlannedJob]) -> list[str]:
    training = [p for p in planned if p.job.kind == "train"]
    todo = [p for p in training if p.state not in DONE_STATES]
    timed = [p.hours for p in todo if p.hours is not None]
    hours = sum(timed)
    lines = [f"{len(training)} training jobs, {len(training) - len(todo)} done, {len(todo)} to run"]
    if timed:
        parallel = max(1, suite.executor.parallel)
        lines.append(f"at most {hours:,.1f} device-hours of training for the jobs to run (their time caps; evaluation "
                     f"adds to it), ${hours * suite.price_per_hour:,.2f} at ${suite.price_per_hour:g}/h; "
                     f"{hours / parallel:,.1f} h of wall time at {parallel} at a time")
    if len(timed) < len(todo):
        lines.append(f"{len(todo) - len(timed)} jobs have a step budget only: their time is known once they run")
    return lines


# --------------------------------------------------------------------------------------------
# --try


@dataclass(frozen=True)
class TryOutcome:
    variant: str
    parameters: int
    seconds: float
    peak_memory_mb: float | None  # CUDA only
    error: str | None = None


def try_corpus(suite: Suite, count: int = 8) -> Corpus:
    """The first `count` usable utterances of the suite's corpus (a synthetic one is generated)."""
    location = suite.prepare_corpus(progress=False)
    if location == EMBEDDED:
        return load_corpus(location)
    listing = read_metadata(location)
    corpus, _ = check_listed_audio(CorpusListing(listing.root, listing.metadata, listing.entries[: count * 2], []))
    if len(corpus) < TRY_BATCH:
        raise UserError(f"{location}: fewer than {TRY_BATCH} usable utterances among the first lines "
                        "(`ttsbench data check` names the problems)")
    return Corpus(corpus.root, corpus.utterances[:count])


def try_variant(job: Job, corpus: Corpus, device: torch.device, vocoder: str) -> TryOutcome:
    """Two optimizer steps per network on a batch of two, then one synthesis, vocoded."""
    started = time.perf_counter()
    model = models.build(job.system, models.config_for(job.system, job.preset, job.overrides), seed=job.seed)
    examples = load_model_examples(model, corpus.utterances[:TRY_BATCH], progress=False)
    model.apply_schedules({k: float(s(0)) for k, s in training_schedules(model).items()})
    batch = collate(examples, model.frame_multiple(), pad_values(model)).to(device)
    optimizers, scalers = ready_for_training(model, device), loss_scalers(model, device)
    model.on_train_start([batch])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(TRY_STEPS):
        for network, optimizer in optimizers.items():
            optimizer_update(model, network, optimizer, batch, step, scalers.get(network))
    synthesis = model.infer(torch.from_numpy(examples[0].text_ids).to(device))
    vocoders.for_model(vocoder, model).vocode(first_seconds(synthesis, TRY_VOCODED_SECONDS))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return TryOutcome(job.variant, model.num_parameters(), time.perf_counter() - started, peak)


def first_seconds(synthesis: Synthesis, seconds: float) -> Synthesis:
    """The synthesis cut to its first `seconds`: an untrained autoregressive model runs to its
    length guard (minutes of audio at a full preset), and the vocoder's path is checked on less."""
    def frames(config: AudioConfig) -> int:
        return max(1, int(seconds * config.sample_rate / config.hop_length))

    linear = synthesis.linear
    if linear is not None and synthesis.linear_audio_config is not None:
        linear = linear[: frames(synthesis.linear_audio_config)]
    return replace(synthesis, mel=synthesis.mel[: frames(synthesis.audio_config)], linear=linear)


def try_suite(suite: Suite, device: str, log: Callable[[str], Any]) -> list[TryOutcome]:
    """`try_variant` for each variant (its first seed: seeds share the code path); a failure is
    recorded and the next variant tried, so one pass names every job that would fail."""
    target = resolve_device(device)
    corpus = try_corpus(suite)
    outcomes = []
    first = {}
    for job in suite.jobs():
        if job.kind == "train":
            first.setdefault(job.variant, job)
    for job in first.values():
        try:
            outcome = try_variant(job, corpus, target, suite.vocoder)
        except Exception as err:  # noqa: BLE001 - the point of --try: every failure named, then the next job
            outcome = TryOutcome(job.variant, 0, math.nan, None, f"{type(err).__name__}: {err}".splitlines()[0])
        log(try_line(outcome))
        outcomes.append(outcome)
    return outcomes


def try_line(outcome: TryOutcome) -> str:
    if outcome.error:
        return f"  {outcome.variant}: FAILED: {outcome.error}"
    memory = f", peak {outcome.peak_memory_mb:,.0f} MB" if outcome.peak_memory_mb is not None else ""
    return (f"  {outcome.variant}: ok, {outcome.parameters:,} parameters, {TRY_STEPS} steps + 1 synthesis "
            f"in {outcome.seconds:.1f} s{memory}")
