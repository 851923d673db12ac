"""ttsbench's side of the peer benchmark: one full training step of a full-preset system.

The step is the Trainer's own `optimizer_update` for each of the system's networks, then
`after_optimizer_step` (SNIPER re-zeroes pruned weights there): zero_grad, forward, loss,
backward, the preset's gradient clipping, the optimizer step. Set-up as in the Trainer, untimed:
schedules at step 0, then `on_train_start` on the benchmark batch (Glow-TTS's data-dependent
init, FastSpeech2's feature statistics and SNIP scores).

    python peer/ours_step.py SYSTEM [--threads 1] [--steps 5] [--warmup 1] [--set KEY=VALUE ...]

prints one JSON line (`timing.StepTimes`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import FRAMES, TOKENS, StepTimes, batch_lengths, time_steps  # noqa: E402

from ttsbench import models  # noqa: E402
from ttsbench.batches import Batch  # noqa: E402
from ttsbench.models.base import TTSModel  # noqa: E402
from ttsbench.train import build_optimizers, optimizer_update, training_schedules  # noqa: E402


def random_batch(model: TTSModel, seed: int = 0) -> Batch:
    """A padded batch of the shared lengths, with random ids and features of the system's kinds."""
    multiple = model.frame_multiple()
    lengths = batch_lengths(multiple)
    frames = FRAMES // multiple * multiple
    generator = torch.Generator().manual_seed(seed)
    count = len(lengths.tokens)
    text_ids = torch.randint(1, model.num_symbols, (count, TOKENS), generator=generator)
    for b, tokens in enumerate(lengths.tokens):
        text_ids[b, tokens:] = 0
    audio = model.feature_audio_configs()
    features = {}
    for kind in model.feature_kinds:
        if kind == "mel":
            features[kind] = torch.randn(count, frames, audio[kind].n_mels, generator=generator)
        elif kind == "linear":
            features[kind] = torch.randn(count, frames, audio[kind].n_fft // 2 + 1, generator=generator)
        elif kind == "pitch":  # Hz, a third unvoiced (0)
            voiced = torch.rand(count, frames, generator=generator) > 1 / 3
            features[kind] = (100 + 150 * torch.rand(count, frames, generator=generator)) * voiced
        else:  # energy: a positive frame norm
            features[kind] = 0.1 + 10 * torch.rand(count, frames, generator=generator)
    ids = [f"peer{b}" for b in range(count)]
    return Batch(ids, [""] * count, text_ids, torch.tensor(lengths.tokens), features,
                 torch.tensor(lengths.frames), multiple)


def ready_model(system: str, overrides: Sequence[str]) -> tuple[TTSModel, Batch]:
    """The full preset (with overrides) after the Trainer's start-up, and the benchmark batch."""
    config = models.get(system).Config.preset("full").with_overrides(overrides)
    model = models.build(system, config=config, seed=0)
    model.apply_schedules({key: float(schedule(0)) for key, schedule in training_schedules(model).items()})
    batch = random_batch(model)
    model.on_train_start([batch] * max(1, model.warmup_batches_needed()))
    return model, batch


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system")
    parser.add_argument("--variant", default="", help="label for the results (default: the system)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, batch = ready_model(args.system, args.overrides)
    optimizers = build_optimizers(model)
    model.train()

    def step() -> None:
        for network, optimizer in optimizers.items():
            optimizer_update(model, network, optimizer, batch, 0)
        model.after_optimizer_step(0)

    times = StepTimes("ttsbench", args.system, args.variant or args.system, model.num_parameters(),
                      args.threads, args.warmup, time_steps(step, args.steps, args.warmup),
                      notes={"overrides": list(args.overrides)})
    print(times.to_json())


if __name__ == "__main__":
    main()
