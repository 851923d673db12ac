"""The one training loop for every system.

It owns everything that must be identical across systems for the comparison to be fair:
seeding, data order, the optimizer and learning-rate schedule built from the model config,
gradient clipping, schedules applied at exact step boundaries, validation, checkpoints, resume
and the log. A step is identified by its 0-based index, the `step` passed to `training_step`.

Output folder:
  log.jsonl        one row per logged step: step, seconds (training wall time, evaluation
                   excluded), samples, epoch, every loss part, every scheduled value, grad_norm
  val.jsonl        one row per validation: step (= updates done), seconds, samples, metrics
  checkpoint.pt    the latest checkpoint (atomic write; loaded with weights_only=True)
  alignments/      teacher-forced validation alignments at each validation step
  config.json      the model config; result.json the final state (finished or diverged)
"""

from __future__ import annotations

import errno
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ttsbench import vocoders
from ttsbench.audio import AudioConfig, natural_log_mel, read_mono
from ttsbench.batches import Batch, Example, bucket_batches, collate, load_examples
from ttsbench.data import Corpus, Utterance
from ttsbench.errors import CheckpointError, DeviceUnavailable, OptionError, UserError, first_line
from ttsbench.fileio import atomic_path, atomic_write_json, atomic_write_jsonl, foreign_entries, read_json, read_jsonl
from ttsbench.folders import TrainFolder
from ttsbench.metrics.alignment import diagonal_score, focus_rate
from ttsbench.metrics.convergence import CONFIRMED, higher_is_better
from ttsbench.metrics.quality import mel_l1_dtw, score, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.models import load_weights, read_checkpoint
from ttsbench.models.base import Alignment, TTSModel
from ttsbench.options import DEVICES
from ttsbench.schedule import Constant, Schedule, learning_rate_schedule
from ttsbench.tracking import TrainObserver

SPLIT_SEED = 0  # every training seed sees the same train/val split


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf or exploded; the run stopped, its last checkpoint kept.

    `checkpoint` says whether one exists (set by the trainer), so the message never promises
    a checkpoint that was not written.
    """

    def __init__(self, reason: str, step: int):
        super().__init__(reason, step)
        self.reason = reason
        self.step = step
        self.checkpoint = ""

    def __str__(self) -> str:
        return f"diverged at step {self.step}: {self.reason}" + (f"; {self.checkpoint}" if self.checkpoint else "")


@dataclass
class TrainOptions:
    steps: int | None  # None: no step cap, the wall-time budget `max_seconds` ends training
    seed: int = 0
    device: str = "auto"
    log_every: int = 1
    val_every: int = 0
    checkpoint_every: int = 100
    val_utterances: int | None = None
    progress: bool = True
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    max_seconds: float | None = None  # a wall-time budget in training seconds; whichever ends first
    val_metrics: tuple[str, ...] = ()  # quality measures (metrics.quality.METRICS) on vocoded validation audio
    vocoder: str = vocoders.DEFAULT  # what validation audio goes through (a system it cannot serve: its own path)
    # A quality target: stop at the validation where every (measure, threshold) has been met
    # `until_consecutive` times in a row; steps and max_seconds then only cap a run that never does.
    until: tuple[tuple[str, float], ...] = ()
    until_consecutive: int = 1
    # A few validation utterances are a noisy estimate: with `until_confirm`, a validation that
    # meets the target on its `val_utterances` is scored again on this many validation utterances
    # (the first `val_utterances` among them), and only that confirmation decides (0: none).
    until_confirm: int = 0
    divergence_factor: float = 1e6  # a loss or gradient norm this many times its early level has diverged
    divergence_ceiling: float = 1e9  # ... and so has one above this, whatever its early level

    def __post_init__(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ValueError("a training run needs a budget: steps, max_seconds or both")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.vocoder not in vocoders.NAMES:
            raise ValueError(f"unknown vocoder {self.vocoder!r}; known: {', '.join(vocoders.NAMES)}")
        if self.until and not self.val_every:
            raise ValueError("a quality target (until) needs validation: set val_every")
        if self.until_confirm and not self.until:
            raise ValueError("until_confirm confirms a quality target: set until")
        if self.until_confirm and self.until_confirm <= (self.val_utterances or 0):
            raise ValueError(f"until_confirm ({self.until_confirm}) must exceed val_utterances "
                             f"({self.val_utterances}): it scores more utterances than a validation does")


@dataclass
class TrainResult:
    state: str  # "finished" or "diverged"
    steps: int
    seconds: float
    samples: int
    out_dir: Path
    last_losses: dict[str, float]
    message: str = ""  # a diverged run: at which step, why, and whether a checkpoint is kept
    reached_target: bool | None = None  # with a quality target (TrainOptions.until): met before the cap?


def resolve_device(spec: str) -> torch.device:
    """cpu, cuda, or auto (cuda when available)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {spec!r} was asked for, but torch sees no CUDA device on this machine")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise OptionError(f"unknown device {spec!r}; use {', '.join(DEVICES)}")
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model_examples(model: TTSModel, utterances: Sequence, progress: bool) -> list[Example]:
    """Examples holding the features the model declares, each computed with its own front end."""
    by_config: dict[AudioConfig, list[str]] = {}
    for kind, config in model.feature_audio_configs().items():
        by_config.setdefault(config, []).append(kind)
    merged: list[Example] | None = None
    for config, kinds in by_config.items():
        examples = load_examples(utterances, config, kinds=kinds, progress=progress)
        if merged is None:
            merged = examples
        else:
            for target, extra in zip(merged, examples):
                target.include(extra)
    return merged or []


def pad_values(model: TTSModel) -> dict[str, float]:
    return {kind: config.silence_value for kind, config in model.feature_audio_configs().items()}


class LazyBatches(Sequence):
    """Batches collated and moved to the device only when indexed (SNIP may ask for hundreds)."""

    def __init__(self, plan: list[list[int]], examples: Sequence[Example], frame_multiple: int,
                 pads: Mapping[str, float], device: torch.device):
        self.plan, self.examples, self.frame_multiple = plan, examples, frame_multiple
        self.pads, self.device = dict(pads), device

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Batch:  # type: ignore[override]
        return self.collate(self.plan[index])

    def collate(self, indices: Sequence[int]) -> Batch:
        """The examples at `indices` as one padded batch on the device (through pinned memory
        on CUDA, so the copy runs while the GPU computes)."""
        batch = collate([self.examples[i] for i in indices], self.frame_multiple, self.pads)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def lengths(self) -> list[int]:
        return [e.num_frames for e in self.examples]


class Prefetcher:
    """Collates the next step's batch on a background thread while the current step trains.

    Only the collation moves off the training thread: which batch comes next is still decided in
    order by the epoch plan, so the data order, hence every loss, is that of collating in line.
    """

    def __init__(self, batches: LazyBatches):
        self.batches = batches
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttsbench-batches")
        self.pending: tuple[tuple[int, ...], Future[Batch]] | None = None

    def ahead(self, indices: Sequence[int]) -> None:
        """Start collating the batch of `indices` (the next step's)."""
        self.pending = (tuple(indices), self.pool.submit(self.batches.collate, indices))

    def take(self, indices: Sequence[int]) -> Batch:
        """The batch of `indices`: the one prepared ahead when it is that one, else collated now."""
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == tuple(indices):
            return pending[1].result()
        return self.batches.collate(indices)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def build_optimizers(model: TTSModel) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per network, all with the recipe of the model config."""
    return {network: build_optimizer(model, model.network_parameters(network)) for network in model.networks}


def ready_for_training(model: TTSModel, device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """The model on `device`, compiled when its config asks, and its optimizers: what the trainer
    and `ttsbench plan --try` both do before the first step."""
    model.to(device)
    if model.config.compile:
        model.compile_networks()
    return build_optimizers(model)


def loss_scalers(model: TTSModel, device: torch.device) -> dict[str, torch.amp.GradScaler]:
    """fp16 needs its loss scaled so small gradients survive (one scaler per optimizer); bf16 and
    fp32 do not, so they get none."""
    return {network: torch.amp.GradScaler(device.type) for network in model.networks} if model.config.amp == "fp16" else {}


def build_optimizer(model: TTSModel, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    config = model.config
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    if config.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use {', '.join(optimizers)}")
    # Adam and AdamW fused: one vectorised pass over each weight per step (~4x fewer passes over
    # memory than the multi-tensor path); RAdam has no fused kernel, so foreach (one multi-tensor
    # kernel per update step instead of torch's per-parameter Python loop, its CPU default).
    fastest = {"fused": True} if config.optimizer in ("adam", "adamw") else {"foreach": True}
    return optimizers[config.optimizer](params, lr=config.learning_rate, betas=tuple(config.betas), eps=config.eps,
                                        weight_decay=config.weight_decay, **fastest)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_path`. torch reports a failed write (a full disk) as a C++
    `enforce fail` without errno or path; it becomes an OSError naming the checkpoint, ENOSPC
    when the disk is indeed full."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            if "write" not in str(err):
                raise
            full = shutil.disk_usage(path.parent).free < 16 * 2**20
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          "no space left on the device" if full else f"write failed ({first_line(err)})",
                          str(path)) from None


def _to_float(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


@dataclass(frozen=True)
class ValidationSet:
    """Validation utterances as the model reads them, their recordings, and the batch pads."""

    examples: Sequence[Example]
    recordings: Sequence[Path]
    pads: Mapping[str, float]

    def first(self, count: int | None) -> "ValidationSet":
        """The first `count` utterances (None: all)."""
        return ValidationSet(self.examples[:count], self.recordings[:count], self.pads)


@dataclass
class Validation:
    """What one validation gives.

    metrics:    mean measures over the validation utterances (WER/CER: corpus rates)
    alignments: teacher-forced: `ID` -> soft attention [T_text, T_steps] where the model
                attends, `ID/durations` -> frames per token (alignment maps and stability)
    audio:      (ID, samples, rate) of each vocoded synthesis, when audio measures were scored
                or `keep_audio` asked for it
    """

    metrics: dict[str, float]
    alignments: dict[str, np.ndarray]
    audio: list[tuple[str, np.ndarray, int]]


def validate(
    model: TTSModel,
    examples: Sequence[Example],
    pads: Mapping[str, float],
    device: torch.device,
    recordings: Sequence[Path] = (),
    audio_metrics: Sequence[str] = (),
    vocoder: str = vocoders.DEFAULT,
    keep_audio: bool = False,
    teacher_forced: bool = True,
) -> Validation:
    """Model-agnostic validation: free-running synthesis scored against the recordings.

    mel_l1_dtw is taken on natural-log mel magnitudes whatever the model's scaling, so the
    curves share units; DC-TTS's filterbank and framing still differ from the others', so its
    curve is comparable in scale, not bin for bin. With `audio_metrics` (and each example's
    recording in `recordings`), the synthesis is also vocoded (by `vocoder`, or the system's own
    path where that vocoder cannot serve it) and scored with those quality
    measures (MCD, WER, ...), as the final evaluation does; WER and CER are the corpus rates of
    the validation set. Returns mean metrics (NaN-skipping), the teacher-forced alignments and
    the vocoded audio (see `Validation`; with `keep_audio` it is vocoded even when not scored).
    `teacher_forced` also hears the teacher-forced output (`teacher_forced_scores`).
    """
    if audio_metrics and len(recordings) != len(examples):
        raise ValueError("scoring validation audio needs one recording per validation example")
    metrics: dict[str, list[float]] = {}
    scored: list[dict[str, float]] = []
    heard: list[tuple[str, np.ndarray, int]] = []
    speaker = SpeakerReference.of_files(recordings) if "speaker_sim" in audio_metrics else None

    def add(name: str, value: float) -> None:
        metrics.setdefault(name, []).append(value)

    mel_config = model.feature_audio_configs()["mel"]
    voice = vocoders.resolve(vocoder, mel_config, str(device))
    for index, example in enumerate(examples):
        synthesis = model.infer(torch.from_numpy(example.text_ids).to(device))
        reference = natural_log_mel(example.features["mel"], mel_config)
        add("mel_l1_dtw", mel_l1_dtw(reference, natural_log_mel(synthesis.mel, synthesis.audio_config)))
        if audio_metrics or keep_audio:
            waveform = voice.vocode(synthesis)
            heard.append((example.id, waveform.audio, waveform.sample_rate))
        if audio_metrics:
            scored.append(heard_scores(recordings[index], waveform, example, audio_metrics, speaker))
        add("length_ratio", synthesis.num_frames / len(reference))
        add("stopped", float(synthesis.stopped))
        if synthesis.alignment is not None:
            add("free_diagonal_score", diagonal_score(synthesis.alignment))
            add("free_focus_rate", focus_rate(synthesis.alignment))
    batch = collate(list(examples), model.frame_multiple(), dict(pads)).to(device)
    maps = {}
    alignments = model.alignment(batch)
    for alignment in alignments:
        if alignment.soft is not None:
            add("diagonal_score", diagonal_score(alignment.soft))
            add("focus_rate", focus_rate(alignment.soft))
            maps[alignment.id] = alignment.soft.astype(np.float32)
        if alignment.durations is not None:
            maps[f"{alignment.id}/durations"] = np.asarray(alignment.durations, dtype=np.int64)
    means = {k: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for k, v in metrics.items()}
    means.update({name: interval.value for name, interval in summarise(scored).items()})
    if teacher_forced:
        means.update(teacher_forced_scores(alignments, examples, recordings, audio_metrics, voice))
    return Validation(means, maps, heard)


def heard_scores(recording: Path, waveform: vocoders.Waveform, example: Example, metrics: Sequence[str],
                 speaker: SpeakerReference | None = None) -> dict[str, float]:
    """`metrics` of one vocoded synthesis against its recording; an unheard row when there is no
    audio, or too little to analyse (no score, not a failed run)."""
    try:
        return score(read_mono(recording, waveform.sample_rate)[0], waveform.audio, waveform.sample_rate,
                     example.text, metrics, speaker, example.id).values
    except ValueError:
        return unheard(example.text, metrics).values


TEACHER_FORCED_METRICS = ("wer", "cer")


def teacher_forced_scores(
    alignments: Sequence[Alignment],
    examples: Sequence[Example],
    recordings: Sequence[Path],
    audio_metrics: Sequence[str],
    voice: vocoders.Vocoder,
) -> dict[str, float]:
    """`tf_wer` (and `tf_cer`): the teacher-forced outputs vocoded and heard by the same ASR as
    the free-running ones, when the model makes them and WER is scored. Far below the free-running
    WER, the model knows the speech but loses it when fed its own output."""
    asked = [name for name in TEACHER_FORCED_METRICS if name in audio_metrics]
    forced = {a.id: a.teacher_forced for a in alignments if a.teacher_forced is not None}
    if not asked or not forced:
        return {}
    scored = [heard_scores(recording, voice.vocode(forced[example.id]), example, asked)
              for example, recording in zip(examples, recordings) if example.id in forced]
    return {f"tf_{name}": interval.value for name, interval in summarise(scored).items()}


def duration_change(folder: TrainFolder, step: int, maps: Mapping[str, np.ndarray]) -> float | None:
    """Mean |change| in frames per token since the previous validation's alignment.

    Near zero means the alignment has settled: the step where it first stays low is when a
    system's durations (MAS, attention argmax) became stable.
    """
    earlier = [path for saved, path in folder.alignment_steps() if saved < step]
    if not earlier:
        return None
    with np.load(earlier[-1]) as previous:
        diffs = [
            np.abs(previous[key].astype(np.int64) - value).mean()
            for key, value in maps.items()
            if key.endswith("/durations") and key in previous and previous[key].shape == value.shape
        ]
    return float(np.mean(diffs)) if diffs else None


AMP_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """The mixed-precision context of a training forward pass (a no-op when `amp` is off)."""
    return torch.autocast(device.type, dtype=AMP_TYPES.get(amp, torch.bfloat16), enabled=amp != "off")


def optimizer_update(model: TTSModel, network: str, optimizer: torch.optim.Optimizer, batch: Batch,
                     step: int, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One optimizer step of one network (the trainer's, and what the benchmarks time).

    Returns its loss parts and its gradient norm; raises TrainingDiverged on a non-finite loss
    or gradient norm before the step changes any weight. With an fp16 `scaler` a non-finite
    gradient is the scaler's signal instead: it skips that step and lowers its scale.
    """
    config = model.config
    optimizer.zero_grad(set_to_none=True)
    with autocast(config.amp, batch.text_ids.device):
        if model.networks == ("model",):
            losses = model.training_step(batch, step)
        else:
            losses = model.training_step(batch, step, network)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss is {float(loss.detach())}", step)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    with_grad = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    # foreach: torch's CPU default is a Python loop over the weights (~500 of them in Glow-TTS)
    if config.grad_clip_value is not None:
        torch.nn.utils.clip_grad_value_(with_grad, config.grad_clip_value, foreach=True)
    max_norm = config.grad_clip_norm if config.grad_clip_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm, foreach=True)) if with_grad else 0.0
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif not math.isfinite(grad_norm):
        raise TrainingDiverged(f"{network} gradient norm is {grad_norm}", step)
    else:
        optimizer.step()
    return {**{k: _to_float(v) for k, v in losses.items()}, "grad_norm": round(grad_norm, 6)}


def training_schedules(model: TTSModel) -> dict[str, Schedule]:
    """Every value the trainer schedules: the system's own, plus batch size and learning rate."""
    config = model.config
    schedules = dict(model.schedules())
    schedules.setdefault("batch_size", Constant(config.batch_size))
    schedules["lr"] = learning_rate_schedule(
        config.lr_schedule, config.learning_rate, config.warmup_steps, config.lr_half_life
    )
    return schedules


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint, so a resumed run continues exactly.

    position is the next batch of the epoch plan; plan_batch_size the batch size that plan was
    built for (0 before the first step); network_seconds the training seconds per network of
    a system with several (DC-TTS's Text2Mel and SSRN).
    """

    step: int = 0
    seconds: float = 0.0
    samples: int = 0
    epoch: int = 0
    position: int = 0
    plan_batch_size: int = 0
    network_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # copies network_seconds too

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainState":
        """Also reads checkpoints written before this class, whose per-network totals were
        `seconds/NETWORK` keys of a flat dict."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        legacy = {k.split("/", 1)[1]: float(v) for k, v in data.items() if k.startswith("seconds/")}
        known["network_seconds"] = {**legacy, **dict(known.get("network_seconds", {}))}
        return cls(**known)


class EpochPlan:
    """The order of batches: bucketed by length, shuffled anew per (seed, epoch); a change of
    batch size (a schedule row) or the end of the plan starts the next epoch."""

    def __init__(self, lengths: Sequence[int], seed: int):
        self.lengths, self.seed = list(lengths), seed
        self.batches: list[list[int]] = []
        self._built_for: tuple[int, int] | None = None

    def _build(self, batch_size: int, epoch: int) -> None:
        self.batches = bucket_batches(self.lengths, batch_size, self.seed * 100_003 + epoch)
        self._built_for = (batch_size, epoch)

    def peek(self, state: TrainState, batch_size: int) -> list[int]:
        """The indices `next_batch` would give next, leaving `state` and the plan as they are."""
        built = self._built_for, self.batches
        indices = self.next_batch(replace(state), batch_size)
        self._built_for, self.batches = built
        return indices

    def next_batch(self, state: TrainState, batch_size: int) -> list[int]:
        """Indices of the next batch; advances `state` (position, and epoch at a new plan)."""
        if state.plan_batch_size and self._built_for != (state.plan_batch_size, state.epoch):
            self._build(state.plan_batch_size, state.epoch)  # a resumed run rebuilds its plan
        if batch_size != state.plan_batch_size or state.position >= len(self.batches):
            if state.plan_batch_size:
                state.epoch += 1
            state.plan_batch_size, state.position = batch_size, 0
            self._build(batch_size, state.epoch)
        indices = self.batches[state.position]
        state.position += 1
        return indices


@dataclass(frozen=True)
class QualityTarget:
    """Stop once validation meets every threshold `consecutive` times in a row.

    Direction comes from each measure (WER falls, diagonal score rises); a measure missing
    from a validation row, or NaN there, has not met its threshold. With `confirm`, a row meets
    the target only when its confirmation (`confirm_` + measure, scored on more utterances
    because `screened` said the row's own few might have) does too.
    """

    thresholds: tuple[tuple[str, float], ...]
    consecutive: int = 1
    confirm: bool = False

    def screened(self, row: Mapping[str, Any]) -> bool:
        """Whether the row's own measures meet every threshold."""
        return self._meets(row, "")

    def met(self, row: Mapping[str, Any]) -> bool:
        return self._meets(row, "") and (not self.confirm or self._meets(row, CONFIRMED))

    def _meets(self, row: Mapping[str, Any], prefix: str) -> bool:
        for metric, threshold in self.thresholds:
            value = row.get(prefix + metric)
            if value is None or not math.isfinite(value):
                return False
            if not (value >= threshold if higher_is_better(metric) else value <= threshold):
                return False
        return True

    def reached(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the last `consecutive` validation rows all met the target."""
        if not self.thresholds or len(rows) < self.consecutive:
            return False
        return all(self.met(row) for row in rows[-self.consecutive:])


class DivergenceGuard:
    """Stops a run whose loss or gradient norm explodes, not only one that turns NaN or inf.

    A value counts as exploded above `factor` times its early level (the median magnitude of
    its first `EARLY_STEPS` values, at least 1) or above `ceiling`: a learning rate of 1e6
    gives Tacotron a loss of 1e20 while every number stays finite.
    """

    EARLY_STEPS = 10

    def __init__(self, factor: float, ceiling: float):
        self.factor, self.ceiling = factor, ceiling
        self.early: dict[str, list[float]] = {}

    def check(self, name: str, value: float, step: int) -> None:
        early = self.early.setdefault(name, [])
        level = float(np.median(early)) if early else 0.0  # the values before this one
        limit = min(self.ceiling, self.factor * max(1.0, level))
        if abs(value) > limit:
            raise TrainingDiverged(f"{name} {value:.3g} exploded (limit {limit:.3g})", step)
        if len(early) < self.EARLY_STEPS:
            early.append(abs(value))


class Trainer:
    """Runs one system on one corpus for a step budget, resuming from OUT if it holds a run."""

    def __init__(self, model: TTSModel, corpus: Corpus, out_dir: str | Path, options: TrainOptions,
                 observers: Sequence[TrainObserver] = ()):
        self.model = model
        self.corpus = corpus
        self.observers = list(observers)
        self.folder = TrainFolder(Path(out_dir))
        self.out = self.folder.root
        self.options = options
        self.device = resolve_device(options.device)
        self.guard = DivergenceGuard(options.divergence_factor, options.divergence_ceiling)
        self.saved_step: int | None = None  # the step of checkpoint.pt, once one is loaded or written
        self.reached_target: bool | None = None  # set by the loop when the run has a quality target
        self.target = QualityTarget(options.until, options.until_consecutive, bool(options.until_confirm))
        self.confirmation: ValidationSet | None = None  # set by `run` when the target is confirmed
        self.scalers = loss_scalers(model, self.device)

    # ---- the folder: what a resume must match --------------------------------------------------
    def _save_checkpoint(self, optimizers: Mapping[str, torch.optim.Optimizer], state: TrainState) -> None:
        atomic_torch_save(
            {
                "system": self.model.name,
                "config": self.model.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
                "torch_rng": torch.get_rng_state(),
                "step": state.step,
                "state": state.to_dict(),
            },
            self.folder.checkpoint,
        )
        self.saved_step = state.step

    def _check_folder(self) -> None:
        """Refuse a folder of another system, config, seed or corpus before anything is written."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out}: exists and is not a folder")
        ours = (self.folder.attempts.name, self.folder.progress.name, self.folder.tensorboard.name)
        if foreign := foreign_entries(self.out, self.folder.config.name, ours=ours):
            raise UserError(f"--out {self.out}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} "
                            "but no ttsbench training run (no config.json); name a new or empty folder "
                            "(nothing was written)")
        current = json.loads(json.dumps(
            {"system": self.model.name, "config": self.model.config.to_dict(), "seed": self.options.seed}))
        corpus = {"path": str(self.corpus.root), "digest": self.corpus.digest(), "utterances": len(self.corpus)}
        if self.folder.config.is_file() and read_json(self.folder.config, dict) != current:
            raise UserError(f"{self.out} already holds a run of a different system/config/seed; "
                            "use a new --out folder (or delete the old one)")
        if self.folder.corpus.is_file():
            stored = read_json(self.folder.corpus, dict)
            if stored["digest"] != corpus["digest"]:
                raise UserError(f"{self.out} was trained on corpus {stored['path']} (digest {stored['digest']}); "
                                f"{corpus['path']} differs (digest {corpus['digest']}): resuming would mix two "
                                "corpora; use a new --out folder")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder.config, current)
        atomic_write_json(self.folder.corpus, corpus)

    def _resume_or_start(self, optimizers: Mapping[str, torch.optim.Optimizer], schedules: Mapping[str, Schedule],
                         train_set: LazyBatches) -> TrainState:
        """The state of the checkpoint in OUT (logs cut back to it), or a fresh start."""
        log_path, val_path = self.folder.log, self.folder.val
        if self.folder.checkpoint.is_file():
            checkpoint = read_checkpoint(self.folder.checkpoint, self.device, self.model.name)
            load_weights(self.model, checkpoint["model"], self.folder.checkpoint)
            try:
                for name, optimizer in optimizers.items():
                    optimizer.load_state_dict(checkpoint["optimizers"][name])
                for name, scaler in self.scalers.items():
                    scaler.load_state_dict(checkpoint.get("scalers", {})[name])
                torch.set_rng_state(checkpoint["torch_rng"].cpu())
            except (RuntimeError, KeyError, ValueError) as err:
                raise CheckpointError(f"{self.folder.checkpoint}: cannot resume from it ({first_line(err)})") from None
            state = TrainState.from_dict(checkpoint["state"])
            self.saved_step = state.step
            atomic_write_jsonl(log_path, [r for r in read_jsonl(log_path) if r["step"] < state.step])
            atomic_write_jsonl(val_path, [r for r in read_jsonl(val_path) if r["step"] <= state.step])
            return state
        for path in (log_path, val_path):
            path.unlink(missing_ok=True)
        warm_values = {k: s(0) for k, s in schedules.items()}
        self.model.apply_schedules(warm_values)
        plan = bucket_batches(train_set.lengths(), int(warm_values["batch_size"]), self.options.seed)
        self.model.on_train_start(LazyBatches(plan[: self.model.warmup_batches_needed()], train_set.examples,
                                              train_set.frame_multiple, train_set.pads, self.device))
        return TrainState()

    # ---- one step ------------------------------------------------------------------------------
    def _apply_values(self, optimizers: Mapping[str, torch.optim.Optimizer], values: Mapping[str, float]) -> None:
        self.model.apply_schedules(values)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = values["lr"]

    def _update_networks(self, optimizers: Mapping[str, torch.optim.Optimizer], batch: Batch, step: int,
                         state: TrainState) -> dict[str, float]:
        """One optimizer step per network, timed; loss parts prefixed by network when several."""
        losses: dict[str, float] = {}
        budgets = self.model.network_steps()
        for network, optimizer in optimizers.items():
            if step >= budgets.get(network, step + 1):
                continue  # this network's own budget is spent; its totals stay in the log
            started = time.perf_counter()
            parts = optimizer_update(self.model, network, optimizer, batch, step, self.scalers.get(network))
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            state.seconds += elapsed
            label = "" if len(optimizers) == 1 else f"{network} "
            self.guard.check(f"{label}loss", parts["loss"], step)
            if network not in self.scalers or math.isfinite(parts["grad_norm"]):  # fp16: the scaler's skip
                self.guard.check(f"{label}gradient norm", parts["grad_norm"], step)
            if len(optimizers) == 1:
                losses.update(parts)
                continue
            state.network_seconds[network] = state.network_seconds.get(network, 0.0) + elapsed
            losses.update({f"{network}/{k}": v for k, v in parts.items()})
        if len(optimizers) > 1:
            losses.update({f"seconds/{n}": round(s, 4) for n, s in state.network_seconds.items()})
            losses["loss"] = sum(v for k, v in losses.items() if k.endswith("/loss"))
        return losses

    @staticmethod
    def _log_row(step: int, state: TrainState, losses: Mapping[str, float], values: Mapping[str, float]) -> str:
        row = {"step": step, "seconds": round(state.seconds, 4), "samples": state.samples, "epoch": state.epoch,
               **losses, **values}
        return json.dumps(row) + "\n"

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        options, model = self.options, self.model
        self._check_folder()
        if options.threads:
            torch.set_num_threads(options.threads)
        seed_everything(options.seed)
        split = self.corpus.split(seed=SPLIT_SEED)
        pads = pad_values(model)
        train_set = LazyBatches([], load_model_examples(model, split["train"], options.progress),
                                model.frame_multiple(), pads, self.device)
        validation = self._validation_set(split["val"], pads)
        schedules = training_schedules(model)
        optimizers = ready_for_training(model, self.device)
        state = self._resume_or_start(optimizers, schedules, train_set)
        try:
            last_losses = self._loop(optimizers, schedules, train_set, state, validation)
        except TrainingDiverged as err:
            self._record_divergence(err, state)
            raise
        target = {} if self.reached_target is None else {"target": {
            "until": dict(options.until), "consecutive": options.until_consecutive, "confirm": options.until_confirm,
            "reached": self.reached_target}}
        self._write_result("finished", state, target)
        return TrainResult("finished", state.step, state.seconds, state.samples, self.out, last_losses,
                           reached_target=self.reached_target)

    def _validation_set(self, utterances: Sequence[Utterance], pads: Mapping[str, float]) -> ValidationSet:
        """What each validation scores, and (`until_confirm`) what confirms a target it meets."""
        options = self.options
        if options.val_utterances is not None:
            utterances = utterances[: max(options.val_utterances, options.until_confirm)]
        examples = load_model_examples(self.model, utterances, options.progress)
        loaded = ValidationSet(examples, [u.audio_path for u in utterances], pads)  # the same order
        if options.until_confirm:
            self.confirmation = loaded.first(options.until_confirm)
        return loaded.first(options.val_utterances)

    def _loop(self, optimizers: Mapping[str, torch.optim.Optimizer], schedules: Mapping[str, Schedule],
              train_set: LazyBatches, state: TrainState, validation: ValidationSet) -> dict[str, float]:
        """Steps from `state.step` until the step or time budget ends; returns the last losses."""
        options = self.options
        plan = EpochPlan(train_set.lengths(), options.seed)
        last_step = options.steps if options.steps is not None else sys.maxsize
        previous: dict[str, float] = {}
        losses: dict[str, float] = {}
        bar = tqdm(total=options.steps, initial=state.step, desc=self.model.name, unit="step",
                   disable=not options.progress)  # a pure wall-time budget has no known step count
        prefetch = Prefetcher(train_set)
        target = self.target
        val_rows = read_jsonl(self.folder.val)  # a resumed run counts the validations it already has
        self.model.train()
        try:
            with self.folder.log.open("a", encoding="utf-8") as log:
                reached = target.reached(val_rows)  # changes only when a validation adds a row
                spent = reached or (options.max_seconds is not None and state.seconds >= options.max_seconds)
                for step in range(state.step, state.step if spent else last_step):
                    values = {k: _to_float(s(step)) for k, s in schedules.items()}
                    self._apply_values(optimizers, values)
                    batch = prefetch.take(plan.next_batch(state, int(values["batch_size"])))
                    if step + 1 < last_step:
                        prefetch.ahead(plan.peek(state, int(_to_float(schedules["batch_size"](step + 1)))))
                    losses = self._update_networks(optimizers, batch, step, state)
                    self.model.after_optimizer_step(step)
                    state.samples += len(batch)
                    state.step = step + 1
                    out_of_time = options.max_seconds is not None and state.seconds >= options.max_seconds
                    capped = step + 1 == last_step or out_of_time
                    if options.val_every and ((step + 1) % options.val_every == 0 or capped) and validation.examples:
                        val_rows.append(self._validate(validation, state))
                        reached = target.reached(val_rows)
                    done = capped or reached
                    changed = any(previous.get(k) != v for k, v in values.items() if k != "lr")
                    if changed or step % options.log_every == 0 or done:
                        log.write(self._log_row(step, state, losses, values))
                        log.flush()
                        for observer in self.observers:
                            observer.on_step(step, state.seconds, losses, values)
                    previous = values
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", **{k: v for k, v in values.items() if k != "lr"})
                    if (step + 1) % options.checkpoint_every == 0 or done:
                        self._save_checkpoint(optimizers, state)
                    if done:
                        break
        finally:
            prefetch.close()
            bar.close()
        self.reached_target = reached if target.thresholds else None
        return losses

    def _record_divergence(self, err: TrainingDiverged, state: TrainState) -> None:
        """The diverged step in the log and result.json, and whether a checkpoint is left."""
        saved = self.saved_step
        err.checkpoint = (f"the last good checkpoint (step {saved}) is kept in {self.folder.checkpoint}"
                          if saved is not None else "no checkpoint was written before it")
        with self.folder.log.open("a", encoding="utf-8") as log:
            log.write(json.dumps({"step": err.step, "event": "diverged", "reason": err.reason}) + "\n")
        self._write_result("diverged", state, {"reason": err.reason, "diverged_at_step": err.step,
                                               "checkpoint_step": saved})

    def _validate(self, validation: ValidationSet, state: TrainState) -> dict[str, Any]:
        """Validate now, append the row to val.jsonl and return it."""
        # infer and alignment switch to eval mode without autograd and back (TTSModel.evaluating)
        result = validate(self.model, validation.examples, validation.pads, self.device, validation.recordings,
                          self.options.val_metrics, self.options.vocoder,
                          keep_audio=any(o.wants_audio for o in self.observers))
        metrics, maps = result.metrics, result.alignments
        change = duration_change(self.folder, state.step, maps)
        if change is not None:
            metrics["duration_change"] = change
        metrics.update(self._confirm(metrics))
        if maps:
            self.folder.alignments.mkdir(exist_ok=True)
            np.savez_compressed(self.folder.alignment_path(state.step), **maps)
        row = {"step": state.step, "seconds": round(state.seconds, 4), "samples": state.samples,
               **{f"seconds/{n}": round(s, 4) for n, s in state.network_seconds.items()}, **metrics}
        with self.folder.val.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        for observer in self.observers:
            observer.on_validation(row, maps, result.audio)
        return row

    def _confirm(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The target's measures on the confirmation set (`confirm_` + name), scored only when this
        validation's own few utterances met the target."""
        if self.confirmation is None or not self.target.screened(metrics):
            return {}
        until = dict(self.options.until)
        heard = [name for name in self.options.val_metrics if name in until]
        result = validate(self.model, self.confirmation.examples, self.confirmation.pads, self.device,
                          self.confirmation.recordings, heard, self.options.vocoder, teacher_forced=False)
        # duration_change needs the previous validation's alignments: the validation's own stands
        return {CONFIRMED + name: result.metrics.get(name, metrics.get(name, math.nan)) for name in until}

    def _write_result(self, status: str, state: TrainState, extra: dict[str, Any]) -> None:
        result = {
            "state": status,
            "system": self.model.name,
            "steps": state.step,
            "seconds": state.seconds,
            "samples": state.samples,
            "parameters": self.model.num_parameters(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            **extra,
        }
        atomic_write_json(self.folder.result, result)


def train(model: TTSModel, corpus: Corpus, out_dir: str | Path, options: TrainOptions,
          observers: Sequence[TrainObserver] = ()) -> TrainResult:
    """Train `model` on `corpus` into `out_dir`; resumes when `out_dir` holds a checkpoint.

    The one entry point for the CLI and suite jobs: a run that diverges is a result (state
    "diverged", with its message), not an exception, so every caller handles it the same way.
    `observers` watch it as it goes (TensorBoard, the suite's progress display); they are
    closed when it ends, however it ends.
    """
    try:
        return Trainer(model, corpus, out_dir, options, observers).run()
    except TrainingDiverged as err:
        result = read_json(TrainFolder(Path(out_dir)).result, dict)
        return TrainResult("diverged", result["steps"], result["seconds"], result["samples"], Path(out_dir), {},
                           str(err))
    finally:
        for observer in observers:
            observer.close()
