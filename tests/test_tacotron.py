"""Tacotron (gradual training): registry, presets, schedule, training, r changes, inference, alignment.

Batches come from the shortest clips of the real embedded corpus so the whole file runs on 2 CPU
cores in about a minute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ttsbench.models
from ttsbench.audio import AudioConfig
from ttsbench.batches import Batch, Example, collate, load_examples
from ttsbench.data import Corpus
from ttsbench.models.tacotron import Tacotron, TacotronConfig
from ttsbench.text import SYMBOLS

SILENCE = math.log(1e-5)
PAD_VALUES = {"mel": SILENCE, "linear": SILENCE}


@pytest.fixture(scope="module")
def short_examples(embedded_corpus: Corpus) -> list[Example]:
    """The three shortest clips (about 1.8 to 2.6 s) with mel and linear features."""
    shortest = sorted(embedded_corpus.utterances, key=lambda u: u.duration)[:3]
    return load_examples(shortest, AudioConfig(), kinds=("mel", "linear"), progress=False)


def make_batch(examples: list[Example], r: int) -> Batch:
    return collate(examples, frame_multiple=r, pad_values=PAD_VALUES)


def tiny_model(**changes: object) -> Tacotron:
    torch.manual_seed(0)
    return Tacotron(dataclasses.replace(TacotronConfig.tiny(), **changes), num_symbols=len(SYMBOLS))


def test_registered_under_its_fixed_name() -> None:
    assert "tacotron-gradual" in ttsbench.models.names()
    assert ttsbench.models.get("tacotron-gradual") is Tacotron
    assert ttsbench.models.describe("tacotron-gradual").startswith("Tacotron (v1) with gradual training")


def test_presets_sizes_and_recipe() -> None:
    full = ttsbench.models.build("tacotron-gradual", preset="full")
    tiny = ttsbench.models.build("tacotron-gradual", preset="tiny")
    assert 6_000_000 < full.num_parameters() < 8_000_000  # Coqui's Tacotron is ~7M
    assert tiny.num_parameters() < 1_500_000
    assert full.decoder.proj_to_mel.out_features == 80 * 7
    assert full.last_linear.out_features == 513 and tiny.last_linear.out_features == 513
    for config in (TacotronConfig.full(), TacotronConfig.tiny()):
        assert config.batch_size == config.gradual_training[0][2]
    full_config = TacotronConfig.full()
    assert (full_config.optimizer, full_config.betas, full_config.learning_rate) == ("radam", (0.9, 0.998), 1e-4)
    assert (full_config.lr_schedule, full_config.warmup_steps, full_config.grad_clip_norm) == ("noam", 4000, 5.0)


def test_config_round_trips_through_a_dict() -> None:
    config = TacotronConfig.tiny()
    assert TacotronConfig.from_dict(config.to_dict()) == config


def test_schedule_changes_at_the_exact_boundary_steps() -> None:
    schedules = tiny_model().schedules()
    r, batch_size = schedules["r"], schedules["batch_size"]
    assert [r(s) for s in (0, 1499, 1500, 2999, 3000, 5999, 6000, 10_000)] == [7, 7, 5, 5, 3, 3, 2, 2]
    assert [batch_size(s) for s in (0, 5999, 6000)] == [8, 8, 8]
    full = ttsbench.models.build("tacotron-gradual", preset="full").schedules()
    assert [full["r"](s) for s in (9_999, 10_000, 49_999, 50_000, 129_999, 130_000, 290_000)] == [7, 5, 5, 3, 3, 2, 1]
    assert [full["batch_size"](s) for s in (129_999, 130_000, 289_999, 290_000)] == [32, 16, 16, 8]


def test_apply_schedules_sets_r_and_rejects_r_above_r_init() -> None:
    model = tiny_model()
    model.apply_schedules({"r": 3.0, "batch_size": 8.0})
    assert model.r == 3 and model.frame_multiple() == 3
    with pytest.raises(ValueError, match="r must lie"):
        model.set_r(8)


def test_every_parameter_changes_after_one_optimizer_step(short_examples: list[Example]) -> None:
    model = tiny_model()
    model.train()
    batch = make_batch(short_examples[:2], model.r)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = model.training_step(batch, step=0)
    assert set(losses) == {"loss", "mel_loss", "linear_loss", "stop_loss", "ga_loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
    assert unchanged == []


def test_no_ga_loss_when_ga_alpha_is_zero(short_examples: list[Example]) -> None:
    model = tiny_model(ga_alpha=0.0)
    losses = model.training_step(make_batch(short_examples[:2], model.r), step=0)
    assert "ga_loss" not in losses


def test_loss_falls_when_overfitting_one_batch(short_examples: list[Example]) -> None:
    model = tiny_model()
    model.train()
    batch = make_batch(short_examples[:2], model.r)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        loss = model.training_step(batch, step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < 0.35 * losses[0], losses[::10]


@pytest.mark.parametrize("r", [6, 4, 3, 2])
def test_r_sets_the_number_of_decoder_steps(short_examples: list[Example], r: int) -> None:
    model = tiny_model(max_decoder_steps=20)
    model.apply_schedules({"r": r})
    batch = make_batch(short_examples, model.frame_multiple())
    assert batch.mel.shape[1] % r == 0

    out = model(batch.text_ids, batch.text_lengths, batch.mel, batch.frame_lengths)
    steps = batch.mel.shape[1] // r
    assert out.stop_logits.shape == (len(batch), steps)
    assert out.attention.shape == (len(batch), steps, batch.text_ids.shape[1])
    assert out.mel.shape == (len(batch), steps * r, 80)
    assert out.linear.shape == (len(batch), steps * r, 513)
    assert torch.isfinite(model.training_step(batch, step=0)["loss"])

    model.train()
    alignments = model.alignment(batch)
    assert model.training  # restored
    for alignment, example in zip(alignments, short_examples):
        assert alignment.id == example.id
        assert alignment.soft.shape == (len(example.text_ids), math.ceil(example.num_frames / r))
        assert alignment.frames_per_step == r
        assert np.allclose(alignment.soft.sum(axis=0), 1.0, atol=1e-4)
        assert alignment.durations.shape == (len(example.text_ids),)
        assert alignment.durations.sum() == example.num_frames

    synthesis = model.infer(torch.from_numpy(short_examples[0].text_ids))
    assert synthesis.num_frames == synthesis.info["decoder_steps"] * r
    assert synthesis.info["r"] == synthesis.frames_per_step == r


def test_alignment_accepts_a_batch_collated_for_another_r(short_examples: list[Example]) -> None:
    model = tiny_model()
    model.set_r(4)
    alignments = model.alignment(make_batch(short_examples, 1))
    assert [a.soft.shape[1] for a in alignments] == [math.ceil(e.num_frames / 4) for e in short_examples]


def test_infer_reports_the_max_steps_guard(short_examples: list[Example]) -> None:
    model = tiny_model(max_decoder_steps=5)
    # An untrained stopnet sits near sigmoid = 0.5; push it down so only the guard can stop.
    torch.nn.init.constant_(model.decoder.stopnet[1].bias, -20.0)
    text = torch.from_numpy(short_examples[0].text_ids)
    synthesis = model.infer(text)
    assert model.training  # a fresh module is in training mode and infer must give it back
    assert synthesis.stopped is False and synthesis.info["hit_max_steps"] is True
    assert synthesis.info["decoder_steps"] == 5
    assert synthesis.mel.shape == (5 * model.r, 80) and synthesis.mel.dtype == np.float32
    assert synthesis.linear.shape == (5 * model.r, 513)
    assert synthesis.alignment.shape == (len(text), 5)
    assert np.isfinite(synthesis.mel).all() and np.isfinite(synthesis.linear).all()
    assert synthesis.audio_config == model.config.audio


def test_infer_stops_on_the_stop_token_after_a_quarter_of_the_text(short_examples: list[Example]) -> None:
    model = tiny_model()
    torch.nn.init.constant_(model.decoder.stopnet[1].bias, 20.0)
    text = torch.from_numpy(short_examples[0].text_ids)
    synthesis = model.infer(text)
    assert synthesis.stopped is True and synthesis.info["hit_max_steps"] is False
    assert synthesis.info["decoder_steps"] == len(text) // 4 + 1


def test_current_r_survives_a_state_dict_round_trip() -> None:
    trained = tiny_model()
    trained.set_r(2)
    reloaded = tiny_model()
    reloaded.load_state_dict(trained.state_dict())
    assert reloaded.r == 2
