"""coqui-tts 0.28.0's side of the peer benchmark: one training step of the matching model.

Run from the peer venv (`make peer-bench` builds it) with `peer/stubs` on PYTHONPATH: `import
TTS` loads torchaudio and torchcodec, which these three models never call, so two empty modules
stand in for them. The step is coqui's own `train_step` with its criterion, then backward,
gradient-norm clipping at 1.0 and Adam: what its Trainer does per batch, without the Trainer.

    python peer/coqui_step.py SYSTEM [--threads 1] [--steps 5] [--warmup 1]

SYSTEM is a ttsbench name (glow-tts, fastspeech2-sniper, tacotron-gradual); prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import FRAMES, TOKENS, StepTimes, batch_lengths, time_steps  # noqa: E402

N_MELS, N_LINEAR = 80, 513
TACOTRON_R = 2


def build(system: str) -> tuple[Any, int]:
    """coqui's model for a ttsbench system name at its default (full) size, and its frame multiple."""
    from TTS.tts.configs.shared_configs import BaseAudioConfig

    audio = BaseAudioConfig(sample_rate=22050, num_mels=N_MELS, fft_size=1024, hop_length=256, win_length=1024,
                            mel_fmin=0.0, mel_fmax=8000.0)
    common = dict(audio=audio, use_phonemes=False, text_cleaner="english_cleaners", run_eval=False,
                  test_sentences=[], output_path="runs/peer/coqui_out")
    if system == "glow-tts":
        from TTS.tts.configs.glow_tts_config import GlowTTSConfig
        from TTS.tts.models.glow_tts import GlowTTS

        model = GlowTTS(GlowTTSConfig(**common))
        model.run_data_dep_init = False  # ours runs DDI before timing too
        return model, 1
    if system == "tacotron-gradual":
        from TTS.tts.configs.tacotron_config import TacotronConfig
        from TTS.tts.models.tacotron import Tacotron

        return Tacotron(TacotronConfig(**common, r=TACOTRON_R, max_decoder_steps=500)), TACOTRON_R
    if system == "fastspeech2-sniper":
        from TTS.tts.configs.fastspeech2_config import Fastspeech2Config
        from TTS.tts.models.forward_tts import ForwardTTS

        return ForwardTTS(Fastspeech2Config(**common, compute_f0=True, compute_energy=True)), 1
    raise ValueError(f"no coqui counterpart for {system!r}")


def random_batch(num_chars: int, multiple: int) -> dict[str, Any]:
    """coqui's batch dict at the shared lengths: padded ids, mel, linear, stop targets, durations."""
    lengths = batch_lengths(multiple)
    frames = FRAMES // multiple * multiple
    text_lengths, mel_lengths = torch.tensor(lengths.tokens), torch.tensor(lengths.frames)
    count = len(lengths.tokens)
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, num_chars, (count, TOKENS), generator=generator)
    stop = torch.zeros(count, frames)
    durations = torch.zeros(count, TOKENS, dtype=torch.long)
    for b, (tokens, length) in enumerate(zip(lengths.tokens, lengths.frames)):
        text[b, tokens:] = 0
        stop[b, length - 1 :] = 1
        durations[b, :tokens] = length // tokens
        durations[b, tokens - 1] += length - int(durations[b].sum())
    stop = (stop.view(count, frames // multiple, multiple).sum(2) > 0).float()
    return {
        "text_input": text, "text_lengths": text_lengths, "mel_lengths": mel_lengths,
        "mel_input": torch.randn(count, frames, N_MELS, generator=generator),
        "linear_input": torch.randn(count, frames, N_LINEAR, generator=generator),
        "stop_targets": stop, "stop_target_lengths": torch.ceil(mel_lengths / multiple),
        "durations": durations, "pitch": torch.randn(count, 1, frames, generator=generator),
        "energy": torch.randn(count, 1, frames, generator=generator),
        "d_vectors": None, "speaker_ids": None, "aux_input": {},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, multiple = build(args.system)
    batch = random_batch(model.tokenizer.characters.num_chars, multiple)
    criterion = model.get_criterion()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = model.train_step(batch, criterion)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    parameters = sum(p.numel() for p in model.parameters())
    times = StepTimes("coqui-tts", args.system, args.system, parameters, args.threads, args.warmup,
                      time_steps(step, args.steps, args.warmup))
    print(times.to_json())


if __name__ == "__main__":
    main()
