"""Guided attention: the closed-form penalty per utterance, its masking, and the loss's preference."""

from __future__ import annotations

import math

import torch

from ttsbench.align.guided import guided_attention_loss, guided_attention_weights


def closed_form(n: int, t: int, text_length: int, frame_length: int, g: float) -> float:
    return 1.0 - math.exp(-((n / text_length - t / frame_length) ** 2) / (2 * g * g))


def test_weights_match_the_closed_form_per_utterance() -> None:
    text_lengths = torch.tensor([5, 3])
    frame_lengths = torch.tensor([8, 12])
    weights = guided_attention_weights(text_lengths, frame_lengths, g=0.2)
    assert weights.shape == (2, 5, 12)
    for utt, n, t in [(0, 0, 0), (0, 2, 3), (0, 4, 7), (1, 1, 6), (1, 2, 3), (1, 2, 11)]:
        expected = closed_form(n, t, int(text_lengths[utt]), int(frame_lengths[utt]), 0.2)
        assert math.isclose(float(weights[utt, n, t]), expected, rel_tol=1e-5, abs_tol=1e-6), (utt, n, t)
    # Same cell, different utterance lengths -> different penalties.
    assert not math.isclose(float(weights[0, 2, 3]), float(weights[1, 2, 3]), abs_tol=1e-3)


def test_weights_are_zero_outside_each_utterance() -> None:
    weights = guided_attention_weights(torch.tensor([5, 3]), torch.tensor([8, 12]), g=0.4, max_frame_length=15)
    assert weights.shape == (2, 5, 15)
    assert torch.all(weights[0, :, 8:] == 0)
    assert torch.all(weights[1, 3:, :] == 0)
    assert torch.all(weights[1, :, 12:] == 0)
    assert weights[1, 2, 0] > 0  # valid and off-diagonal


def test_diagonal_attention_costs_less_than_anti_diagonal() -> None:
    text_length, frame_length = 10, 30
    diagonal = torch.zeros(1, text_length, frame_length)
    anti_diagonal = torch.zeros(1, text_length, frame_length)
    for t in range(frame_length):
        n = t * text_length // frame_length
        diagonal[0, n, t] = 1.0
        anti_diagonal[0, text_length - 1 - n, t] = 1.0
    lengths = (torch.tensor([text_length]), torch.tensor([frame_length]))
    diagonal_loss = guided_attention_loss(diagonal, *lengths, g=0.2)
    anti_loss = guided_attention_loss(anti_diagonal, *lengths, g=0.2)
    assert diagonal_loss < 0.1 * anti_loss


def test_loss_averages_over_valid_cells_only() -> None:
    attention = torch.ones(2, 4, 6)
    text_lengths, frame_lengths = torch.tensor([4, 2]), torch.tensor([6, 3])
    weights = guided_attention_weights(text_lengths, frame_lengths, g=0.2)
    expected = weights.sum() / (4 * 6 + 2 * 3)
    assert torch.isclose(guided_attention_loss(attention, text_lengths, frame_lengths, g=0.2), expected)
