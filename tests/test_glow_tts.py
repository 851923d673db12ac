"""Glow-TTS: the flow is exactly invertible with the log-determinant it claims, training on real
LJSpeech lowers both losses, MAS durations cover every frame, and inference honours its controls."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ttsbench.audio import AudioConfig
from ttsbench.batches import Batch, collate, load_examples
from ttsbench.data import Corpus
from ttsbench.models import build, describe, get, names
from ttsbench.models.glow_tts import GlowTTS, GlowTTSConfig
from ttsbench.text import SYMBOLS, TextProcessor

# Parameters of the reference LJSpeech model (configs/base.json) with its 148 symbols, counted
# from the layer sizes: 7,199,953 encoder + 21,423,936 decoder. Only the embedding depends on
# the symbol table (192 weights per symbol).
REFERENCE_PARAMETERS_148_SYMBOLS = 28_623_889
OVERFIT_STEPS = 60


def sequence_float_mask(lengths: list[int], max_length: int) -> torch.Tensor:
    return (torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]).float().unsqueeze(1)


def perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Move every parameter off its initial value so zero-initialised couplings do real work."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


@pytest.fixture(scope="module")
def real_batch(embedded_corpus: Corpus) -> Batch:
    """The two shortest embedded LJSpeech clips, one cut to an odd frame count (its last frame
    is trailing silence) so the even-flooring of lengths is exercised; padded to even."""
    shortest = sorted(embedded_corpus.utterances, key=lambda u: u.num_samples)[:2]
    examples = load_examples(shortest, AudioConfig(), kinds=("mel",), progress=False)
    if examples[-1].num_frames % 2 == 0:
        examples[-1].features["mel"] = examples[-1].features["mel"][:-1]
    return collate(examples, frame_multiple=2, pad_values={"mel": math.log(1e-5)})


@pytest.fixture(scope="module")
def trained(real_batch: Batch) -> tuple[GlowTTS, list[dict[str, float]]]:
    """A tiny model overfit on one real batch, and its per-step losses."""
    torch.manual_seed(0)
    model = build("glow-tts", preset="tiny")
    model.on_train_start([real_batch])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    history = []
    for step in range(OVERFIT_STEPS):
        losses = model.training_step(real_batch, step)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 5.0)
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    return model, history


def test_registered_with_presets() -> None:
    assert "glow-tts" in names()
    assert get("glow-tts") is GlowTTS
    assert describe("glow-tts").startswith("Glow-TTS: flow decoder trained by maximum likelihood")
    model = build("glow-tts", preset="tiny")
    assert model.frame_multiple() == 2

    full = GlowTTSConfig.full()
    assert (full.betas, full.eps, full.batch_size) == ((0.9, 0.98), 1e-9, 32)
    assert (full.lr_schedule, full.warmup_steps, full.grad_clip_value, full.grad_clip_norm) == ("noam", 4000, 5.0, None)
    assert full.learning_rate == pytest.approx(1.14e-3, rel=0.01)
    tiny = GlowTTSConfig.tiny()
    assert (tiny.learning_rate, tiny.warmup_steps, tiny.batch_size, tiny.flow_blocks) == (1e-3, 200, 8, 4)
    assert GlowTTSConfig.from_dict(tiny.to_dict()) == tiny


def test_full_preset_matches_reference_size() -> None:
    expected = REFERENCE_PARAMETERS_148_SYMBOLS - (148 - len(SYMBOLS)) * 192  # 28,603,153 with 40 symbols
    count = build("glow-tts", preset="full").num_parameters()
    assert abs(count - expected) / expected < 0.05, f"{count:,} parameters, expected about {expected:,}"


def test_flow_inverts_exactly_and_padding_never_leaks() -> None:
    torch.manual_seed(0)
    model = GlowTTS(GlowTTSConfig.tiny(), len(SYMBOLS)).eval()
    lengths = [24, 18, 10]
    mask = sequence_float_mask(lengths, 24)
    mel = torch.randn(3, 80, 24) * 2 - 5
    model.decoder.data_dependent_init(mel * mask, mask)
    perturb(model.decoder, scale=0.05, seed=1)

    with torch.no_grad():
        z, logdet = model.decoder(mel * mask, mask)
        restored, inverse_logdet = model.decoder(z, mask, reverse=True)
        alone, alone_logdet = model.decoder(mel[2:, :, :10], torch.ones(1, 1, 10))

    assert not torch.allclose(z, mel * mask, atol=0.1)  # the flow is far from the identity
    torch.testing.assert_close(restored, mel * mask, atol=1e-4, rtol=0)
    torch.testing.assert_close(inverse_logdet, -logdet, atol=1e-3, rtol=1e-5)
    assert torch.all(z * (1 - mask) == 0)
    torch.testing.assert_close(z[2:, :, :10], alone, atol=1e-5, rtol=1e-5)  # padded == unpadded
    torch.testing.assert_close(logdet[2:], alone_logdet, atol=1e-3, rtol=1e-5)


def test_logdet_equals_brute_force_jacobian() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(
        GlowTTSConfig.tiny(), audio=AudioConfig(n_mels=4), flow_blocks=2, coupling_hidden_channels=8
    )
    model = GlowTTS(config, len(SYMBOLS)).double().eval()
    channels, frames = 4, 6
    mask = torch.ones(1, 1, frames, dtype=torch.float64)
    mel = torch.randn(1, channels, frames, dtype=torch.float64)
    model.decoder.data_dependent_init(mel, mask)
    perturb(model.decoder, scale=0.3, seed=2)

    def flow(flat: torch.Tensor) -> torch.Tensor:
        return model.decoder(flat.view(1, channels, frames), mask)[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flow, mel.reshape(-1))
    brute_force = torch.linalg.slogdet(jacobian).logabsdet
    _, logdet = model.decoder(mel, mask)
    assert abs(brute_force.item()) > 0.5  # non-trivial volume change
    assert logdet.item() == pytest.approx(brute_force.item(), abs=1e-3)


def shifted_mel(batch: Batch) -> Batch:
    """The same batch with different mel values, which would change a second DDI."""
    features = {"mel": batch.mel + 1.0}
    return dataclasses.replace(batch, features=features)


def test_ddi_runs_once(real_batch: Batch) -> None:
    model = build("glow-tts", preset="tiny")
    model.on_train_start([real_batch])
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    model.on_train_start([shifted_mel(real_batch)])
    assert all(torch.equal(after_first[k], v) for k, v in model.state_dict().items())
    assert bool(model.decoder.ddi_done)


def test_duration_loss_does_not_reach_the_encoder(real_batch: Batch) -> None:
    model = build("glow-tts", preset="tiny")
    model.on_train_start([real_batch])
    model.training_step(real_batch, 0)["duration_loss"].backward()
    assert model.encoder.embedding.weight.grad is None or not model.encoder.embedding.weight.grad.any()
    assert model.encoder.duration_predictor.projection.weight.grad.abs().sum() > 0


def test_losses_fall_when_overfitting_real_speech(trained: tuple[GlowTTS, list[dict[str, float]]]) -> None:
    _, history = trained
    first, last = history[0], history[-5:]
    mean_last = {name: float(np.mean([h[name] for h in last])) for name in first}
    assert all(math.isfinite(h["loss"]) for h in history)
    assert mean_last["mle_loss"] < first["mle_loss"] - 0.6, (first, mean_last)
    assert mean_last["duration_loss"] < 0.25 * first["duration_loss"], (first, mean_last)
    assert mean_last["loss"] < 0.4 * first["loss"], (first, mean_last)


def test_alignment_durations_cover_every_frame(trained: tuple[GlowTTS, list], real_batch: Batch) -> None:
    model, _ = trained
    assert any(int(length) % 2 for length in real_batch.frame_lengths)  # one odd length to floor
    alignments = model.alignment(real_batch)
    assert model.training  # restored after the eval-mode pass
    assert [a.id for a in alignments] == real_batch.ids
    for alignment, text_length, frame_length in zip(alignments, real_batch.text_lengths, real_batch.frame_lengths):
        assert alignment.soft is None
        assert alignment.durations.dtype == np.int64
        assert alignment.durations.shape == (int(text_length),)
        assert alignment.durations.min() >= 1
        assert alignment.durations.sum() == int(frame_length) // 2 * 2


def test_inference_follows_length_and_noise_scale(trained: tuple[GlowTTS, list]) -> None:
    model, _ = trained
    ids = torch.tensor(TextProcessor().encode("printing, in the only sense"), dtype=torch.long)

    plain = model.infer(ids, noise_scale=0.0, length_scale=1.0)
    again = model.infer(ids, noise_scale=0.0, length_scale=1.0)
    slow = model.infer(ids, noise_scale=0.0, length_scale=2.0)

    for synthesis in (plain, slow):
        assert synthesis.mel.dtype == np.float32 and synthesis.mel.shape[1] == 80
        assert np.isfinite(synthesis.mel).all()
        assert synthesis.durations.dtype == np.int64 and synthesis.durations.shape == (len(ids),)
        assert synthesis.durations.sum() == synthesis.num_frames
        assert synthesis.num_frames % 2 == 0 and synthesis.stopped
    np.testing.assert_array_equal(plain.mel, again.mel)
    # ceil(2w) is 2*ceil(w) or one less, per token (the last may be trimmed to an even total)
    assert np.all(np.isin(slow.durations[:-1] - 2 * plain.durations[:-1], (-1, 0)))
    assert abs(slow.num_frames - 2 * plain.num_frames) <= len(ids) + 2
    assert plain.num_frames > 2 * len(ids)  # trained durations, not the untrained ~1 per token
    assert plain.info["length_scale"] == 1.0 and slow.info["length_scale"] == 2.0

    torch.manual_seed(1)
    noisy = model.infer(ids)
    assert noisy.info["noise_scale"] == pytest.approx(0.667)
    assert noisy.num_frames == plain.num_frames and not np.allclose(noisy.mel, plain.mel)


def test_inference_stops_at_max_frames() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(GlowTTSConfig.tiny(), max_inference_frames=5)
    model = GlowTTS(config, len(SYMBOLS))
    synthesis = model.infer(torch.arange(3, 23))
    assert synthesis.num_frames == 4  # the cap floored to a multiple of n_sqz
    assert not synthesis.stopped and synthesis.info["hit_max_frames"]
    assert synthesis.durations.sum() == 4
