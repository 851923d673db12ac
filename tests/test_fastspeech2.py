"""FastSpeech2 + SNIPER: logged sparsity follows its schedule under the real trainer, the aligner's
durations cover every frame, losses fall on real speech, and the variants keep their sparsity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ttsbench.models.fastspeech2  # noqa: F401  (registers the system)
from ttsbench import models
from ttsbench.audio import AudioConfig, Clip, load_audio
from ttsbench.batches import Batch, collate
from ttsbench.data import Corpus
from ttsbench.models.fastspeech2 import FastSpeech2Config, FastSpeech2Sniper, even_durations
from ttsbench.prosody import energy_feature, pitch_feature
from ttsbench.train import TrainOptions, load_model_examples, pad_values, train

OVERFIT_STEPS = 40
# changes at 3, 5 (up again), 8 and 10 within a 12-step run
SCHEDULE_OVERRIDE = "sniper_schedule=[[0, 0.4], [3, 0.2], [5, 0.3], [8, 0.1], [10, 0.0]]"


def tiny(*overrides: str) -> FastSpeech2Sniper:
    config = FastSpeech2Config.tiny().with_overrides(overrides)
    return models.build("fastspeech2-sniper", config, seed=0)


@pytest.fixture(scope="module")
def real_batch(embedded_corpus: Corpus) -> Batch:
    """The three shortest embedded LJSpeech clips with mel, pitch and energy."""
    shortest = sorted(embedded_corpus.utterances, key=lambda u: u.num_samples)[:3]
    model = tiny()
    return collate(load_model_examples(model, shortest, progress=False), 1, pad_values(model))


@pytest.fixture(scope="module")
def trained(real_batch: Batch) -> tuple[FastSpeech2Sniper, list[dict[str, float]]]:
    """A tiny SNIPER model overfit on one real batch (at 40 % sparsity), and its per-step losses."""
    model = tiny()
    model.on_train_start([real_batch])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(OVERFIT_STEPS):
        losses = model.training_step(real_batch, step)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.after_optimizer_step(step)
        history.append({name: float(value.detach()) for name, value in losses.items()})
    return model, history


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_trainer(model: FastSpeech2Sniper, corpus: Corpus, out: Path, steps: int) -> list[dict]:
    train(model, corpus, out, TrainOptions(steps=steps, log_every=1, device="cpu", progress=False))
    return read_jsonl(out / "log.jsonl")


def test_registered_with_presets() -> None:
    assert "fastspeech2-sniper" in models.names()
    assert models.describe("fastspeech2-sniper").startswith("FastSpeech2 trained with SNIPER")
    full = FastSpeech2Config.full()
    assert (full.hidden_channels, full.encoder_layers, full.decoder_layers, full.ffn_channels) == (384, 4, 4, 1536)
    assert (full.lr_schedule, full.warmup_steps, full.batch_size, full.postnet_layers) == ("noam", 4000, 32, 5)
    assert full.sniper_schedule == ((0, 0.2), (4000, 0.1), (8000, 0.0))
    tiny_config = FastSpeech2Config.tiny()
    assert FastSpeech2Config.from_dict(tiny_config.to_dict()) == tiny_config
    assert tiny_config.with_overrides([SCHEDULE_OVERRIDE]).sniper_schedule[2] == (5, 0.3)
    with pytest.raises(ValueError, match="max_param_sparsity"):
        FastSpeech2Config.tiny().with_overrides(["constant_sparsity=0.9"])
    with pytest.raises(ValueError, match="durations_dir"):
        tiny("duration_source=file")


def test_full_preset_size() -> None:
    count = models.build("fastspeech2-sniper", preset="full").num_parameters()
    assert 36e6 < count < 40e6, f"{count:,}"  # ESPnet's FastSpeech2 at adim 384 is ~37M, plus a ~1M aligner


def test_pitch_and_energy_line_up_with_the_mel(embedded_corpus: Corpus) -> None:
    utterance = sorted(embedded_corpus.utterances, key=lambda u: u.num_samples)[0]
    config = AudioConfig()
    audio = load_audio(utterance.audio_path, config)
    clip = Clip(audio, config)
    f0, energy = pitch_feature(clip), energy_feature(clip)
    frames = 1 + len(audio) // config.hop_length
    assert f0.shape == (frames,) and energy.shape == (frames,)
    voiced = f0[f0 > 0]
    assert 0.3 < voiced.size / frames < 0.9
    assert 150 < np.median(voiced) < 300  # LJSpeech's speaker
    assert np.all(energy >= 0) and energy[f0 > 0].mean() > 1.5 * energy[f0 == 0].mean()  # voiced speech is louder


def test_aligner_durations_cover_every_frame(trained: tuple, real_batch: Batch) -> None:
    model, _ = trained
    alignments = model.alignment(real_batch)
    assert model.training  # restored after the eval-mode pass
    for alignment, tokens, frames in zip(alignments, real_batch.text_lengths, real_batch.frame_lengths):
        assert alignment.durations.dtype == np.int64 and alignment.durations.shape == (int(tokens),)
        assert alignment.durations.sum() == int(frames)
        assert alignment.durations.min() >= 1
        assert alignment.soft.shape == (int(tokens), int(frames))
        np.testing.assert_allclose(alignment.soft.sum(axis=0), 1.0, atol=1e-4)  # a distribution over tokens


def test_text_longer_than_frames_still_sums_to_the_frames(real_batch: Batch) -> None:
    model = tiny()
    cut = 20  # fewer frames than the 26+ tokens of every utterance here
    first = Batch(
        real_batch.ids[:1],
        real_batch.texts[:1],
        real_batch.text_ids[:1],
        real_batch.text_lengths[:1],
        {k: v[:1, :cut] for k, v in real_batch.features.items()},
        torch.tensor([cut]),
    )
    durations = model.alignment(first)[0].durations
    assert durations.sum() == cut and set(np.unique(durations)) <= {0, 1}
    assert even_durations(4, 10).tolist() == [3, 3, 2, 2]


def test_losses_fall_when_overfitting_real_speech(trained: tuple) -> None:
    _, history = trained
    first = history[0]
    last = {name: float(np.mean([h[name] for h in history[-5:]])) for name in first}
    assert all(math.isfinite(h["loss"]) for h in history)
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert last["mel_loss"] < first["mel_loss"] - 1.0, (first, last)
    assert last["align_forward_sum"] < first["align_forward_sum"], (first, last)
    assert all(h["sparsity_actual"] == pytest.approx(0.4, abs=1e-5) for h in history)


def test_inference_renders_predicted_durations(trained: tuple, real_batch: Batch) -> None:
    model, _ = trained
    synthesis = model.infer(real_batch.text_ids[0, : int(real_batch.text_lengths[0])])
    assert synthesis.mel.dtype == np.float32 and synthesis.mel.shape[1] == 80 and np.isfinite(synthesis.mel).all()
    assert synthesis.durations.min() >= 1 and synthesis.durations.sum() == synthesis.num_frames
    assert synthesis.stopped and synthesis.alignment is None
    capped = tiny("max_inference_frames=5").infer(real_batch.text_ids[0, :10])
    assert capped.num_frames == 5 and not capped.stopped and capped.durations.sum() == 5


def test_sparsity_follows_the_schedule_under_the_trainer(tmp_path: Path, embedded_corpus: Corpus) -> None:
    model = tiny(SCHEDULE_OVERRIDE, "batch_size=4")
    rows = run_trainer(model, embedded_corpus, tmp_path, steps=12)
    assert [r["step"] for r in rows] == list(range(12))
    expected = [0.4, 0.4, 0.4, 0.2, 0.2, 0.3, 0.3, 0.3, 0.1, 0.1, 0.0, 0.0]
    assert [r["sparsity_target"] for r in rows] == expected
    for row in rows:
        assert abs(row["sparsity_actual"] - row["sparsity_target"]) < 0.005, row
        assert {"mel_loss", "duration_loss", "pitch_loss", "energy_loss", "align_forward_sum", "align_bin"} <= set(row)
    # the checkpoint carries the ranking and theta0, and pruned weights at the end are exactly zero again
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert bool(state["sparsity.scored"]) and int(state["sparsity.pruned_count"]) == 0


@pytest.mark.parametrize(("variant", "expected"), [("dense", 0.0), ("constant", 0.4)])
def test_baseline_variants_keep_their_sparsity(
    variant: str, expected: float, tmp_path: Path, embedded_corpus: Corpus
) -> None:
    model = tiny(f"sparsity_variant={variant}", "batch_size=2")
    assert (model.sparsity is None) == (variant == "dense")
    rows = run_trainer(model, embedded_corpus, tmp_path, steps=4)
    assert all(r["sparsity_target"] == expected for r in rows)
    assert all(abs(r["sparsity_actual"] - expected) < 0.005 for r in rows)


def test_resumed_model_keeps_its_ranking(real_batch: Batch) -> None:
    model = tiny()
    model.on_train_start([real_batch])
    model.apply_schedules({"sparsity_target": 0.2})
    restored = tiny()
    restored.load_state_dict(model.state_dict())
    restored.apply_schedules({"sparsity_target": 0.2})
    assert bool(restored.feature_stats_ready) and torch.equal(restored.pitch_stats, model.pitch_stats)
    for mine, theirs in zip(model.sparsity.keep_masks(), restored.sparsity.keep_masks()):
        assert torch.equal(mine, theirs)
    restored.on_train_start([real_batch])  # already scored: nothing is recomputed
    assert torch.equal(restored.sparsity.scored, torch.tensor(True))


def test_training_before_scoring_is_refused(real_batch: Batch) -> None:
    with pytest.raises(RuntimeError, match="on_train_start"):
        tiny().training_step(real_batch, 0)


def test_durations_from_files(tmp_path: Path, real_batch: Batch) -> None:
    for b, utt_id in enumerate(real_batch.ids):
        tokens, frames = int(real_batch.text_lengths[b]), int(real_batch.frame_lengths[b])
        np.save(tmp_path / f"{utt_id}.npy", even_durations(tokens, frames).numpy())
    model = tiny("duration_source=file", f"durations_dir={tmp_path}")
    assert model.aligner is None
    model.on_train_start([real_batch])
    losses = model.training_step(real_batch, 0)
    assert math.isfinite(float(losses["loss"].detach())) and float(losses["align_forward_sum"]) == 0.0
    alignment = model.alignment(real_batch)[0]
    assert alignment.soft is None and alignment.durations.sum() == int(real_batch.frame_lengths[0])

    broken = real_batch.ids[1]
    np.save(tmp_path / f"{broken}.npy", np.ones(int(real_batch.text_lengths[1]), dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{broken}\.npy: durations sum to"):
        tiny("duration_source=file", f"durations_dir={tmp_path}").on_train_start([real_batch])


def test_resume_continues_with_the_same_masks_and_losses(tmp_path: Path, embedded_corpus: Corpus) -> None:
    overrides = ("sniper_schedule=[[0, 0.4], [3, 0.2], [5, 0.0]]", "batch_size=2")

    def run(out: Path, steps: int) -> list[dict]:
        options = TrainOptions(steps=steps, log_every=1, checkpoint_every=2, device="cpu", progress=False)
        train(tiny(*overrides), embedded_corpus, out, options)
        return read_jsonl(out / "log.jsonl")

    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "resumed", 4)
    resumed = run(tmp_path / "resumed", 6)  # a fresh model object: ranking and theta0 come from the checkpoint
    assert [r["step"] for r in resumed] == list(range(6))
    for a, b in zip(straight, resumed):
        assert b["sparsity_actual"] == pytest.approx(a["sparsity_actual"], abs=1e-9)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


@pytest.mark.parametrize("normalize_before", [True, False])
def test_fft_stack_ignores_padding(normalize_before: bool) -> None:
    model = tiny(f"normalize_before={str(normalize_before).lower()}").eval()
    ids = torch.randint(1, 30, (2, 12))
    with torch.no_grad():
        _, padded, _ = model._encode(ids, torch.tensor([12, 7]))
        _, alone, _ = model._encode(ids[1:, :7], torch.tensor([7]))
    torch.testing.assert_close(padded[1:, :, :7], alone, atol=1e-5, rtol=1e-5)
    assert bool((padded[1, :, 7:] == 0).all())


def test_pruned_set_leaves_out_embeddings_norms_and_the_aligner() -> None:
    model = tiny()
    names = model.sparsity.names
    assert not any("norm" in n or "embed" in n or n.startswith("aligner.") for n in names)
    assert {"encoder.blocks.0.attention.query.weight", "encoder.blocks.0.attention.query.bias"} <= set(names)
    assert {"mel_projection.weight", "pitch_predictor.convs.0.weight", "duration_predictor.conv_1.weight"} <= set(names)
