"""Blocks shared by several systems (Glow-TTS, FastSpeech2, the RL duration model).

Convention: convolutional blocks work channel-major, `x` [B, C, T], with a float `mask`
[B, 1, T] (1 on valid steps, 0 on padding) made by `channel_mask`. Blocks multiply by the mask
before every convolution so padding never leaks into valid steps through the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ttsbench.data import sequence_mask


def channel_mask(
    lengths: torch.Tensor, max_length: int | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Float [B, 1, T] mask from lengths, ready to multiply channel-major activations."""
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T] (each time step normalised on its own).

    eps defaults to 1e-4 as in the Glow-TTS reference, which uses it for every LayerNorm.
    """

    def __init__(self, channels: int, eps: float = 1e-4):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.transpose(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return normed.transpose(1, -1)


class ConvFeedForward(nn.Module):
    """Position-wise feed-forward of a transformer block with convolutions instead of linears.

    conv(k) -> ReLU -> dropout -> conv(k), masked: Glow-TTS uses k=3, FastSpeech2 k=9 then 1.
    """

    def __init__(
        self,
        channels: int,
        filter_channels: int,
        kernel_size: int,
        dropout: float = 0.0,
        second_kernel_size: int | None = None,
    ):
        super().__init__()
        second_kernel_size = kernel_size if second_kernel_size is None else second_kernel_size
        self.conv_in = nn.Conv1d(channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.conv_out = nn.Conv1d(filter_channels, channels, second_kernel_size, padding=second_kernel_size // 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(torch.relu(self.conv_in(x * mask)))
        return self.conv_out(hidden * mask) * mask


class VariancePredictor(nn.Module):
    """Predicts one scalar per step: log-duration (Glow-TTS, FastSpeech2), pitch or energy.

    2 x [conv(k) -> ReLU -> channel LayerNorm -> dropout] -> 1x1 projection; returns [B, T],
    zero on padding.
    """

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        padding = kernel_size // 2
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=padding)
        self.norm_1 = ChannelLayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=padding)
        self.norm_2 = ChannelLayerNorm(filter_channels)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Conv1d(filter_channels, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.norm_1(torch.relu(self.conv_1(x * mask))))
        x = self.dropout(self.norm_2(torch.relu(self.conv_2(x * mask))))
        return (self.projection(x * mask) * mask).squeeze(1)


DurationPredictor = VariancePredictor  # the name the papers use when the scalar is log-duration


def durations_to_path(durations: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Hard monotonic alignment [B, T_text, num_frames] from integer durations [B, T_text].

    Token i covers frames [cumsum_{i-1}, cumsum_i); frames past the total (or past num_frames)
    stay unassigned. Multiplying by this matrix is the length regulator.
    """
    ends = torch.cumsum(durations, dim=1)
    starts = ends - durations
    frames = torch.arange(num_frames, device=durations.device)
    path = (frames[None, None, :] >= starts[:, :, None]) & (frames[None, None, :] < ends[:, :, None])
    return path.float()


def length_regulate(
    hidden: torch.Tensor, durations: torch.Tensor, max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FastSpeech's length regulator: repeat token states [B, T_text, C] by integer durations.

    Returns frame states [B, T_frames, C] (zero past each utterance's total) and the totals,
    clipped to `max_frames` when given. Differentiable with respect to `hidden` only.
    """
    totals = durations.sum(dim=1)
    num_frames = int(totals.max()) if max_frames is None else max_frames
    path = durations_to_path(durations, max(num_frames, 1)).to(hidden.dtype)
    return path.transpose(1, 2) @ hidden, totals.clamp(max=num_frames)
