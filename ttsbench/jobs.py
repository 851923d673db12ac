"""One job of a suite: train a system, then measure it the way every other system is measured.

`execute` is what an executor runs (in a child process, or as a Ray task): it trains into
RUNDIR/jobs/JOB (resuming from a checkpoint there), evaluates the trained model and returns
the job's result rows. It never writes the run's shared files; the driver does that.

Rows (metric names; `item` names the utterance or sentence where there is one):
- train/LOSS_PART, train/r, train/lr ...   every `log_every` steps of log.jsonl
- val/mel_l1_dtw, val/diagonal_score ...   every validation point of val.jsonl
- parameters, train/steps, train/seconds, train/samples, train/steps_per_second,
  train/seconds/NETWORK (two-network systems), train/diverged     at the final step
- eval/METRIC per test utterance: free-running synthesis vs. the recording; an error rate adds
  eval/wer/hits, /substitutions, /deletions, /insertions, and its eval/wer row carries the ASR
  hypothesis as `text`
- summary/METRIC, summary/METRIC/low, summary/METRIC/high: the set's value (corpus rate for
  WER/CER, else the mean) and its 95 % bootstrap interval over the test utterances
- rtf/chars, rtf/audio_seconds, rtf/acoustic, rtf/vocoder, rtf/total, rtf/latency,
  rtf/peak_memory_mb per LJSpeech test sentence
- hard/hit_guard, hard/stopped_early, hard/path_skipped, hard/asr_skipped, hard/wer ... per
  hard sentence
The reference job instead scores the recordings' Griffin-Lim copies (variant
"vocoder-ceiling") and the recordings themselves through the reference-free measures
(variant "recording"), and keeps their audio for the report's players.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ttsbench.audio import read_mono
from ttsbench.fileio import read_jsonl
from ttsbench.metrics.quality import METRICS, Scores, griffin_lim_copy, score, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.suite import Evaluation, Job, Suite

SKIPPED_LOG_KEYS = {"step", "seconds", "samples", "epoch", "event", "reason"}
SKIPPED_VAL_KEYS = {"step", "seconds", "samples"}
HARD_COLUMNS = ("audio_seconds", "expected_seconds", "hit_guard", "stopped_early", "path_skipped", "path_repeated",
                "asr_skipped", "asr_repeated", "wer")


def die_with_parent() -> None:
    """Linux: a job process is killed when its driver dies, so no orphan trains on after a kill."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def execute(job_data: Mapping[str, Any], suite_data: Mapping[str, Any], root: str, progress: bool = True) -> dict[str, Any]:
    """Run one job; returns {"state": "finished" | "diverged", "rows": [...], "seconds": wall}.

    Raises on any other failure: the executor decides about retries and records the error.
    """
    started = time.perf_counter()
    job, suite = Job.from_dict(job_data), suite_from_dict(suite_data)
    out = Path(root) / "jobs" / job.id
    out.mkdir(parents=True, exist_ok=True)
    with (out / "attempts.jsonl").open("a", encoding="utf-8") as attempts:
        attempts.write(json.dumps({"started": time.time(), "host": socket.gethostname(), "pid": os.getpid()}) + "\n")
    if job.kind == "reference":
        state, rows = "finished", reference_rows(suite, out, progress)
    else:
        state, rows = train_and_evaluate(job, suite, out, progress)
    return {"state": state, "rows": rows, "seconds": time.perf_counter() - started}


def attempts(root: str | Path, job_id: str) -> int:
    """How many times a job was started (each attempt, on any node, adds a line)."""
    path = Path(root) / "jobs" / job_id / "attempts.jsonl"
    return len(path.read_text("utf-8").splitlines()) if path.is_file() else 0


def suite_from_dict(data: Mapping[str, Any]) -> Suite:
    """The inverse of `Suite.to_dict` for the fields a job needs (executors pass plain data)."""
    from ttsbench.suite import Budget, ExecutorSpec, SystemEntry

    values = dict(data)
    values["budget"] = Budget(**values["budget"])
    values["evaluation"] = Evaluation(**{k: tuple(v) if isinstance(v, list) else v for k, v in values["evaluation"].items()})
    values["executor"] = ExecutorSpec(**values["executor"])
    values["seeds"] = tuple(values["seeds"])
    values["corpus_options"] = tuple(tuple(o) for o in values["corpus_options"])
    values["thresholds"] = tuple(tuple(t) for t in values["thresholds"])
    values["claims"] = tuple((c, tuple(tuple(r) for r in roles)) for c, roles in values["claims"])
    values["systems"] = tuple(
        SystemEntry(s["system"], s["variant"], s["preset"], tuple(tuple(o) for o in s["overrides"]),
                    Budget(**s["budget"]) if s["budget"] else None)
        for s in values["systems"]
    )
    return Suite(**values)


# --------------------------------------------------------------------------------------------
# Training


def train_and_evaluate(job: Job, suite: Suite, out: Path, progress: bool) -> tuple[str, list[dict[str, Any]]]:
    from ttsbench import models
    from ttsbench.data import load_corpus
    from ttsbench.train import TrainingDiverged, TrainOptions, train

    corpus = load_corpus(suite.corpus_location())
    config = models.get(job.system).Config.preset(job.preset).with_overrides(list(job.overrides))
    model = models.build(job.system, config, seed=job.seed)
    options = TrainOptions(
        steps=job.budget.steps,
        seed=job.seed,
        device=suite.device,
        log_every=1,
        val_every=suite.val_every,
        checkpoint_every=suite.checkpoint_every,
        val_utterances=suite.val_utterances,
        progress=progress,
        threads=suite.threads,
        max_seconds=job.budget.max_seconds,
        val_metrics=suite.val_metrics,
    )
    try:
        train(model, corpus, out, options)
        state = "finished"
    except TrainingDiverged:
        state = "diverged"
    rows = training_rows(out, suite.log_every, model.num_parameters())
    if state == "finished":
        rows += evaluation_rows(model, corpus, suite.evaluation, out / "samples", progress, suite.hard_sentence_set())
    return state, rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def training_rows(out: Path, log_every: int, parameters: int) -> list[dict[str, Any]]:
    """The loss curve (every `log_every` steps), the validation curve and the run's totals."""
    from ttsbench.metrics.speed import training_steps_per_second

    records = read_jsonl(out / "log.jsonl")
    log = [r for r in records if "event" not in r]
    events = [r for r in records if r.get("event") == "diverged"]
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(log):
        if record["step"] % log_every and i != len(log) - 1:
            continue
        for key, value in record.items():
            if key in SKIPPED_LOG_KEYS or key.startswith("seconds/"):  # running totals: one row at the end
                continue
            if (number := _number(value)) is not None:
                rows.append({"metric": f"train/{key}", "value": number, "step": record["step"] + 1,
                             "seconds": record["seconds"]})
    for record in read_jsonl(out / "val.jsonl"):
        for key, value in record.items():
            if key not in SKIPPED_VAL_KEYS and (number := _number(value)) is not None:
                rows.append({"metric": f"val/{key}", "value": number, "step": record["step"],
                             "seconds": record["seconds"]})
    result = json.loads((out / "result.json").read_text("utf-8"))
    step, seconds = result["steps"], result["seconds"]
    totals = {"parameters": parameters, "train/steps": step, "train/seconds": seconds,
              "train/samples": result["samples"], "train/diverged": float(bool(events))}
    if log:
        totals["train/steps_per_second"] = training_steps_per_second(out / "log.jsonl")
        totals.update({f"train/{k}": v for k, v in log[-1].items() if k.startswith("seconds/")})
    rows += [{"metric": k, "value": float(v), "step": step, "seconds": seconds} for k, v in totals.items()]
    return rows


# --------------------------------------------------------------------------------------------
# Evaluation


def _eval_utterances(corpus, evaluation: Evaluation):
    from ttsbench.train import SPLIT_SEED

    return corpus.split(seed=SPLIT_SEED)["test"][: evaluation.utterances]


def speaker_reference(utterances, metrics) -> SpeakerReference | None:
    """The target voice from the evaluation utterances' recordings, when speaker_sim is scored."""
    if "speaker_sim" not in metrics:
        return None
    return SpeakerReference.of_files(u.audio_path for u in utterances)


def utterance_rows(utterance_id: str, scores: Scores, variant: str | None = None) -> list[dict[str, Any]]:
    """One utterance's eval/ rows; the ASR hypothesis rides on the eval/wer row as `text`."""
    rows = []
    for name, value in scores.values.items():
        row = {"metric": f"eval/{name}", "value": value, "item": utterance_id}
        if name == "wer" and scores.transcript is not None:
            row["text"] = scores.transcript
        if variant:
            row["variant"] = variant
        rows.append(row)
    return rows


def summary_rows(per_utterance: list[dict[str, float]], variant: str | None = None) -> list[dict[str, Any]]:
    """summary/METRIC (corpus rate or mean) with summary/METRIC/low and /high: its 95 % bootstrap interval."""
    rows = []
    for name, interval in summarise(per_utterance).items():
        for suffix, value in (("", interval.value), ("/low", interval.low), ("/high", interval.high)):
            rows.append({"metric": f"summary/{name}{suffix}", "value": value, **({"variant": variant} if variant else {})})
    return rows


def evaluation_rows(model, corpus, evaluation: Evaluation, samples: Path, progress: bool,
                    hard_sentences: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Quality on the test utterances, RTF over text lengths, outcomes on the first
    `evaluation.hard_sentences` of `hard_sentences`."""
    import torch

    from ttsbench.audio import save_audio
    from ttsbench.metrics.speed import length_spread_sentences, measure_rtf
    from ttsbench.text import TextProcessor

    rows: list[dict[str, Any]] = []
    processor = TextProcessor()
    model.eval()
    utterances = _eval_utterances(corpus, evaluation)
    speaker = speaker_reference(utterances, evaluation.metrics)
    per_utterance = []
    for index, utterance in enumerate(utterances):
        with torch.no_grad():
            synthesis = model.infer(torch.tensor(processor.encode(utterance.text), dtype=torch.long, device=model.device))
        audio = synthesis.to_audio()
        config = synthesis.output_audio_config
        reference = read_mono(utterance.audio_path, config.sample_rate)[0]
        if index < evaluation.audio_samples:
            save_audio(samples / f"{utterance.id}.wav", audio, config)
            (samples / f"{utterance.id}.txt").write_text(utterance.text, "utf-8")
        try:
            scores = score(reference, audio, config.sample_rate, utterance.text, evaluation.metrics, speaker,
                           utterance.id)
        except ValueError:  # no audio, or too little to analyse: nothing was heard
            scores = unheard(utterance.text, evaluation.metrics)
        per_utterance.append(scores.values)
        scores.values.update(audio_seconds=len(audio) / config.sample_rate, stopped=float(synthesis.stopped))
        rows += utterance_rows(utterance.id, scores)
    rows += summary_rows(per_utterance)

    if evaluation.rtf_sentences:
        table = measure_rtf(model, length_spread_sentences(evaluation.rtf_sentences), repeats=evaluation.rtf_repeats,
                            warmup=1, progress=progress)
        columns = {"chars": "chars", "audio_seconds": "audio_seconds", "acoustic": "rtf_acoustic",
                   "vocoder": "rtf_vocoder", "total": "rtf_total", "latency": "total_seconds",
                   "peak_memory_mb": "peak_memory_mb"}
        for record in table.to_dict("records"):
            rows += [{"metric": f"rtf/{name}", "value": float(record[column]), "item": record["id"]}
                     for name, column in columns.items()]

    if evaluation.hard_sentences:
        from ttsbench.metrics.alignment import hard_sentence_outcomes

        sentences = hard_sentences[: evaluation.hard_sentences]
        outcomes = hard_sentence_outcomes(model, sentences, use_asr="wer" in evaluation.metrics, progress=progress)
        for record in outcomes.to_dict("records"):
            rows += [{"metric": f"hard/{c}", "value": float(record[c]), "item": record["id"]}
                     for c in HARD_COLUMNS if c in record and _number(record[c]) is not None]
    return rows


def reference_rows(suite: Suite, out: Path, progress: bool) -> list[dict[str, Any]]:
    """The ceiling every system is read against: the recordings and their Griffin-Lim copies."""
    from tqdm.auto import tqdm

    from ttsbench.audio import AudioConfig, save_audio
    from ttsbench.data import load_corpus

    corpus = load_corpus(suite.corpus_location())
    config = AudioConfig()
    metrics = suite.evaluation.metrics
    no_reference = [m for m in metrics if not METRICS[m].needs_reference_audio]
    utterances = _eval_utterances(corpus, suite.evaluation)
    speaker = speaker_reference(utterances, metrics)
    rows: list[dict[str, Any]] = []
    ceilings, recordings = [], []
    for index, utterance in enumerate(tqdm(utterances, desc="reference", unit="utt", disable=not progress)):
        recording = read_mono(utterance.audio_path, config.sample_rate)[0]
        copy = griffin_lim_copy(recording, config.sample_rate, config)
        if index < suite.evaluation.audio_samples:
            save_audio(out / "samples" / f"{utterance.id}.recording.wav", recording, config)
            save_audio(out / "samples" / f"{utterance.id}.vocoder.wav", copy, config)
            (out / "samples" / f"{utterance.id}.txt").write_text(utterance.text, "utf-8")
        ceiling = score(recording, copy, config.sample_rate, utterance.text, metrics, speaker, utterance.id)
        own = (score(None, recording, config.sample_rate, utterance.text, no_reference)
               if no_reference else Scores({}, None))
        if speaker is not None:  # the same measure, the recording against the other recordings
            own.values["speaker_sim"] = speaker.similarity(recording, config.sample_rate, utterance.id)
        ceilings.append(dict(ceiling.values))
        recordings.append(dict(own.values))
        ceiling.values["audio_seconds"] = len(copy) / config.sample_rate
        own.values["audio_seconds"] = len(recording) / config.sample_rate
        rows += utterance_rows(utterance.id, ceiling, "vocoder-ceiling") + utterance_rows(utterance.id, own, "recording")
    return rows + summary_rows(ceilings, "vocoder-ceiling") + summary_rows(recordings, "recording")
