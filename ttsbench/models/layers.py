"""Blocks shared by several systems (Glow-TTS, FastSpeech2, the RL duration model), and the
alignment helpers that more than one system needs (`attention_durations`: Tacotron, DC-TTS).

Convention: convolutional blocks work channel-major, `x` [B, C, T], with a float `mask`
[B, 1, T] (1 on valid steps, 0 on padding) made by `channel_mask`. Blocks multiply by the mask
before every convolution so padding never leaks into valid steps through the kernel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttsbench.batches import sequence_mask


def channel_mask(
    lengths: torch.Tensor, max_length: int | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Float [B, 1, T] mask from lengths, ready to multiply channel-major activations."""
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


class Dropout(nn.Dropout):
    """nn.Dropout whose keep mask comes from `torch.rand` (u >= p) on CPU.

    The same Bernoulli(1 - p) keep mask and 1 / (1 - p) scale as `F.dropout`, whose CPU path
    draws it with `bernoulli_`: three times slower, and that draw was ~8 % of a full-size
    FastSpeech2 training step. Other devices keep PyTorch's own (fused) dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._draws_on_cpu(x):
            return super().forward(x)
        # the mask made in place in the uniform draw's buffer: no bool tensor and no copy to x's dtype
        return x * torch.rand_like(x).ge_(self.p).div_(1.0 - self.p)

    def masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`self(x) * mask` with one multiply of `x` (forward and backward): on CPU in training
        the 0/1 `mask` joins the keep mask in the uniform draw's buffer. The same values, the
        same random draw; it saves two passes over an FFN's widest activation."""
        if not self._draws_on_cpu(x):
            return self(x) * mask
        return x * torch.rand_like(x).ge_(self.p).mul_(mask / (1.0 - self.p))

    def _draws_on_cpu(self, x: torch.Tensor) -> bool:
        """Whether this call drops values with the uniform draw above: training on CPU, 0 < p < 1."""
        return self.training and x.device.type == "cpu" and 0.0 < self.p < 1.0


class Packing:
    """A padded channel-major batch laid end to end along time: [B, C, T] <-> [1, C, N].

    Each utterance's valid frames (its mask must be a prefix, as `channel_mask` makes) follow the
    previous utterance's after `gap` zero frames, so a convolution with padding <= gap computes
    on the packed sequence what it computes per utterance, while the batch's padding frames,
    whose outputs every block masks away, cost nothing. Worth it for the big convolution stacks
    (Glow-TTS's coupling WaveNets, FFN convolutions over mel frames); `build` returns None when
    the batch has no padding to skip.
    """

    def __init__(self, mask: torch.Tensor, gap: int):
        batch, _, frames = mask.shape
        valid = mask.reshape(batch * frames) > 0
        flat = valid.nonzero().squeeze(1)  # [V] positions b * T + t of the valid frames
        lengths = valid.view(batch, frames).sum(dim=1)
        starts = torch.cumsum(lengths + gap, dim=0) - (lengths + gap)  # item b's first packed frame
        packed = starts[flat // frames] + flat % frames
        self.batch, self.frames = batch, frames
        self.length = int(lengths.sum()) + gap * (batch - 1)
        # gather indices into a zero column appended at the end (index B*T, resp. N)
        self.pack_index = torch.full((self.length,), batch * frames, dtype=torch.long, device=mask.device)
        self.pack_index[packed] = flat
        self.unpack_index = torch.full((batch * frames,), self.length, dtype=torch.long, device=mask.device)
        self.unpack_index[flat] = packed
        self.mask = torch.zeros(1, 1, self.length, dtype=mask.dtype, device=mask.device)
        self.mask[0, 0, packed] = 1
        self.padded_mask = mask  # [B, 1, T]
        self.item_frames = lengths.to(mask.dtype)  # [B] valid frames per utterance
        self.item_of = torch.full((self.length,), batch, dtype=torch.long, device=mask.device)  # gaps: B
        self.item_of[packed] = flat // frames

    @classmethod
    def build(cls, mask: torch.Tensor, gap: int) -> "Packing | None":
        """A packing of `mask`'s batch, or None when packing would not shorten it."""
        batch, _, frames = mask.shape
        valid = int(mask.sum())
        return cls(mask, gap) if batch > 1 and valid + gap * (batch - 1) < batch * frames else None

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [1, C, N]: valid frames only, zeros in the gaps."""
        channels = x.shape[1]
        flat = F.pad(x.transpose(0, 1).reshape(channels, self.batch * self.frames), (0, 1))
        return flat.index_select(1, self.pack_index).unsqueeze(0)

    def item_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Per-utterance sums [B] of a packed [1, C, N] (gaps left out): `padded.sum(dim=(1, 2))`."""
        totals = x.new_zeros(self.batch + 1).index_add(0, self.item_of, x.sum(dim=1)[0])
        return totals[: self.batch]

    def pack_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Time-major [B, T, C] -> [N, C], as `pack`."""
        flat = F.pad(x.reshape(self.batch * self.frames, x.shape[2]), (0, 0, 0, 1))
        return flat.index_select(0, self.pack_index)

    def unpack_rows(self, y: torch.Tensor) -> torch.Tensor:
        """[N, C] -> time-major [B, T, C], zeros on padding."""
        padded = F.pad(y, (0, 0, 0, 1)).index_select(0, self.unpack_index)
        return padded.view(self.batch, self.frames, y.shape[1])

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """[1, C, N] -> [B, C, T] (contiguous), zeros on padding whatever the gaps held."""
        channels = y.shape[1]
        padded = F.pad(y[0], (0, 1)).index_select(1, self.unpack_index)
        return padded.view(channels, self.batch, self.frames).transpose(0, 1).contiguous()


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
        self.dropout = Dropout(dropout)

    @property
    def packing_gap(self) -> int:
        """The gap a `Packing` needs between utterances for these two convolutions."""
        return max(self.conv_in.padding[0], self.conv_out.padding[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """With `packing` (of `mask`, gap >= packing_gap) the convolutions skip the padding frames."""
        if packing is None:
            return self._masked(x, mask)
        return packing.unpack(self.forward_packed(packing.pack(x), packing))

    def forward_packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """On a packed [1, C, N] (whatever its gaps hold); returns zeros in the gaps."""
        return self._masked(x, packing.mask)

    def _masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The block on [B, C, T] with its 0/1 mask ([B, 1, T], or a packing's [1, 1, N])."""
        hidden = self.dropout.masked(torch.relu(self.conv_in(x * mask)), mask)
        return self.conv_out(hidden) * mask


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
        self.dropout = Dropout(dropout)
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


def attention_durations(soft: np.ndarray, frames_per_step: int, num_frames: int) -> np.ndarray:
    """Frames per token (int64 [T_text]) from one utterance's soft attention [T_text, steps].

    Each step (a column covering `frames_per_step` frames: Tacotron's r, DC-TTS's 4) goes to
    its argmax token. The last step's group runs past the utterance's `num_frames`, so its
    token gives the overshoot back and the durations sum to `num_frames`.
    """
    tokens = soft.argmax(axis=0)
    durations = np.bincount(tokens, minlength=soft.shape[0]) * frames_per_step
    durations[tokens[-1]] -= soft.shape[1] * frames_per_step - num_frames
    return durations.astype(np.int64)


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


def sinusoidal_positions(length: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer position table [length, channels]: sin on even channels, cos on odd ones."""
    positions = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequencies = torch.exp(
        torch.arange(0, channels, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / channels)
    )
    table = torch.zeros(length, channels, device=device)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: channels // 2])
    return table


class ScaledPositionalEncoding(nn.Module):
    """x + alpha * sinusoid on [B, C, T], with alpha learned (ESPnet's scaled positional encoding).

    The learned scale lets the model balance position against content instead of fixing the
    ratio by sqrt(C) scaling of the input.
    """

    def __init__(self, channels: int, dropout: float = 0.0, initial_alpha: float = 1.0):
        super().__init__()
        self.channels = channels
        self.alpha = nn.Parameter(torch.tensor(initial_alpha))
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        table = sinusoidal_positions(x.shape[2], self.channels, x.device).to(x.dtype)
        return self.dropout(x + self.alpha * table.T.unsqueeze(0)) * mask


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention over [B, C, T]; padded keys get no weight."""

    def __init__(self, channels: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.output = nn.Linear(channels, channels)
        self.dropout = dropout
        self.weight_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        time_major = x.transpose(1, 2)
        projected = [self.query(time_major), self.key(time_major), self.value(time_major)]
        return self.output(self._attend(projected, mask)).transpose(1, 2) * mask

    def forward_packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """`forward` on a packed [1, C, N]: the projections run on the valid frames only."""
        time_major = x[0].transpose(0, 1)  # [N, C]
        projected = [packing.unpack_rows(linear(time_major)) for linear in (self.query, self.key, self.value)]
        merged = packing.pack_rows(self._attend(projected, packing.padded_mask))
        return self.output(merged).transpose(0, 1).unsqueeze(0) * packing.mask

    def _attend(self, projected: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Queries, keys, values [B, T, C] -> attended [B, T, C]; keys where `mask` is 0 get no weight."""
        batch, length, channels = projected[0].shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, H, T, C/H]
            return t.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)

        key_mask = mask.bool().unsqueeze(1)  # [B, 1, 1, T]: every query sees the valid keys
        query, key, value = (split_heads(t) for t in projected)
        if self.training and self.dropout > 0 and query.device.type == "cpu":
            # what SDPA's unfused path computes, with the faster dropout draw (see `Dropout`)
            scores = (query @ key.transpose(-2, -1)) * (query.shape[-1] ** -0.5)
            weights = torch.softmax(scores.masked_fill(~key_mask, float("-inf")), dim=-1)
            attended = self.weight_dropout(weights) @ value
        else:
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
            )
        return attended.transpose(1, 2).reshape(batch, length, channels)


class FFTBlock(nn.Module):
    """FastSpeech's feed-forward Transformer block: self-attention, then a convolutional FFN.

    normalize_before=True is the pre-LN form of ESPnet (x + f(LN(x)); the stack then needs a
    final LayerNorm); False is the post-LN form of the FastSpeech papers (LN(x + f(x))).
    attention_dropout drops attention weights; on CPU any value above 0 also forces PyTorch's
    unfused attention, which over long mel sequences costs more than the rest of the block.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        filter_channels: int,
        kernel_size: int,
        dropout: float = 0.0,
        normalize_before: bool = True,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.normalize_before = normalize_before
        self.attention = MultiHeadSelfAttention(channels, num_heads, attention_dropout)
        self.attention_norm = ChannelLayerNorm(channels, eps=1e-5)
        self.feed_forward = ConvFeedForward(channels, filter_channels, kernel_size, dropout)
        self.feed_forward_norm = ChannelLayerNorm(channels, eps=1e-5)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.normalize_before:
            x = x + self.dropout(self.attention(self.attention_norm(x), mask))
            x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x), mask))
            return x * mask
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x, mask))) * mask

    def forward_packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """`forward` on a packed [1, C, N] (zero gaps in, zero gaps out): every position-wise part
        (norms, projections, FFN, dropout) skips the padding; attention sees each utterance alone.
        Pre-LN adds only branches that end masked, so its gaps stay zero without a final mask."""
        mask = packing.mask
        if self.normalize_before:
            x = x + self.dropout(self.attention.forward_packed(self.attention_norm(x), packing))
            return x + self.dropout(self.feed_forward.forward_packed(self.feed_forward_norm(x), packing))
        x = self.attention_norm(x + self.dropout(self.attention.forward_packed(x, packing)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward.forward_packed(x, packing))) * mask
