from __future__ import annotations

import numpy as np
import torch

from ttsbench.models.layers import attention_durations, durations_to_path, length_regulate
from ttsbench.folders import TrainFolder
from ttsbench.train import duration_change


def test_length_regulator_repeats_each_token_by_its_duration():
    hidden = torch.arange(12.0).reshape(2, 3, 2)
    durations = torch.tensor([[1, 0, 2], [2, 1, 1]])
    frames, lengths = length_regulate(hidden, durations)
    assert lengths.tolist() == [3, 4]
    assert frames.shape == (2, 4, 2)
    assert frames[0].tolist() == [[0, 1], [4, 5], [4, 5], [0, 0]]
    assert frames[1].tolist() == [[6, 7], [6, 7], [8, 9], [10, 11]]
    clipped, clipped_lengths = length_regulate(hidden, durations, max_frames=2)
    assert clipped.shape == (2, 2, 2) and clipped_lengths.tolist() == [2, 2]
    path = durations_to_path(durations, 4)
    assert path.sum(dim=1).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_attention_durations_count_argmax_steps_and_give_back_the_overshoot():
    # 3 tokens, 4 steps of 2 frames over a 7-frame utterance: steps go to tokens 0, 0, 2, 1.
    soft = np.array([[0.9, 0.6, 0.1, 0.2], [0.1, 0.3, 0.2, 0.5], [0.0, 0.1, 0.7, 0.3]])
    durations = attention_durations(soft, frames_per_step=2, num_frames=7)
    assert durations.dtype == np.int64
    assert durations.tolist() == [4, 1, 2]  # token 1 owns the last, half-padding step
    assert attention_durations(soft, frames_per_step=1, num_frames=4).tolist() == [2, 1, 1]


def test_duration_change_compares_with_the_previous_validation(tmp_path):
    folder = TrainFolder(tmp_path)
    folder.alignments.mkdir()
    np.savez(folder.alignment_path(10), **{"a/durations": np.array([2, 3, 5]), "a": np.ones((3, 4))})
    np.savez(folder.alignment_path(20), **{"a/durations": np.array([2, 4, 5])})
    now = {"a/durations": np.array([2, 4, 8])}
    assert duration_change(folder, 30, now) == 1.0  # vs step 20: |0| + |0| + |3| over 3 tokens
    assert duration_change(folder, 20, now) == 4 / 3  # vs step 10: 0 + 1 + 3
    assert duration_change(folder, 10, now) is None
    assert duration_change(TrainFolder(tmp_path / "missing"), 10, now) is None
