"""RL duration model: which parameters each loss trains, the policy gradient of exactly the
sampled durations, padding that never counts, the +1 duration rule shared by training and
inference, and one measurable behaviour per remedy switch.

Batches come from the shortest clips of the real embedded corpus, so the file runs in well
under a minute on one thread.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import ttsbench.models.rl_duration  # noqa: F401  (registers the system)
from ttsbench import models
from ttsbench.audio import AudioConfig
from ttsbench.batches import Batch, Example, collate, load_examples
from ttsbench.data import Corpus, load_corpus
from ttsbench.models.rl_duration import VARIANT_REMEDIES, RLDuration, RLDurationConfig
from ttsbench.text import SYMBOLS
from ttsbench.train import TrainOptions, train

SILENCE = math.log(1e-5)
PAD_VALUES = {"mel": SILENCE}
REQUIRED_KEYS = {
    "loss",
    "reconstruction_loss",
    "pg_loss",
    "reward_mean",
    "reward_std",
    "policy_entropy",
    "predicted_length",
    "target_length",
}
# The reference's layer sizes (hparams.py, networks.py) without the embedding: BiGRU 512->256x2
# (1,182,720) + Linear 512->512 (262,656) + policy 512->512->24 (274,968) + 2-layer BiGRU
# 256x2 (2,365,440) + Linear 512->80 (41,040). The embedding adds 512 per symbol.
REFERENCE_PARAMETERS_WITHOUT_EMBEDDING = 4_126_824


@pytest.fixture(scope="module")
def short_examples(embedded_corpus: Corpus) -> list[Example]:
    """The three shortest clips (about 1.8 to 2.6 s, 30 to 50 characters)."""
    shortest = sorted(embedded_corpus.utterances, key=lambda u: u.duration)[:3]
    return load_examples(shortest, AudioConfig(), kinds=("mel",), progress=False)


@pytest.fixture(scope="module")
def batch(short_examples: list[Example]) -> Batch:
    return collate(short_examples, 1, PAD_VALUES)


def build(*overrides: str) -> RLDuration:
    """The tiny model; equal seeds give equal weights whatever the remedies (same layers)."""
    config = RLDurationConfig.tiny().with_overrides(overrides)
    return models.build("rl-duration", config, seed=0)


def fixed_categories(batch: Batch, samples: int, longest: int = 6, seed: int = 0) -> torch.Tensor:
    """Categories [B, S, L] of durations 1..longest frames, drawn with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, longest, (len(batch), samples, batch.text_ids.shape[1]), generator=generator)


def record_samples(model: RLDuration, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every category tensor the model's own sampler draws, in order."""
    drawn: list[torch.Tensor] = []
    sample = model.sample_categories

    def recording_sampler(logits: torch.Tensor, samples: int) -> torch.Tensor:
        drawn.append(sample(logits, samples))
        return drawn[-1]

    monkeypatch.setattr(model, "sample_categories", recording_sampler)
    return drawn


def grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(sum(g.pow(2).sum() for g in grads)) ** 0.5 if grads else 0.0


# ---- registry and presets --------------------------------------------------------------------


def test_registered_with_presets_and_variants() -> None:
    assert models.get("rl-duration") is RLDuration
    assert models.describe("rl-duration").startswith("Non-autoregressive TTS whose durations are learned by policy")

    full = RLDurationConfig.full()
    assert (full.embedding_dim, full.encoder_units, full.policy_units, full.max_duration) == (512, 256, 512, 24)
    assert (full.decoder_units, full.decoder_layers, full.batch_size) == (256, 2, 32)
    assert (full.learning_rate, full.weight_decay, full.grad_clip_norm, full.variant) == (1e-3, 1e-6, 1.0, "published")
    expected = REFERENCE_PARAMETERS_WITHOUT_EMBEDDING + 512 * len(SYMBOLS)
    assert models.build("rl-duration", preset="full").num_parameters() == expected

    tiny = RLDurationConfig.tiny()
    assert (tiny.embedding_dim, tiny.encoder_units, tiny.max_duration, tiny.batch_size) == (64, 32, 12, 8)
    assert (tiny.decoder_units, tiny.learning_rate) == (64, 3e-3)
    assert tiny.remedies == VARIANT_REMEDIES["remedied"]
    assert RLDurationConfig.from_dict(tiny.to_dict()) == tiny

    published = tiny.with_overrides(["variant=published"])
    assert published.remedies == VARIANT_REMEDIES["published"]
    one_switch = tiny.with_overrides(["variant=published", "entropy_weight=0.05"])
    assert one_switch.remedies == dataclasses.replace(VARIANT_REMEDIES["published"], entropy_weight=0.05)
    with pytest.raises(ValueError, match="leave_one_out"):
        tiny.with_overrides(["samples_per_utterance=1"])
    with pytest.raises(ValueError, match="credit"):
        tiny.with_overrides(["credit=frame"])


# ---- which parameters each loss trains --------------------------------------------------------


@pytest.mark.parametrize("overrides", [("variant=published",), ("warm_start=none",)], ids=["published", "remedied"])
def test_pg_loss_trains_only_the_actor_and_reconstruction_reaches_the_decoder(batch: Batch, overrides) -> None:
    model = build(*overrides)
    losses = model.training_step(batch, 0)

    losses["pg_loss"].backward(retain_graph=True)
    assert grad_norm(model.decoder) == 0.0
    assert all(p.grad is None for p in model.decoder.parameters())
    assert grad_norm(model.policy) > 0 and grad_norm(model.encoder) > 0
    reached = {id(p) for p in model.parameters() if p.grad is not None}
    assert reached == {id(p) for m in (model.encoder, model.policy) for p in m.parameters()}  # the whole actor

    model.zero_grad(set_to_none=True)
    losses["reconstruction_loss"].backward()
    assert grad_norm(model.decoder) > 0
    assert grad_norm(model.encoder) > 0  # through the regulated token states
    assert all(p.grad is None for p in model.policy.parameters())  # sampled durations are discrete


# ---- the log-prob of exactly the sampled durations --------------------------------------------


def test_pg_loss_is_the_log_prob_of_the_durations_used(batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    """Published rule, by hand: r_b = sum over t < T_b and bins of 1 / ((y_hat - y)^2 + 1),
    standardised over the batch; pg = -sum_b r_b sum_j log pi(c_bj) / B."""
    model = build("variant=published")
    drawn = record_samples(model, monkeypatch)
    losses = {k: v.item() for k, v in model.training_step(batch, 0).items()}
    categories = drawn[0]  # [B, 1, L]

    with torch.no_grad():
        states, logits = model.policy_logits(batch.text_ids, batch.text_lengths)
        durations = (categories[:, 0] + 1) * batch.text_mask
        mel = model.decode(states, durations, batch.mel.shape[1])
        rewards = torch.stack(
            [(1 / ((mel[b, :t] - batch.mel[b, :t]) ** 2 + 1)).sum() for b, t in enumerate(batch.frame_lengths)]
        )
        advantages = (rewards - rewards.mean()) / (rewards.std() + np.finfo(np.float32).eps)
        log_pi = torch.log_softmax(logits, -1).gather(-1, categories[:, 0].unsqueeze(-1)).squeeze(-1)
        per_utterance = [advantages[b] * log_pi[b, :length].sum() for b, length in enumerate(batch.text_lengths)]
        expected = -sum(per_utterance) / len(batch)

    assert losses["reward_mean"] == pytest.approx(rewards.mean().item(), rel=1e-5)
    assert losses["pg_loss"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)
    assert losses["predicted_length"] == pytest.approx(durations.sum(1).float().mean().item())
    again = model.losses(batch, categories=categories)  # the same sample given explicitly
    assert again["pg_loss"].item() == pytest.approx(losses["pg_loss"], rel=1e-5)


# ---- padding never counts ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [("variant=published",), ()], ids=["published", "remedied"])
def test_padding_tokens_contribute_nothing(batch: Batch, overrides) -> None:
    model = build(*overrides)
    samples = model.remedies.samples_per_utterance
    categories = fixed_categories(batch, samples)
    padding = ~batch.text_mask
    assert padding.any()

    scrambled_ids = torch.where(padding, torch.full_like(batch.text_ids, 17), batch.text_ids)
    scrambled = dataclasses.replace(batch, text_ids=scrambled_ids)
    scrambled_categories = torch.where(padding.unsqueeze(1), torch.full_like(categories, 11), categories)

    original = model.losses(batch, categories=categories)
    changed = model.losses(scrambled, categories=scrambled_categories)
    for key in ("pg_loss", "reconstruction_loss", "reward_mean", "predicted_length", "policy_entropy"):
        assert changed[key].item() == pytest.approx(original[key].item(), rel=1e-5, abs=1e-6), key


def test_padded_batch_matches_the_utterance_alone(short_examples: list[Example]) -> None:
    """The shortest clip decodes identically alone and padded next to longer ones."""
    model = build()
    padded = collate(short_examples, 1, PAD_VALUES)
    alone = collate(short_examples[:1], 1, PAD_VALUES)
    assert padded.text_ids.shape[1] > alone.text_ids.shape[1] and padded.mel.shape[1] > alone.mel.shape[1]
    length = alone.text_ids.shape[1]
    categories = fixed_categories(padded, 1, longest=3)  # <= 3 frames a token: inside the clip
    with torch.no_grad():
        padded_states, padded_logits = model.policy_logits(padded.text_ids, padded.text_lengths)
        alone_states, alone_logits = model.policy_logits(alone.text_ids, alone.text_lengths)
        torch.testing.assert_close(padded_logits[:1, :length], alone_logits, atol=1e-5, rtol=1e-5)
        padded_rollout = model.rollout(padded, padded_states, categories)
        alone_rollout = model.rollout(alone, alone_states, categories[:1, :, :length])
    frames = int(alone_rollout.durations.sum())
    assert frames <= alone.mel.shape[1]
    torch.testing.assert_close(padded_rollout.mel[0, :frames], alone_rollout.mel[0, :frames], atol=1e-5, rtol=1e-5)


# ---- the +1 duration rule ---------------------------------------------------------------------


def force_category(model: RLDuration, category: int) -> None:
    """Make the policy certain of one category for every token."""
    with torch.no_grad():
        model.policy.output.weight.zero_()
        model.policy.output.bias.fill_(-30.0)
        model.policy.output.bias[category] = 30.0


def test_inference_and_training_share_the_plus_one_rule(batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("variant=published")
    ids = batch.text_ids[0, : batch.text_lengths[0]]

    untrained = model.infer(ids)
    with torch.no_grad():
        _, logits = model.policy_logits(ids[None], batch.text_lengths[:1])
    np.testing.assert_array_equal(untrained.durations, (logits[0].argmax(-1) + 1).numpy())
    assert untrained.durations.min() >= 1 and untrained.num_frames == untrained.durations.sum()

    force_category(model, 0)  # category 0 is one frame, never zero
    assert np.all(model.infer(ids).durations == 1)

    force_category(model, 4)
    synthesis = model.infer(ids)
    assert np.all(synthesis.durations == 5)
    assert synthesis.mel.shape == (5 * len(ids), 80) and synthesis.stopped and synthesis.alignment is None
    drawn = record_samples(model, monkeypatch)
    losses = model.training_step(batch, 0)
    assert torch.all(drawn[0][batch.text_mask.unsqueeze(1)] == 4)
    assert losses["predicted_length"].item() == pytest.approx(5 * float(batch.text_lengths.float().mean()))

    alignments = model.alignment(batch)
    assert model.training
    assert [a.id for a in alignments] == batch.ids
    for alignment, length in zip(alignments, batch.text_lengths):
        assert alignment.soft is None and alignment.durations.dtype == np.int64
        np.testing.assert_array_equal(alignment.durations, np.full(int(length), 5))


def test_inference_stops_at_max_frames(batch: Batch) -> None:
    model = build("max_inference_frames=20")
    force_category(model, 4)
    synthesis = model.infer(batch.text_ids[0, : batch.text_lengths[0]])
    assert synthesis.num_frames == 20 and not synthesis.stopped and synthesis.info["hit_max_frames"]
    assert synthesis.durations.sum() == 20 and synthesis.durations[:4].tolist() == [5, 5, 5, 5]


# ---- training steps and logs ------------------------------------------------------------------


def test_both_variants_train_through_the_trainer_and_log_every_key(tmp_path) -> None:
    for variant in ("published", "remedied"):
        model = build(f"variant={variant}", "batch_size=2")
        out = tmp_path / variant
        train(model, load_corpus("embedded"), out, TrainOptions(steps=2, val_every=2, progress=False))
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        for row in rows:
            assert REQUIRED_KEYS <= row.keys(), REQUIRED_KEYS - row.keys()
            assert all(math.isfinite(row[k]) for k in REQUIRED_KEYS)
        validation = json.loads((out / "val.jsonl").read_text().splitlines()[-1])
        assert math.isfinite(validation["mel_l1_dtw"]) and validation["length_ratio"] > 0


def test_length_prior_starts_every_token_at_frames_per_character(batch: Batch) -> None:
    model = build()
    assert model.remedies.warm_start == "length_prior"
    model.on_train_start([batch])
    frames_per_token = float(batch.frame_lengths.sum() / batch.text_lengths.sum())
    with torch.no_grad():
        _, logits = model.policy_logits(batch.text_ids, batch.text_lengths)
    probs = torch.softmax(logits, -1)
    durations = torch.arange(1, model.config.max_duration + 1, dtype=probs.dtype)
    expected_duration = (probs * durations).sum(-1)[batch.text_mask]
    target = torch.full_like(expected_duration, frames_per_token)
    torch.testing.assert_close(expected_duration, target, atol=0.1, rtol=0)
    weights_before = model.policy.output.bias.clone()
    model.on_train_start([dataclasses.replace(batch, frame_lengths=batch.frame_lengths * 2)])
    assert torch.equal(model.policy.output.bias, weights_before)  # applied once (kept across resume)

    unprimed = build("warm_start=none")
    unprimed.on_train_start([batch])
    assert not bool(unprimed.prior_applied)


# ---- each remedy changes behaviour ------------------------------------------------------------


def losses_for(batch: Batch, categories: torch.Tensor, *overrides: str) -> dict[str, float]:
    return {k: v.item() for k, v in build(*overrides).losses(batch, categories=categories).items()}


def test_each_remedy_switch_changes_behaviour(batch: Batch) -> None:
    categories = fixed_categories(batch, 4)
    base = losses_for(batch, categories)

    no_entropy = losses_for(batch, categories, "entropy_weight=0")
    assert no_entropy["loss"] - base["loss"] == pytest.approx(0.01 * base["policy_entropy"], rel=1e-4)
    decaying = build("entropy_decay_steps=100")
    assert [decaying.entropy_weight(step) for step in (0, 50, 100, 200)] == pytest.approx([0.01, 0.005, 0.0, 0.0])
    halfway = decaying.losses(batch, categories=categories, step=50)["loss"].item()
    assert halfway - base["loss"] == pytest.approx(0.005 * base["policy_entropy"], rel=1e-4)

    no_length_penalty = losses_for(batch, categories, "length_penalty=0")
    assert no_length_penalty["reward_mean"] - base["reward_mean"] > 1e-4
    assert no_length_penalty["reconstruction_loss"] == pytest.approx(base["reconstruction_loss"])

    for switch in ("credit=utterance", "baseline=self_critical", "baseline=batch"):
        assert losses_for(batch, categories, switch)["pg_loss"] != pytest.approx(base["pg_loss"], abs=1e-6), switch

    summed = losses_for(batch, categories, "reduction=sum")
    assert summed["reward_mean"] > 10 * abs(base["reward_mean"])  # grows with frames x bins

    unpenalised = losses_for(batch, categories, "penalise_unmatched=false")
    assert unpenalised["reward_mean"] != pytest.approx(base["reward_mean"], abs=1e-6)

    unmasked = losses_for(batch, categories, "masked_reconstruction=false")
    assert unmasked["reconstruction_loss"] != pytest.approx(base["reconstruction_loss"], abs=1e-4)

    first_sample = losses_for(batch, categories, "decoder_target=first")
    assert first_sample["reconstruction_loss"] != pytest.approx(base["reconstruction_loss"], abs=1e-4)
    assert first_sample["pg_loss"] == pytest.approx(base["pg_loss"], rel=1e-4, abs=1e-6)  # same rewards


def test_decoder_learns_from_the_highest_reward_sample_or_the_greedy_durations(batch: Batch) -> None:
    """decoder_target=best: the reconstruction loss is that of the sample with the highest
    utterance reward, i.e. what decoder_target=first gives once that sample is put first;
    decoder_target=greedy: that of the policy's argmax durations."""
    samples = 4
    categories = fixed_categories(batch, samples)
    model = build()
    assert model.remedies.decoder_target == "best"
    with torch.no_grad():
        states, logits = model.policy_logits(batch.text_ids, batch.text_lengths)
        rollout = model.rollout(batch, states, categories)
        scores = model.score(
            rollout.mel,
            rollout.durations.flatten(0, 1),
            batch.mel.repeat_interleave(samples, dim=0),
            batch.frame_lengths.repeat_interleave(samples),
        )
    best = scores.utterance.view(len(batch), samples).argmax(1)
    assert torch.any(best != 0)  # otherwise "best" and "first" would coincide here
    rows = torch.arange(len(batch))
    best_first = categories.clone()
    best_first[rows, 0], best_first[rows, best] = categories[rows, best], categories[rows, 0]

    chosen = losses_for(batch, categories)["reconstruction_loss"]
    assert chosen == pytest.approx(losses_for(batch, best_first, "decoder_target=first")["reconstruction_loss"], rel=1e-5)
    assert chosen != pytest.approx(losses_for(batch, categories, "decoder_target=first")["reconstruction_loss"], rel=1e-3)

    greedy_first = categories.clone()
    greedy_first[:, 0] = logits.argmax(-1)
    greedy = losses_for(batch, categories, "decoder_target=greedy")["reconstruction_loss"]
    assert greedy == pytest.approx(losses_for(batch, greedy_first, "decoder_target=first")["reconstruction_loss"], rel=1e-5)


def test_leave_one_out_compares_samples_of_the_same_text(batch: Batch) -> None:
    """Identical samples of one utterance have (next to) zero advantage: no policy gradient."""
    gradients = {}
    samples = {"same": fixed_categories(batch, 1).expand(-1, 4, -1), "different": fixed_categories(batch, 4)}
    for name, categories in samples.items():
        model = build("entropy_weight=0", "imitation_weight=0")
        model.losses(batch, categories=categories)["loss"].backward()
        gradients[name] = grad_norm(model.policy)
    assert gradients["different"] > 0.01
    assert gradients["same"] < 1e-3 * gradients["different"]


def test_self_imitation_is_the_cross_entropy_towards_the_best_sample(batch: Batch) -> None:
    """imitation_weight=w adds w x (mean over real tokens of -log pi(best sample's category)),
    the best sample being the one with the highest utterance reward, and it reaches the actor only."""
    samples = 4
    categories = fixed_categories(batch, samples)
    model = build("imitation_weight=0.5")
    with torch.no_grad():
        states, logits = model.policy_logits(batch.text_ids, batch.text_lengths)
        rollout = model.rollout(batch, states, categories)
        scores = model.score(rollout.mel, rollout.durations.flatten(0, 1), batch.mel.repeat_interleave(samples, dim=0),
                             batch.frame_lengths.repeat_interleave(samples))
    best = categories[torch.arange(len(batch)), scores.utterance.view(len(batch), samples).argmax(1)]
    log_probs = torch.log_softmax(logits, -1).gather(2, best.unsqueeze(-1)).squeeze(-1)
    expected = -(log_probs * batch.text_mask).sum() / batch.text_mask.sum()

    with_imitation = losses_for(batch, categories, "imitation_weight=0.5")
    without = losses_for(batch, categories, "imitation_weight=0")
    assert with_imitation["imitation_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert with_imitation["loss"] - without["loss"] == pytest.approx(0.5 * expected.item(), rel=1e-4)
    assert "imitation_loss" not in without

    model.losses(batch, categories=categories)["imitation_loss"].backward()
    assert grad_norm(model.policy) > 0 and grad_norm(model.decoder) == 0


def test_self_imitation_needs_several_samples() -> None:
    with pytest.raises(ValueError, match="imitation_weight > 0 needs samples_per_utterance >= 2"):
        RLDurationConfig.tiny().with_overrides(["baseline=batch", "imitation_weight=1", "samples_per_utterance=1"])
