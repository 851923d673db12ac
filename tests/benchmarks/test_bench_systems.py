"""The five systems side by side at their tiny presets: one training step, and inference.

Every system gets the same four training utterances (the first four of the train split) and
the same sentence to synthesise, on one CPU thread (the session fixture), so pytest-benchmark's
groups "train-step" and "inference" compare systems directly. A training step is what the
Trainer does: the schedules at step 0, forward, backward, gradient clipping and an optimizer
step for every network (DC-TTS has two). Inference is `infer` alone under no_grad (the acoustic
model; Griffin-Lim is timed by `ttsbench speed` and the suites). SNIPER's SNIP scoring and
other start-up work happen in setup, outside the timed function.
Run with `pytest tests/benchmarks/test_bench_systems.py --benchmark-only`.
"""

from __future__ import annotations

import math

import pytest
import torch

from ttsbench import models
from ttsbench.data import collate
from ttsbench.text import TextProcessor
from ttsbench.train import LazyBatches, Trainer, TrainOptions, build_optimizers, load_model_examples, pad_values

SENTENCE = "Printing, in the only sense with which we are at present concerned."


def ready_model(name: str, corpus):
    """A tiny model after the Trainer's start-up: schedules at step 0, warm-up batches seen."""
    model = models.build(name, preset="tiny", seed=0)
    examples = load_model_examples(model, corpus.split(seed=0)["train"][:4], progress=False)
    pads = pad_values(model)
    schedules = Trainer(model, corpus, "unused", TrainOptions(steps=1, device="cpu"))._schedules()
    values = {key: float(schedule(0)) for key, schedule in schedules.items()}
    model.apply_schedules(values)
    plan = [[0, 1, 2, 3]] * max(1, model.warmup_batches_needed())
    model.on_train_start(LazyBatches(plan, examples, model.frame_multiple(), pads, torch.device("cpu")))
    batch = collate(examples, model.frame_multiple(), pads)
    return model, batch, values


@pytest.mark.parametrize("name", models.names())
def test_training_step(benchmark, name, embedded_corpus):
    model, batch, values = ready_model(name, embedded_corpus)
    optimizers = build_optimizers(model)
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = values["lr"]
    model.train()
    losses: list[float] = []

    def step() -> None:
        for network, optimizer in optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            parts = model.training_step(batch, 0) if model.networks == ("model",) else model.training_step(batch, 0, network)
            parts["loss"].backward()
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(parts["loss"].detach()))
        model.after_optimizer_step(0)

    benchmark.group = "train-step (tiny, batch of 4)"
    benchmark.extra_info["parameters"] = model.num_parameters()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("name", models.names())
def test_inference(benchmark, name, embedded_corpus):
    model, _, _ = ready_model(name, embedded_corpus)
    model.eval()
    ids = torch.tensor(TextProcessor().encode(SENTENCE), dtype=torch.long)
    frames: list[int] = []

    def synthesise() -> None:
        with torch.no_grad():
            frames.append(model.infer(ids).num_frames)

    benchmark.group = "inference (tiny, acoustic model, one sentence)"
    benchmark.extra_info["parameters"] = model.num_parameters()
    benchmark.pedantic(synthesise, rounds=3, warmup_rounds=1)
    benchmark.extra_info["frames"] = frames[-1]
    assert frames[-1] > 0
