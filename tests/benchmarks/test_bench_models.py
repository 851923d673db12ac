"""Speed of every registered system at its tiny preset: one training step, and inference.

Every system gets the same batch (the first four utterances of the embedded corpus's train
split, which `Corpus.split` keeps sorted by id) and the same sentence, on one CPU thread (the
session fixture in tests/conftest.py), so pytest-benchmark's groups "train-step" and
"inference" put the systems side by side.

Set-up follows the Trainer's start-up and is not timed: the model is built with seed 0, every
schedule (the system's own, "batch_size" and "lr") is evaluated at step 0 and handed to
`apply_schedules`, then `on_train_start` sees `warmup_batches_needed()` warm-up batches (the
benchmark batch repeated): Glow-TTS's data-dependent init, FastSpeech2's feature statistics and
SNIPER's SNIP scores, the RL duration model's length prior.

train-step: the Trainer's own `optimizer_update` for each network (DC-TTS has two, Text2Mel and
SSRN), then `after_optimizer_step`: zero_grad, forward, backward, the config's gradient clipping
(by value and/or by norm) and the optimizer step, at the step-0 learning rate.
inference: `model.infer(text_ids)` under `torch.no_grad()`, the acoustic model alone (no
Griffin-Lim). The models are untrained, so the frames produced (in `extra_info`) are whatever an
untrained model emits: autoregressive systems that never fire their stop rule decode up to
their guard (`stopped` False), which dominates their time.

train-step, full size (`test_bench_train_step_full`): the same step at the sizes users train, on
the shape `make peer-bench` compares with coqui-tts (batch 8 x 60 tokens x 240 frames of random
input, full presets; set-up from `peer/ours_step.py`, so the two measure the same thing), for
Glow-TTS, FastSpeech2 dense and SNIPER, and Tacotron at r = 2. Regressions in the speed work
show here without coqui installed.

Run with `pytest tests/benchmarks/test_bench_models.py --benchmark-only`.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ttsbench import models
from ttsbench.batches import Batch, collate
from ttsbench.data import Corpus
from ttsbench.models.base import TTSModel
from ttsbench.text import TextProcessor
from ttsbench.train import (
    LazyBatches,
    build_optimizers,
    load_model_examples,
    optimizer_update,
    pad_values,
    training_schedules,
)

SEED = 0
TRAIN_UTTERANCES = 4
SENTENCE = "Printing, in the only sense with which we are at present concerned."
SYSTEMS = models.names()


def step0_values(model: TTSModel) -> dict[str, float]:
    """Every schedule the Trainer applies (batch_size and lr included), at step 0."""
    return {key: float(schedule(0)) for key, schedule in training_schedules(model).items()}


def ready_model(name: str, corpus: Corpus) -> tuple[TTSModel, Batch, dict[str, float]]:
    """A tiny model after the Trainer's start-up, and the benchmark batch collated for it."""
    model = models.build(name, preset="tiny", seed=SEED)
    utterances = sorted(corpus.split(seed=0)["train"], key=lambda u: u.id)[:TRAIN_UTTERANCES]
    examples = load_model_examples(model, utterances, progress=False)
    assert [e.id for e in examples] == [u.id for u in utterances]
    pads = pad_values(model)
    values = step0_values(model)
    model.apply_schedules(values)  # before collating: Tacotron's r sets the frame multiple
    warmup_plan = [list(range(len(examples)))] * model.warmup_batches_needed()
    model.on_train_start(LazyBatches(warmup_plan, examples, model.frame_multiple(), pads, torch.device("cpu")))
    batch = collate(examples, model.frame_multiple(), pads)
    return model, batch, values


def reseed() -> None:
    """Same random draws every round (dropout, SSRN's training windows, sampling in infer)."""
    torch.manual_seed(SEED)


@pytest.mark.parametrize("name", SYSTEMS)
def test_bench_train_step(benchmark, name, embedded_corpus):
    model, batch, values = ready_model(name, embedded_corpus)
    optimizers = build_optimizers(model)
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = values["lr"]
    model.train()
    losses: dict[str, list[float]] = {network: [] for network in optimizers}
    grad_norms: dict[str, list[float]] = {network: [] for network in optimizers}

    def train_step() -> None:
        for network, optimizer in optimizers.items():
            parts = optimizer_update(model, network, optimizer, batch, 0)
            losses[network].append(parts["loss"])
            grad_norms[network].append(parts["grad_norm"])
        model.after_optimizer_step(0)

    benchmark.group = "train-step"
    benchmark.extra_info["parameters"] = model.num_parameters()
    benchmark.extra_info["networks"] = list(optimizers)
    benchmark.extra_info["batch"] = len(batch)
    benchmark.extra_info["frames"] = int(batch.mel.shape[1])
    benchmark.pedantic(train_step, setup=reseed, rounds=5, warmup_rounds=1)
    benchmark.extra_info["loss"] = {network: round(values[-1], 4) for network, values in losses.items()}

    for network in optimizers:
        assert len(losses[network]) == 6  # one warm-up round + five timed rounds
        assert all(math.isfinite(v) for v in losses[network]), f"{name}/{network} loss not finite: {losses[network]}"
        assert all(math.isfinite(v) for v in grad_norms[network]), f"{name}/{network} gradient norm not finite"
        assert any(v > 0 for v in grad_norms[network]), f"{name}/{network} got no gradient"


FULL_SIZE = {  # label: (system, config overrides), as peer/bench.py's comparisons
    "glow-tts": ("glow-tts", ()),
    "fastspeech2-dense": ("fastspeech2-sniper", ("sparsity_variant=dense", "snip_batches=1")),
    "fastspeech2-sniper": ("fastspeech2-sniper", ("snip_batches=1",)),
    "tacotron-r2": ("tacotron-gradual", ("gradual_training=[[0,2,8]]",)),
}


def peer_step_module() -> ModuleType:
    """peer/ours_step.py (not a package: loaded from its file, its folder on sys.path for `timing`)."""
    path = Path(__file__).resolve().parents[2] / "peer" / "ours_step.py"
    spec = importlib.util.spec_from_file_location("peer_ours_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("label", list(FULL_SIZE))
def test_bench_train_step_full(benchmark, label):
    system, overrides = FULL_SIZE[label]
    torch.manual_seed(SEED)
    model, batch = peer_step_module().ready_model(system, overrides)
    optimizers = build_optimizers(model)
    model.train()
    losses: list[float] = []

    def train_step() -> None:
        for network, optimizer in optimizers.items():
            losses.append(optimizer_update(model, network, optimizer, batch, 0)["loss"])
        model.after_optimizer_step(0)

    benchmark.group = "train-step-full"
    benchmark.extra_info.update(parameters=model.num_parameters(), batch=len(batch),
                                tokens=int(batch.text_ids.shape[1]), frames=int(batch.mel.shape[1]))
    benchmark.pedantic(train_step, setup=reseed, rounds=5, warmup_rounds=1)
    assert len(losses) == 6 * len(optimizers)
    assert all(math.isfinite(v) for v in losses), f"{label} loss not finite: {losses}"
    assert (len(batch), batch.text_ids.shape[1]) == (8, 60) and batch.mel.shape[1] == 240


@pytest.mark.parametrize("name", SYSTEMS)
def test_bench_inference(benchmark, name, embedded_corpus):
    model, _, _ = ready_model(name, embedded_corpus)
    model.eval()
    text_ids = torch.tensor(TextProcessor().encode(SENTENCE), dtype=torch.long)
    results = []

    def synthesise() -> None:
        with torch.no_grad():
            results.append(model.infer(text_ids))

    benchmark.group = "inference"
    benchmark.extra_info["parameters"] = model.num_parameters()
    benchmark.extra_info["text_ids"] = len(text_ids)
    benchmark.pedantic(synthesise, setup=reseed, rounds=3, warmup_rounds=1)
    last = results[-1]
    benchmark.extra_info["frames"] = last.num_frames
    benchmark.extra_info["audio_seconds"] = round(last.audio_seconds, 3)
    benchmark.extra_info["stopped"] = bool(last.stopped)

    assert len(results) == 4  # one warm-up round + three timed rounds
    assert last.num_frames > 0
    assert last.mel.ndim == 2 and last.mel.shape[1] == last.audio_config.n_mels
    assert bool(torch.isfinite(torch.from_numpy(last.mel)).all()), f"{name} synthesised non-finite mel values"
    assert len({r.num_frames for r in results}) == 1, "reseeded rounds should synthesise the same length"
