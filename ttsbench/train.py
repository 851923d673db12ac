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

import json
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ttsbench.audio import AudioConfig, natural_log_mel, read_mono
from ttsbench.data import Batch, Corpus, Example, bucket_batches, collate, load_examples
from ttsbench.fileio import atomic_path, atomic_write_json, atomic_write_jsonl, read_jsonl
from ttsbench.metrics.alignment import diagonal_score, focus_rate
from ttsbench.metrics.quality import mel_l1_dtw, score_pair, summarise, unheard
from ttsbench.metrics.speaker import SpeakerReference
from ttsbench.models.base import TTSModel
from ttsbench.schedule import Constant, Schedule, learning_rate_schedule

SPLIT_SEED = 0  # every training seed sees the same train/val split


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the run stopped and its last checkpoint is kept."""

    def __init__(self, reason: str, step: int):
        super().__init__(f"diverged at step {step}: {reason}")
        self.reason = reason
        self.step = step


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

    def __post_init__(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ValueError("a training run needs a budget: steps, max_seconds or both")


@dataclass
class TrainResult:
    state: str  # "finished" or "diverged"
    steps: int
    seconds: float
    samples: int
    out_dir: Path
    last_losses: dict[str, float]


def resolve_device(spec: str) -> torch.device:
    """cpu, cuda, or auto (cuda when available)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise ValueError(f"unknown device {spec!r}; use cpu, cuda or auto")
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
                target.features.update(extra.features)
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
        batch = collate([self.examples[i] for i in self.plan[index]], self.frame_multiple, self.pads)
        return batch.to(self.device)


def build_optimizers(model: TTSModel) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per network, all with the recipe of the model config."""
    return {network: build_optimizer(model, model.network_parameters(network)) for network in model.networks}


def build_optimizer(model: TTSModel, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    config = model.config
    kwargs = dict(lr=config.learning_rate, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    if config.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use {', '.join(optimizers)}")
    return optimizers[config.optimizer](params, **kwargs)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _to_float(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def validate(
    model: TTSModel,
    examples: Sequence[Example],
    pads: Mapping[str, float],
    device: torch.device,
    recordings: Sequence[Path] = (),
    audio_metrics: Sequence[str] = (),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Model-agnostic validation: free-running synthesis scored against the recordings.

    mel_l1_dtw is taken on natural-log mel magnitudes whatever the model's scaling, so the
    curves share units; DC-TTS's filterbank and framing still differ from the others', so its
    curve is comparable in scale, not bin for bin. With `audio_metrics` (and each example's
    recording in `recordings`), the synthesis is also vocoded and scored with those quality
    measures (MCD, WER, ...), as the final evaluation does; WER and CER are the corpus rates of
    the validation set. Returns mean metrics (NaN-skipping) and
    the teacher-forced alignments: `ID` -> soft attention where the model attends,
    `ID/durations` -> frames per token (for alignment maps and stability).
    """
    if audio_metrics and len(recordings) != len(examples):
        raise ValueError("scoring validation audio needs one recording per validation example")
    metrics: dict[str, list[float]] = {}
    scored: list[dict[str, float]] = []
    speaker = SpeakerReference.of_files(recordings) if "speaker_sim" in audio_metrics else None

    def add(name: str, value: float) -> None:
        metrics.setdefault(name, []).append(value)

    mel_config = model.feature_audio_configs()["mel"]
    for index, example in enumerate(examples):
        synthesis = model.infer(torch.from_numpy(example.text_ids).to(device))
        reference = natural_log_mel(example.features["mel"], mel_config)
        add("mel_l1_dtw", mel_l1_dtw(reference, natural_log_mel(synthesis.mel, synthesis.audio_config)))
        if audio_metrics:
            audio = synthesis.to_audio()
            rate = synthesis.output_audio_config.sample_rate
            recording, _ = read_mono(recordings[index], rate)
            try:
                scored.append(score_pair(recording, audio, rate, example.text, audio_metrics, speaker, example.id))
            except ValueError:  # no audio, or too little to analyse: no score, not a failed run
                scored.append(unheard(example.text, audio_metrics).values)
        add("length_ratio", synthesis.num_frames / len(reference))
        add("stopped", float(synthesis.stopped))
        if synthesis.alignment is not None:
            add("free_diagonal_score", diagonal_score(synthesis.alignment))
            add("free_focus_rate", focus_rate(synthesis.alignment))
    batch = collate(list(examples), model.frame_multiple(), dict(pads)).to(device)
    maps = {}
    for alignment in model.alignment(batch):
        if alignment.soft is not None:
            add("diagonal_score", diagonal_score(alignment.soft))
            add("focus_rate", focus_rate(alignment.soft))
            maps[alignment.id] = alignment.soft.astype(np.float32)
        if alignment.durations is not None:
            maps[f"{alignment.id}/durations"] = np.asarray(alignment.durations, dtype=np.int64)
    means = {k: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for k, v in metrics.items()}
    means.update({name: interval.value for name, interval in summarise(scored).items()})
    return means, maps


def duration_change(folder: Path, step: int, maps: Mapping[str, np.ndarray]) -> float | None:
    """Mean |change| in frames per token since the previous validation's alignment.

    Near zero means the alignment has settled: the step where it first stays low is when a
    system's durations (MAS, attention argmax) became stable.
    """
    earlier = sorted(p for p in folder.glob("step_*.npz") if int(p.stem[5:]) < step) if folder.is_dir() else []
    if not earlier:
        return None
    with np.load(earlier[-1]) as previous:
        diffs = [
            np.abs(previous[key].astype(np.int64) - value).mean()
            for key, value in maps.items()
            if key.endswith("/durations") and key in previous and previous[key].shape == value.shape
        ]
    return float(np.mean(diffs)) if diffs else None


def optimizer_update(model: TTSModel, network: str, optimizer: torch.optim.Optimizer, batch: Batch,
                     step: int) -> dict[str, float]:
    """One optimizer step of one network (the trainer's, and what the benchmarks time).

    Returns its loss parts and its gradient norm; raises TrainingDiverged on a non-finite loss
    or gradient norm before the step changes any weight.
    """
    config = model.config
    optimizer.zero_grad(set_to_none=True)
    if model.networks == ("model",):
        losses = model.training_step(batch, step)
    else:
        losses = model.training_step(batch, step, network)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss is {float(loss.detach())}", step)
    loss.backward()
    with_grad = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if config.grad_clip_value is not None:
        torch.nn.utils.clip_grad_value_(with_grad, config.grad_clip_value)
    max_norm = config.grad_clip_norm if config.grad_clip_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm)) if with_grad else 0.0
    if not math.isfinite(grad_norm):
        raise TrainingDiverged(f"{network} gradient norm is {grad_norm}", step)
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


class Trainer:
    """Runs one system on one corpus for a step budget, resuming from OUT if it holds a run."""

    def __init__(self, model: TTSModel, corpus: Corpus, out_dir: str | Path, options: TrainOptions):
        self.model = model
        self.corpus = corpus
        self.out = Path(out_dir)
        self.options = options
        self.device = resolve_device(options.device)

    # ---- state -------------------------------------------------------------------------------
    def _save_checkpoint(self, optimizers: Mapping[str, torch.optim.Optimizer], state: dict[str, Any]) -> None:
        atomic_torch_save(
            {
                "system": self.model.name,
                "config": self.model.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "torch_rng": torch.get_rng_state(),
                "step": state["step"],
                "state": dict(state),
            },
            self.out / "checkpoint.pt",
        )

    def _check_config(self) -> None:
        path = self.out / "config.json"
        current = {"system": self.model.name, "config": self.model.config.to_dict(), "seed": self.options.seed}
        current = json.loads(json.dumps(current))
        if path.is_file():
            stored = json.loads(path.read_text("utf-8"))
            if stored != current:
                raise ValueError(
                    f"{self.out} already holds a run of a different system/config/seed; "
                    "use a new --out folder (or delete the old one)"
                )
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, current)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        options, model = self.options, self.model
        self._check_config()
        if options.threads:
            torch.set_num_threads(options.threads)
        seed_everything(options.seed)
        split = self.corpus.split(seed=SPLIT_SEED)
        train_examples = load_model_examples(model, split["train"], options.progress)
        val_utts = split["val"][: options.val_utterances] if options.val_utterances else split["val"]
        val_examples = load_model_examples(model, val_utts, options.progress)
        val_recordings = [u.audio_path for u in val_utts]  # load_model_examples keeps their order
        pads = pad_values(model)
        lengths = [e.num_frames for e in train_examples]
        schedules = training_schedules(model)

        model.to(self.device)
        optimizers = build_optimizers(model)
        log_path, val_path = self.out / "log.jsonl", self.out / "val.jsonl"
        ckpt_path = self.out / "checkpoint.pt"
        state = {"step": 0, "seconds": 0.0, "samples": 0, "epoch": 0, "position": 0, "plan_batch_size": 0}

        if ckpt_path.is_file():
            checkpoint = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(checkpoint["model"])
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(checkpoint["optimizers"][name])
            torch.set_rng_state(checkpoint["torch_rng"].cpu())
            state = dict(checkpoint["state"])
            atomic_write_jsonl(log_path, [r for r in read_jsonl(log_path) if r["step"] < state["step"]])
            atomic_write_jsonl(val_path, [r for r in read_jsonl(val_path) if r["step"] <= state["step"]])
        else:
            for path in (log_path, val_path):
                path.unlink(missing_ok=True)
            warm_values = {k: s(0) for k, s in schedules.items()}
            model.apply_schedules(warm_values)
            plan_indices = bucket_batches(lengths, int(warm_values["batch_size"]), options.seed)
            model.on_train_start(
                LazyBatches(plan_indices[: model.warmup_batches_needed()], train_examples, model.frame_multiple(), pads,
                            self.device)
            )

        plan: list[list[int]] = []
        if state["plan_batch_size"]:
            plan = bucket_batches(lengths, state["plan_batch_size"], options.seed * 100_003 + state["epoch"])
        previous_values: dict[str, float] = {}
        last_losses: dict[str, float] = {}
        bar = tqdm(  # a pure wall-time budget has no known step count
            total=options.steps, initial=state["step"], desc=model.name, unit="step", disable=not options.progress
        )
        last_step = options.steps if options.steps is not None else sys.maxsize
        model.train()
        try:
            with log_path.open("a", encoding="utf-8") as log:
                spent = options.max_seconds is not None and state["seconds"] >= options.max_seconds
                for step in range(state["step"], state["step"] if spent else last_step):
                    values = {k: _to_float(s(step)) for k, s in schedules.items()}
                    model.apply_schedules(values)
                    for optimizer in optimizers.values():
                        for group in optimizer.param_groups:
                            group["lr"] = values["lr"]
                    batch_size = int(values["batch_size"])
                    if batch_size != state["plan_batch_size"] or state["position"] >= len(plan):
                        # A new batch size starts a new epoch plan; so does the end of the old one.
                        if state["plan_batch_size"]:
                            state["epoch"] += 1
                        state["plan_batch_size"], state["position"] = batch_size, 0
                        plan = bucket_batches(lengths, batch_size, options.seed * 100_003 + state["epoch"])
                    indices = plan[state["position"]]
                    state["position"] += 1
                    batch = collate([train_examples[i] for i in indices], model.frame_multiple(), pads).to(self.device)

                    losses: dict[str, float] = {}
                    for network, optimizer in optimizers.items():
                        started = time.perf_counter()
                        parts = optimizer_update(model, network, optimizer, batch, step)
                        if self.device.type == "cuda":
                            torch.cuda.synchronize()
                        elapsed = time.perf_counter() - started
                        state["seconds"] += elapsed
                        if len(optimizers) == 1:
                            losses.update(parts)
                        else:
                            state[f"seconds/{network}"] = state.get(f"seconds/{network}", 0.0) + elapsed
                            losses.update({f"{network}/{k}": v for k, v in parts.items()})
                            losses[f"seconds/{network}"] = round(state[f"seconds/{network}"], 4)
                    if len(optimizers) > 1:
                        losses["loss"] = sum(losses[f"{n}/loss"] for n in optimizers)
                    model.after_optimizer_step(step)
                    state["samples"] += len(batch)
                    state["step"] = step + 1
                    last_losses = losses

                    changed = any(previous_values.get(k) != v for k, v in values.items() if k != "lr")
                    out_of_time = options.max_seconds is not None and state["seconds"] >= options.max_seconds
                    done = step + 1 == last_step or out_of_time
                    if changed or step % options.log_every == 0 or done:
                        row = {
                            "step": step,
                            "seconds": round(state["seconds"], 4),
                            "samples": state["samples"],
                            "epoch": state["epoch"],
                            **losses,
                            **values,
                        }
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    previous_values = values
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", **{k: v for k, v in values.items() if k not in ("lr",)})

                    if options.val_every and ((step + 1) % options.val_every == 0 or done) and val_examples:
                        self._validate(val_examples, val_recordings, pads, state, val_path)
                    if (step + 1) % options.checkpoint_every == 0 or done:
                        self._save_checkpoint(optimizers, state)
                    if out_of_time:
                        break
        except TrainingDiverged as err:
            with log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps({"step": err.step, "event": "diverged", "reason": err.reason}) + "\n")
            self._write_result("diverged", state, {"reason": err.reason, "diverged_at_step": err.step})
            raise
        finally:
            bar.close()
        self._write_result("finished", state, {})
        return TrainResult("finished", state["step"], state["seconds"], state["samples"], self.out, last_losses)

    def _validate(self, examples: Sequence[Example], recordings: Sequence[Path], pads: Mapping[str, float],
                  state: dict[str, Any], path: Path) -> None:
        self.model.eval()
        try:
            with torch.no_grad():
                metrics, maps = validate(self.model, examples, pads, self.device, recordings, self.options.val_metrics)
        finally:
            self.model.train()
        folder = self.out / "alignments"
        change = duration_change(folder, state["step"], maps)
        if change is not None:
            metrics["duration_change"] = change
        if maps:
            folder.mkdir(exist_ok=True)
            np.savez_compressed(folder / f"step_{state['step']:08d}.npz", **maps)
        row = {"step": state["step"], "seconds": round(state["seconds"], 4), "samples": state["samples"], **metrics}
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def _write_result(self, status: str, state: dict[str, Any], extra: dict[str, Any]) -> None:
        result = {
            "state": status,
            "system": self.model.name,
            "steps": state["step"],
            "seconds": state["seconds"],
            "samples": state["samples"],
            "parameters": self.model.num_parameters(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            **extra,
        }
        atomic_write_json(self.out / "result.json", result)


def train(model: TTSModel, corpus: Corpus, out_dir: str | Path, options: TrainOptions) -> TrainResult:
    """Train `model` on `corpus` into `out_dir`; resumes when `out_dir` holds a checkpoint."""
    return Trainer(model, corpus, out_dir, options).run()
