"""DC-TTS: presets, guided attention, causality, SSRN upsampling, the two-network training,
forcibly incremental attention, inference guards and teacher-forced alignment.

Batches come from the shortest clips of the real embedded corpus with DC-TTS's own front end
(tiny: n_fft 1024, hop 276, [0, 1] dB), so the whole file runs on one CPU thread in well under a minute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ttsbench.models
import ttsbench.models.dc_tts  # registers "dc-tts"
from ttsbench.audio import linear_to_mel
from ttsbench.batches import Batch, Example, collate, load_examples
from ttsbench.data import Corpus
from ttsbench.models.dc_tts import DCTTS, DCTTSConfig
from ttsbench.text import SYMBOLS


@pytest.fixture(scope="module")
def short_examples(embedded_corpus: Corpus) -> list[Example]:
    """The three shortest clips (about 1.8 to 2.6 s) with DC-TTS mel and linear features."""
    shortest = sorted(embedded_corpus.utterances, key=lambda u: u.duration)[:3]
    return load_examples(shortest, DCTTSConfig.tiny().audio, kinds=("mel", "linear"), progress=False)


def make_batch(model: DCTTS, examples: list[Example], frame_multiple: int = 4) -> Batch:
    silence = model.config.audio.silence_value
    return collate(examples, frame_multiple=frame_multiple, pad_values={"mel": silence, "linear": silence})


def tiny_model(**changes: object) -> DCTTS:
    torch.manual_seed(0)
    config = dataclasses.replace(DCTTSConfig.tiny(), **changes)
    return ttsbench.models.build("dc-tts", config)  # type: ignore[return-value]


def text_of(example: Example) -> torch.Tensor:
    return torch.from_numpy(example.text_ids)


# ---- registry and presets ----------------------------------------------------------------------


def test_registered_with_its_fixed_name_and_description() -> None:
    assert ttsbench.models.get("dc-tts") is DCTTS
    assert ttsbench.models.describe("dc-tts").startswith("DC-TTS: Text2Mel and SSRN")
    model = ttsbench.models.build("dc-tts", preset="tiny")
    assert model.networks == ("text2mel", "ssrn")
    assert model.feature_kinds == ("mel", "linear")
    assert model.frame_multiple() == 4


def test_presets_front_end_sizes_and_recipe() -> None:
    full, tiny = DCTTSConfig.full(), DCTTSConfig.tiny()
    assert (full.audio.n_fft, full.audio.hop_length, full.audio.win_length, full.audio.n_freq) == (2048, 276, 1102, 1025)
    assert (tiny.audio.n_fft, tiny.audio.hop_length, tiny.audio.win_length, tiny.audio.n_freq) == (1024, 276, 1024, 513)
    assert (full.mean_output_init, tiny.mean_output_init) == (False, True)
    for config in (full, tiny):
        audio = config.audio
        assert (audio.scaling, audio.preemphasis, audio.fmax, audio.griffin_lim_power) == ("db01", 0.97, None, 1.5)
        assert (audio.ref_db, audio.max_db) == (20.0, 100.0)
        assert (config.grad_clip_value, config.grad_clip_norm, config.guided_attention_g) == (1.0, None, 0.2)
    assert (full.embedding_dim, full.hidden_dim, full.ssrn_channels, full.dilations) == (128, 256, 512, (1, 3, 9, 27))
    assert (full.batch_size, full.learning_rate, full.lr_schedule, full.warmup_steps) == (32, 1e-3, "noam", 4000)
    assert full.ssrn_train_window is None
    assert (tiny.embedding_dim, tiny.hidden_dim, tiny.ssrn_channels, tiny.dilations) == (32, 64, 128, (1, 3))
    assert (tiny.batch_size, tiny.learning_rate, tiny.optimizer) == (8, 1e-3, "adam")
    assert tiny.ssrn_train_window == 16  # 0.8 s windows (see the preset)


def test_config_round_trips_through_a_dict() -> None:
    for config in (DCTTSConfig.tiny(), DCTTSConfig.full()):
        assert DCTTSConfig.from_dict(config.to_dict()) == config


def test_network_parameters_split_the_model_in_two() -> None:
    model = tiny_model()
    text2mel = {id(p) for p in model.network_parameters("text2mel")}
    ssrn = {id(p) for p in model.network_parameters("ssrn")}
    assert text2mel and ssrn and not text2mel & ssrn
    assert text2mel | ssrn == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="text2mel"):
        model.network_parameters("model")


# ---- guided attention ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "t"), [(0, 0), (3, 1), (1, 9), (5, 6), (6, 0), (2, 11)])
def test_guided_attention_penalty_has_the_closed_form_values(n: int, t: int) -> None:
    """A one-hot attention at (n, t) costs W[n, t] / (N T) with W = 1 − exp(−(n/N − t/T)² / (2 g²))."""
    model = tiny_model()
    text_lengths, reduced_lengths = torch.tensor([7, 4]), torch.tensor([12, 5])
    attention = torch.zeros(2, 7, 12)
    attention[0, n, t] = 1.0
    expected = 1.0 - math.exp(-((n / 7 - t / 12) ** 2) / (2 * 0.2**2))
    cells = 7 * 12 + 4 * 5
    loss = model.attention_loss(attention, text_lengths, reduced_lengths)
    assert float(loss) * cells == pytest.approx(expected, abs=1e-6)


def test_guided_attention_ignores_cells_outside_each_utterance() -> None:
    model = tiny_model()
    attention = torch.zeros(2, 7, 12)
    attention[1, 5:, :] = 1.0  # utterance 1 has 4 characters and 5 reduced frames
    attention[1, :, 6:] = 1.0
    assert float(model.attention_loss(attention, torch.tensor([7, 4]), torch.tensor([12, 5]))) == 0.0


# ---- structure: causality, shift, SSRN ----------------------------------------------------------


def test_text2mel_is_causal_in_its_decoder_input(short_examples: list[Example]) -> None:
    """Changing decoder-input frame k leaves outputs before k alone and changes the outputs from k on."""
    model = tiny_model().eval()
    batch = make_batch(model, short_examples[:1])
    previous_frames = model.decoder_input(model.reduce(batch.mel))
    k = 10
    changed = previous_frames.clone()
    changed[:, :, k] = torch.rand_like(changed[:, :, k])
    with torch.no_grad():
        logits, attention = model.text2mel(batch.text_ids, batch.text_lengths, previous_frames)
        logits_changed, attention_changed = model.text2mel(batch.text_ids, batch.text_lengths, changed)
        hidden = torch.randn(1, 2 * model.config.hidden_dim, 30)
        hidden_changed = hidden.clone()
        hidden_changed[:, :, k] += 1.0
        decoded, decoded_changed = model.text2mel.audio_decoder(hidden), model.text2mel.audio_decoder(hidden_changed)
    assert torch.equal(logits[..., :k], logits_changed[..., :k])
    assert torch.equal(attention[..., :k], attention_changed[..., :k])
    assert not torch.allclose(logits[..., k], logits_changed[..., k])
    assert torch.equal(decoded[..., :k], decoded_changed[..., :k])
    assert not torch.allclose(decoded[..., k:], decoded_changed[..., k:])


def test_decoder_input_is_the_reduced_mel_shifted_by_one_frame(short_examples: list[Example]) -> None:
    model = tiny_model()
    batch = make_batch(model, short_examples)
    reduced = model.reduce(batch.mel)
    assert torch.equal(reduced, batch.mel[:, ::4].transpose(1, 2))
    assert reduced.shape[-1] == batch.mel.shape[1] // 4
    shifted = model.decoder_input(reduced)
    assert torch.equal(shifted[:, :, 0], torch.zeros_like(shifted[:, :, 0]))
    assert torch.equal(shifted[:, :, 1:], reduced[:, :, :-1])
    assert model.reduced_lengths(torch.tensor([8, 9, 11, 12])).tolist() == [2, 3, 3, 3]


def test_ssrn_output_has_four_times_the_frames(short_examples: list[Example]) -> None:
    model = tiny_model().eval()
    with torch.no_grad():
        for frames in (1, 7, 20):
            out = model.ssrn(torch.rand(2, 80, frames))
            assert out.shape == (2, model.config.audio.n_freq, 4 * frames)


def test_padded_batches_compute_what_each_utterance_alone_would(short_examples: list[Example]) -> None:
    """Masks keep padding out of the non-causal TextEnc and SSRN and out of the attention."""
    model = tiny_model().eval()
    batch = make_batch(model, short_examples)
    alone = make_batch(model, short_examples[:1])
    with torch.no_grad():
        batched = model.alignment(batch)[0]
        single = model.alignment(alone)[0]
        reduced = model.reduce(batch.mel)
        ssrn_batched = model.ssrn(reduced, model.reduced_lengths(batch.frame_lengths))[0]
        ssrn_single = model.ssrn(model.reduce(alone.mel))[0]
    np.testing.assert_allclose(batched.soft, single.soft, atol=1e-5)
    frames = short_examples[0].num_frames
    torch.testing.assert_close(ssrn_batched[:, :frames], ssrn_single[:, :frames], atol=1e-4, rtol=1e-4)


# ---- training ------------------------------------------------------------------------------------


def test_each_network_has_its_own_losses_and_touches_only_its_parameters(short_examples: list[Example]) -> None:
    """One Adam step per network on its own loss changes every parameter of that network only."""
    model = tiny_model()
    model.train()
    batch = make_batch(model, short_examples[:2])
    expected_parts = {"text2mel": {"loss", "l1", "bd", "att"}, "ssrn": {"loss", "l1", "bd"}}
    for network, other in (("text2mel", "ssrn"), ("ssrn", "text2mel")):
        own, others = model.network_parameters(network), model.network_parameters(other)
        before = [p.detach().clone() for p in own]
        before_others = [p.detach().clone() for p in others]
        optimizer = torch.optim.Adam(own, lr=1e-3)
        model.zero_grad(set_to_none=True)
        losses = model.training_step(batch, step=0, network=network)
        assert set(losses) == expected_parts[network]
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
        assert all(p.grad is None for p in others)
        optimizer.step()
        assert all(not torch.equal(p.detach(), b) for p, b in zip(own, before))
        assert all(torch.equal(p.detach(), b) for p, b in zip(others, before_others))
    with pytest.raises(ValueError, match="ssrn"):
        model.training_step(batch, step=0)


@pytest.mark.parametrize("weight", [1.0, 0.0, 5.0])
def test_text2mel_loss_is_l1_plus_bd_plus_weighted_attention_loss(short_examples: list[Example], weight: float) -> None:
    model = tiny_model(guided_attention_weight=weight).eval()
    with torch.no_grad():
        parts = model.training_step(make_batch(model, short_examples[:2]), step=0, network="text2mel")
    expected = parts["l1"] + parts["bd"] + weight * parts["att"]
    assert float(parts["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(parts["att"]) > 0.0


def overfit(model: DCTTS, batch: Batch, network: str, steps: int, lr: float) -> list[dict[str, float]]:
    """Adam with K's clipping by value on one batch; the loss parts of every step."""
    parameters = model.network_parameters(network)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    history = []
    for step in range(steps):
        parts = model.training_step(batch, step, network)
        optimizer.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_value_(parameters, 1.0)
        optimizer.step()
        history.append({k: v.item() for k, v in parts.items()})
    return history


@pytest.mark.parametrize(("network", "steps"), [("text2mel", 80), ("ssrn", 40)])
def test_loss_falls_when_overfitting_one_batch(short_examples: list[Example], network: str, steps: int) -> None:
    """The binary divergence has a floor (the targets' own entropy), so the total falls by less
    than the L1 part. Typical: total -25 % (SSRN) to -35 %, L1 -50 % to -60 %."""
    model = tiny_model(dropout=0.0)
    model.train()
    history = overfit(model, make_batch(model, short_examples[:2]), network, steps, lr=3e-3)
    first, last = history[0], history[-10:]
    assert min(h["loss"] for h in last) < 0.85 * first["loss"], [h["loss"] for h in history[::10]]
    assert min(h["l1"] for h in last) < 0.6 * first["l1"], [h["l1"] for h in history[::10]]


def test_ssrn_windows_keep_mel_and_linear_frames_together() -> None:
    """Window i of the reduced mel sits over linear frames 4i .. 4i + 3 of the same utterance."""
    model = tiny_model()
    frames = torch.arange(40.0)
    mel = frames[::4].expand(2, 80, -1)
    linear = frames.expand(2, 513, -1)
    mel_w, linear_w, reduced_lengths, frame_lengths = model._random_windows(
        mel, linear, torch.tensor([10, 3]), torch.tensor([40, 11]), window=4
    )
    assert mel_w.shape == (2, 80, 4) and linear_w.shape == (2, 513, 16)
    torch.testing.assert_close(linear_w[:, 0, ::4], mel_w[:, 0, :])
    assert mel_w[1, 0, 0] == 0 and reduced_lengths[1] == 3 and frame_lengths[1] == 11  # shorter than a window
    assert reduced_lengths[0] == 4 and frame_lengths[0] == 16


# ---- inference -----------------------------------------------------------------------------------


def test_frame_by_frame_decoding_equals_the_teacher_forced_pass(short_examples: list[Example]) -> None:
    """The causal-conv cache gives what recomputing the whole prefix gives (no forcing here)."""
    model = tiny_model(attention_window_back=10_000, attention_window_forward=10_000, max_reduced_frames=12)
    text = text_of(short_examples[0])
    synthesis = model.infer(text)
    assert synthesis.info["forced_steps"] == 0
    coarse = torch.from_numpy(synthesis.info["coarse_mel"])
    mel = coarse.T[None]  # [1, F, T_r]
    model.eval()
    with torch.no_grad():
        logits, attention = model.text2mel(text[None], None, model.decoder_input(mel))
    torch.testing.assert_close(torch.sigmoid(logits)[0].T, coarse, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention[0], torch.from_numpy(synthesis.alignment), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window_back", [1, 0])
def test_forcibly_incremental_attention_keeps_the_path_in_its_window(
    short_examples: list[Example], window_back: int
) -> None:
    """An untrained model attends anywhere; forcing keeps every move within [-back, +3]."""
    forced = 0
    for seed in range(2):
        torch.manual_seed(seed)
        config = dataclasses.replace(DCTTSConfig.tiny(), attention_window_back=window_back, max_reduced_frames=60)
        model = DCTTS(config, num_symbols=len(SYMBOLS))
        for example in short_examples:
            synthesis = model.infer(text_of(example))
            path = synthesis.alignment.argmax(axis=0)
            moves = np.diff(np.concatenate([[-1], path]))
            assert moves.min() >= -window_back and moves.max() <= 3, path
            forced += synthesis.info["forced_steps"]
    assert forced > 0  # the rule was exercised, not just satisfied by chance


def test_infer_stops_after_two_frames_on_the_last_character(short_examples: list[Example]) -> None:
    """An empty window ([1, 0]) forces one character per frame: 0 .. N−1, then N−1 again -> stop."""
    model = tiny_model(attention_window_back=-1, attention_window_forward=0)
    text = text_of(short_examples[0])
    synthesis = model.infer(text)
    assert synthesis.stopped is True and synthesis.info["hit_max_frames"] is False
    assert synthesis.info["reduced_frames"] == len(text) + 1
    assert synthesis.alignment.argmax(axis=0).tolist() == [*range(len(text)), len(text) - 1]


def test_infer_outputs_and_the_max_frames_guard(short_examples: list[Example]) -> None:
    model = tiny_model(max_reduced_frames=5, stop_after_eos_frames=10_000)
    text = text_of(short_examples[0])
    synthesis = model.infer(text)
    assert model.training  # a fresh module is in training mode and infer gives it back
    assert synthesis.stopped is False and synthesis.info["hit_max_frames"] is True
    assert synthesis.info["reduced_frames"] == 5 and synthesis.info["frames"] == 20
    assert synthesis.info["coarse_mel"].shape == (5, 80)
    # The reported mel is full rate: the one SSRN's linear output implies.
    assert synthesis.mel.shape == (20, 80) and synthesis.mel.dtype == np.float32
    np.testing.assert_allclose(synthesis.mel, linear_to_mel(synthesis.linear, model.config.audio), atol=1e-6)
    assert synthesis.linear.shape == (4 * 5, 513)
    assert synthesis.alignment.shape == (len(text), 5)
    assert synthesis.frames_per_step == 4
    assert synthesis.audio_config == synthesis.linear_audio_config == model.config.audio
    for array in (synthesis.mel, synthesis.linear, synthesis.alignment):
        assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0


# ---- teacher-forced alignment ---------------------------------------------------------------------


@pytest.mark.parametrize("frame_multiple", [4, 1])
def test_alignment_shapes_and_durations(short_examples: list[Example], frame_multiple: int) -> None:
    model = tiny_model()
    alignments = model.alignment(make_batch(model, short_examples, frame_multiple))
    assert model.training
    for alignment, example in zip(alignments, short_examples):
        assert alignment.id == example.id
        assert alignment.soft.shape == (len(example.text_ids), math.ceil(example.num_frames / 4))
        assert alignment.frames_per_step == 4
        np.testing.assert_allclose(alignment.soft.sum(axis=0), 1.0, atol=1e-5)
        assert alignment.durations.shape == (len(example.text_ids),)
        assert alignment.durations.sum() == example.num_frames and alignment.durations.min() >= 0


def test_ssrn_trains_only_for_its_own_step_budget(tmp_path, embedded_corpus: Corpus) -> None:
    """The two networks are trained independently: with ssrn_steps=2 the trainer updates SSRN at
    steps 0 and 1 only, Text2Mel at every step, and logs each network's own seconds."""
    import json

    from ttsbench.train import TrainOptions, train

    model = tiny_model(ssrn_steps=2, max_reduced_frames=20)
    assert model.network_steps() == {"ssrn": 2} and tiny_model().network_steps() == {}
    train(model, embedded_corpus, tmp_path, TrainOptions(steps=2, device="cpu", val_every=0, progress=False))
    ssrn_after_budget = {k: v.clone() for k, v in model.ssrn.state_dict().items()}
    text2mel_after_budget = {k: v.clone() for k, v in model.text2mel.state_dict().items()}
    train(model, embedded_corpus, tmp_path, TrainOptions(steps=4, device="cpu", val_every=0, progress=False))
    assert all(torch.equal(v, model.ssrn.state_dict()[k]) for k, v in ssrn_after_budget.items())
    assert not all(torch.equal(v, model.text2mel.state_dict()[k]) for k, v in text2mel_after_budget.items())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert ["ssrn/loss" in row for row in rows] == [True, True, False, False]
    assert all("text2mel/loss" in row for row in rows)
    assert rows[3]["seconds/ssrn"] == rows[1]["seconds/ssrn"] > 0  # SSRN's time stops with its updates
    assert rows[3]["seconds/text2mel"] > rows[1]["seconds/text2mel"]


def test_mean_output_init_sets_each_output_bias_to_its_targets_mean(short_examples: list[Example]) -> None:
    """The bias of each network's last conv becomes the logit of the first batch's mean target
    per bin over real frames (padding excluded), and only when the config asks for it."""
    model = tiny_model()  # tiny sets mean_output_init
    batch = make_batch(model, short_examples)
    untouched = tiny_model(mean_output_init=False)
    untouched.on_train_start([batch])
    assert torch.equal(untouched.ssrn.layers[-1].conv.bias, torch.zeros(model.config.audio.n_freq))
    model.on_train_start([batch])
    linear = torch.cat([torch.tensor(np.array(e.features["linear"])) for e in short_examples])  # real frames only
    expected = torch.logit(linear.mean(dim=0).clamp(1e-3, 1 - 1e-3))
    torch.testing.assert_close(model.ssrn.layers[-1].conv.bias, expected, rtol=1e-4, atol=1e-4)
    reduced = torch.cat([torch.tensor(np.array(e.features["mel"][::4])) for e in short_examples])
    expected_mel = torch.logit(reduced.mean(dim=0).clamp(1e-3, 1 - 1e-3))
    torch.testing.assert_close(model.text2mel.audio_decoder[-1].conv.bias, expected_mel, rtol=1e-4, atol=1e-4)


def test_teacher_forced_output_is_text2mel_on_the_recording_through_ssrn(short_examples: list[Example]) -> None:
    """alignment() also gives the teacher-forced pair output, at the recording's full frame rate:
    SSRN on Text2Mel's output when fed the recording's reduced frames."""
    model = tiny_model()
    batch = make_batch(model, short_examples)
    alignments = model.alignment(batch)
    model.eval()
    with torch.no_grad():
        target = model.reduce(model._pad_frames(batch.mel))
        logits, _ = model.text2mel(batch.text_ids, batch.text_lengths, model.decoder_input(target))
        linear = torch.sigmoid(model.ssrn(torch.sigmoid(logits)))
    for index, alignment in enumerate(alignments):
        forced = alignment.teacher_forced
        frames = int(batch.frame_lengths[index])
        assert forced is not None and forced.num_frames == frames and forced.linear is not None
        torch.testing.assert_close(torch.from_numpy(forced.linear), linear[index, :, :frames].T)
