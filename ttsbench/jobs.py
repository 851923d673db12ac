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
Every row of a system's job names the vocoder its audio went through (`vocoder`).
The reference job instead scores the recordings' copies through each vocoder the systems use
(variants "ceiling: VOCODER") and the recordings themselves through the reference-free
measures (variant "recording"), and keeps their audio for the report's players.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ttsbench import models, vocoders
from ttsbench.audio import AudioConfig, read_mono, save_audio
from ttsbench.data import Corpus, Utterance, load_corpus
from ttsbench.fileio import read_json, read_jsonl
from ttsbench.folders import TrainFolder
from ttsbench.metrics.alignment import hard_sentence_outcomes
from ttsbench.metrics.quality import METRICS, Scores, score, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.metrics.speed import length_spread_sentences, measure_rtf, training_steps_per_second
from ttsbench.models.base import TTSModel
from ttsbench.progress import StatusFile
from ttsbench.results import RunStore
from ttsbench.suite import CEILING_PREFIX, REFERENCE_VARIANT, Evaluation, Job, Suite, ceiling_variant
from ttsbench.text import TextProcessor
from ttsbench.tracking import TensorBoard, TrainObserver
from ttsbench.train import SPLIT_SEED, TrainOptions, train
from ttsbench.vocoders import Vocoder

SKIPPED_LOG_KEYS = {"step", "seconds", "samples", "epoch", "event", "reason"}
SKIPPED_VAL_KEYS = {"step", "seconds", "samples"}
HARD_COLUMNS = ("audio_seconds", "expected_seconds", "hit_guard", "stopped_early", "path_skipped", "path_repeated",
                "asr_skipped", "asr_repeated", "wer")


def execute(job_data: Mapping[str, Any], suite_data: Mapping[str, Any], root: str, progress: bool = True) -> dict[str, Any]:
    """Run one job; returns {"state": "finished" | "diverged", "rows": [...], "seconds": wall}.

    Raises on any other failure: the executor decides about retries and records the error.
    """
    started = time.perf_counter()
    job, suite = Job.from_dict(job_data), Suite.from_dict(suite_data)
    folder = RunStore(root).job_folder(job.id)
    folder.record_attempt()
    status = StatusFile(folder.progress, job.budget.steps, job.budget.max_seconds, [m for m, _ in job.budget.until])
    if job.kind == "reference":
        status.phase("scoring the recordings")
        state, rows = "finished", reference_rows(suite, folder, progress)
    else:
        state, rows = train_and_evaluate(job, suite, folder, progress, status)
    status.phase(state)
    return {"state": state, "rows": rows, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------
# Training


def train_and_evaluate(job: Job, suite: Suite, folder: TrainFolder, progress: bool,
                       status: StatusFile) -> tuple[str, list[dict[str, Any]]]:
    corpus = load_corpus(suite.corpus_location())
    model = models.build(job.system, models.config_for(job.system, job.preset, job.overrides), seed=job.seed)
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
        until=job.budget.until,
        until_consecutive=job.budget.consecutive,
        until_confirm=job.budget.confirm,
        vocoder=suite.vocoder,
    )
    observers: list[TrainObserver] = [status]
    if suite.tracking == "tensorboard":
        observers.append(TensorBoard(folder.tensorboard))
    state = train(model, corpus, folder.root, options, observers).state
    voice = vocoders.for_model(suite.vocoder, model)
    rows = training_rows(folder, suite.log_every, model.num_parameters())
    if state == "finished":
        status.phase("evaluating")
        rows += evaluation_rows(model, corpus, suite.evaluation, folder, progress, suite.hard_sentence_set(), voice)
    return state, [{**row, "vocoder": voice.name} for row in rows]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def training_rows(folder: TrainFolder, log_every: int, parameters: int) -> list[dict[str, Any]]:
    """The loss curve (every `log_every` steps), the validation curve and the run's totals."""
    records = read_jsonl(folder.log)
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
    for record in read_jsonl(folder.val):
        for key, value in record.items():
            if key not in SKIPPED_VAL_KEYS and (number := _number(value)) is not None:
                rows.append({"metric": f"val/{key}", "value": number, "step": record["step"],
                             "seconds": record["seconds"]})
    result = read_json(folder.result, dict)
    step, seconds = result["steps"], result["seconds"]
    totals = {"parameters": parameters, "train/steps": step, "train/seconds": seconds,
              "train/samples": result["samples"], "train/diverged": float(bool(events))}
    if "target" in result:
        totals["train/reached_target"] = float(result["target"]["reached"])
    if log:
        totals["train/steps_per_second"] = training_steps_per_second(folder.log)
        totals.update({f"train/{k}": v for k, v in log[-1].items() if k.startswith("seconds/")})
    rows += [{"metric": k, "value": float(v), "step": step, "seconds": seconds} for k, v in totals.items()]
    return rows


# --------------------------------------------------------------------------------------------
# Evaluation


def _eval_utterances(corpus: Corpus, evaluation: Evaluation) -> list[Utterance]:
    return corpus.split(seed=SPLIT_SEED)["test"][: evaluation.utterances]


def speaker_reference(utterances: Sequence[Utterance], metrics: Sequence[str]) -> SpeakerReference | None:
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


def evaluation_rows(model: TTSModel, corpus: Corpus, evaluation: Evaluation, folder: TrainFolder, progress: bool,
                    hard_sentences: list[tuple[str, str]], voice: Vocoder) -> list[dict[str, Any]]:
    """Quality on the test utterances, RTF over text lengths, outcomes on the first
    `evaluation.hard_sentences` of `hard_sentences`; all audio through `voice`."""
    rows = quality_rows(model, corpus, evaluation, folder, voice)
    if evaluation.rtf_sentences:
        rows += rtf_rows(model, evaluation, progress, voice.name)
    if evaluation.hard_sentences:
        sentences = hard_sentences[: evaluation.hard_sentences]
        outcomes = hard_sentence_outcomes(model, sentences, use_asr="wer" in evaluation.metrics, progress=progress,
                                          vocoder=voice.name)
        for record in outcomes.to_dict("records"):
            rows += [{"metric": f"hard/{c}", "value": float(record[c]), "item": record["id"]}
                     for c in HARD_COLUMNS if c in record and _number(record[c]) is not None]
    return rows


def quality_rows(model: TTSModel, corpus: Corpus, evaluation: Evaluation, folder: TrainFolder,
                 voice: Vocoder) -> list[dict[str, Any]]:
    """Each test utterance synthesised free-running, vocoded and scored against its recording."""
    processor = TextProcessor()
    utterances = _eval_utterances(corpus, evaluation)
    speaker = speaker_reference(utterances, evaluation.metrics)
    rows: list[dict[str, Any]] = []
    per_utterance = []
    for index, utterance in enumerate(utterances):
        synthesis = model.infer(torch.tensor(processor.encode(utterance.text), dtype=torch.long, device=model.device))
        waveform = voice.vocode(synthesis)
        audio, config = waveform.audio, waveform.config
        reference = read_mono(utterance.audio_path, config.sample_rate)[0]
        if index < evaluation.audio_samples:
            save_audio(folder.sample(utterance.id), audio, config)
            folder.sample_text(utterance.id).write_text(utterance.text, "utf-8")
        try:
            scores = score(reference, audio, config.sample_rate, utterance.text, evaluation.metrics, speaker,
                           utterance.id)
        except ValueError:  # no audio, or too little to analyse: nothing was heard
            scores = unheard(utterance.text, evaluation.metrics)
        per_utterance.append(scores.values)
        scores.values.update(audio_seconds=len(audio) / config.sample_rate, stopped=float(synthesis.stopped))
        rows += utterance_rows(utterance.id, scores)
    return rows + summary_rows(per_utterance)


RTF_COLUMNS = {"chars": "chars", "audio_seconds": "audio_seconds", "acoustic": "rtf_acoustic",
               "vocoder": "rtf_vocoder", "total": "rtf_total", "latency": "total_seconds",
               "peak_memory_mb": "peak_memory_mb"}


def rtf_rows(model: TTSModel, evaluation: Evaluation, progress: bool, vocoder: str) -> list[dict[str, Any]]:
    """Real-time factor per LJSpeech test sentence, spread over text length."""
    table = measure_rtf(model, length_spread_sentences(evaluation.rtf_sentences), repeats=evaluation.rtf_repeats,
                        warmup=1, progress=progress, vocoder=vocoder)
    return [{"metric": f"rtf/{name}", "value": float(record[column]), "item": record["id"]}
            for record in table.to_dict("records") for name, column in RTF_COLUMNS.items()]


def reference_rows(suite: Suite, folder: TrainFolder, progress: bool) -> list[dict[str, Any]]:
    """The ceilings every system is read against: the recordings, and their copies through each
    vocoder the suite's systems are heard through."""
    corpus = load_corpus(suite.corpus_location())
    metrics = suite.evaluation.metrics
    utterances = _eval_utterances(corpus, suite.evaluation)
    speaker = speaker_reference(utterances, metrics)
    voices = [vocoders.get(name) for name in suite.vocoders_used()]
    per_variant: dict[str, list[dict[str, float]]] = {}
    rows: list[dict[str, Any]] = []
    for index, utterance in enumerate(tqdm(utterances, desc="reference", unit="utt", disable=not progress)):
        recording, rate = read_mono(utterance.audio_path)
        keep = index < suite.evaluation.audio_samples
        if keep:
            save_audio(folder.sample(utterance.id, REFERENCE_VARIANT), recording, AudioConfig(sample_rate=rate))
            folder.sample_text(utterance.id).write_text(utterance.text, "utf-8")
        scored = [(REFERENCE_VARIANT, None, _recording_scores(recording, rate, utterance, metrics, speaker))]
        for voice in voices:
            copy = voice.copy(recording, rate)
            if keep:
                save_audio(folder.sample(utterance.id, voice.name), copy.audio, copy.config)
            reference = recording if copy.sample_rate == rate else read_mono(utterance.audio_path, copy.sample_rate)[0]
            scores = score(reference, copy.audio, copy.sample_rate, utterance.text, metrics, speaker, utterance.id)
            scores.values["audio_seconds"] = copy.seconds
            scored.append((ceiling_variant(voice.name), voice.name, scores))
        for variant, vocoder, scores in scored:
            per_variant.setdefault(variant, []).append({k: v for k, v in scores.values.items() if k != "audio_seconds"})
            rows += [{**row, "vocoder": vocoder} for row in utterance_rows(utterance.id, scores, variant)]
    for variant, values in per_variant.items():
        vocoder = None if variant == REFERENCE_VARIANT else variant.removeprefix(CEILING_PREFIX)
        rows += [{**row, "vocoder": vocoder} for row in summary_rows(values, variant)]
    return rows


def _recording_scores(recording: np.ndarray, rate: int, utterance: Utterance, metrics: Sequence[str],
                      speaker: SpeakerReference | None) -> Scores:
    """The recording itself through the measures that need no reference (and the speaker
    measure, against the other recordings)."""
    no_reference = [m for m in metrics if not METRICS[m].needs_reference_audio]
    own = score(None, recording, rate, utterance.text, no_reference) if no_reference else Scores({}, None)
    if speaker is not None:
        own.values["speaker_sim"] = speaker.similarity(recording, rate, utterance.id)
    own.values["audio_seconds"] = len(recording) / rate
    return own
