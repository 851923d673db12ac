from __future__ import annotations

import numpy as np
import torch

from ttsbench.models.layers import durations_to_path, length_regulate
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


def test_duration_change_compares_with_the_previous_validation(tmp_path):
    np.savez(tmp_path / "step_00000010.npz", **{"a/durations": np.array([2, 3, 5]), "a": np.ones((3, 4))})
    np.savez(tmp_path / "step_00000020.npz", **{"a/durations": np.array([2, 4, 5])})
    now = {"a/durations": np.array([2, 4, 8])}
    assert duration_change(tmp_path, 30, now) == 1.0  # vs step 20: |0| + |0| + |3| over 3 tokens
    assert duration_change(tmp_path, 20, now) == 4 / 3  # vs step 10: 0 + 1 + 3
    assert duration_change(tmp_path, 10, now) is None
    assert duration_change(tmp_path / "missing", 10, now) is None
