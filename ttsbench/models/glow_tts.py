"""Glow-TTS (Kim et al., 2020), after the official implementation (jaywalnut310/glow-tts).

A transformer text encoder predicts a Gaussian prior per token; an invertible flow maps the
mel spectrogram to a latent `z`; Monotonic Alignment Search (MAS) picks, every step and without
gradients, the hard monotonic alignment under which `z` is most likely given the prior; the
model then maximises the exact log-likelihood of the mel under that alignment (change of
variables), and a duration predictor learns the token durations MAS found. At inference the
predicted durations expand the prior, a sample is drawn and the flow runs backwards.

Tensors inside are channel-major, [B, C, T], with float masks [B, 1, T]; the harness's
time-major batches are transposed on the way in and out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ttsbench.align.mas import maximum_path
from ttsbench.batches import Batch
from ttsbench.models import register
from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.models.layers import (
    ChannelLayerNorm,
    ConvFeedForward,
    Dropout,
    DurationPredictor,
    Packing,
    channel_mask,
    durations_to_path,
)

LOG_2PI = math.log(2 * math.pi)


@dataclass
class GlowTTSConfig(ModelConfig):
    """Glow-TTS hyperparameters; field defaults are the reference sizes (configs/base.json)."""

    # text encoder
    hidden_channels: int = 192
    filter_channels: int = 768
    num_heads: int = 2
    encoder_layers: int = 6
    encoder_kernel_size: int = 3
    window_size: int = 4
    dropout: float = 0.1
    prenet: bool = True
    prenet_dropout: float = 0.5
    mean_only: bool = True
    # duration predictor (fed the detached encoder output)
    duration_channels: int = 256
    duration_kernel_size: int = 3
    duration_dropout: float = 0.1
    # flow decoder
    flow_blocks: int = 12
    n_sqz: int = 2
    coupling_layers: int = 4
    coupling_kernel_size: int = 5
    coupling_dilation_rate: int = 1
    coupling_hidden_channels: int = 192
    coupling_dropout: float = 0.05
    n_split: int = 4
    sigmoid_scale: bool = False
    ddi: bool = True
    # inference
    noise_scale: float = 0.667
    length_scale: float = 1.0
    max_inference_frames: int = 2000

    def __post_init__(self) -> None:
        if self.hidden_channels % self.num_heads:
            raise ValueError(f"hidden_channels {self.hidden_channels} is not divisible by num_heads {self.num_heads}")
        squeezed = self.audio.n_mels * self.n_sqz
        if self.n_split % 2 or squeezed % self.n_split:
            raise ValueError(f"n_split {self.n_split} must be even and divide n_mels * n_sqz = {squeezed}")
        if self.coupling_kernel_size % 2 == 0:
            raise ValueError(f"coupling_kernel_size must be odd, got {self.coupling_kernel_size}")
        if self.max_inference_frames < self.n_sqz:
            raise ValueError(f"max_inference_frames {self.max_inference_frames} is below n_sqz {self.n_sqz}")

    @classmethod
    def full(cls) -> "GlowTTSConfig":
        """The paper's LJSpeech model (~28.6M parameters with the reference's 148 symbols)."""
        return cls(
            batch_size=32,
            optimizer="adam",
            learning_rate=(192 * 4000) ** -0.5,  # the reference's lr 1.0 x Noam(d=192, warmup 4000) at its peak
            lr_schedule="noam",
            warmup_steps=4000,
            betas=(0.9, 0.98),
            eps=1e-9,
            grad_clip_norm=None,
            grad_clip_value=5.0,
        )

    @classmethod
    def tiny(cls) -> "GlowTTSConfig":
        """Same code path at CPU scale: 2 encoder layers, 4 flow blocks, 2-layer WaveNets."""
        return cls(
            hidden_channels=64,
            filter_channels=256,
            encoder_layers=2,
            prenet=False,
            duration_channels=64,
            flow_blocks=4,
            coupling_layers=2,
            coupling_kernel_size=3,
            coupling_hidden_channels=64,
            batch_size=8,
            optimizer="adam",
            learning_rate=1e-3,
            lr_schedule="noam",
            warmup_steps=200,
            betas=(0.9, 0.98),
            eps=1e-9,
            grad_clip_norm=None,
            grad_clip_value=5.0,
        )


# --------------------------------------------------------------------------------------------
# Text encoder


class RelativeMultiHeadAttention(nn.Module):
    """Self-attention with relative-position keys and values (Shaw et al., 2018).

    One table of 2*window+1 key and value embeddings is shared by all heads; pairs further
    apart than `window` get no relative term, as in the reference.
    """

    def __init__(self, channels: int, num_heads: int, window_size: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = channels // num_heads
        self.window_size = window_size
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        self.value = nn.Conv1d(channels, channels, 1)
        self.output = nn.Conv1d(channels, channels, 1)
        for projection in (self.query, self.key, self.value):
            nn.init.xavier_uniform_(projection.weight)
        relative_std = self.head_channels**-0.5
        self.relative_keys = nn.Parameter(torch.randn(2 * window_size + 1, self.head_channels) * relative_std)
        self.relative_values = nn.Parameter(torch.randn(2 * window_size + 1, self.head_channels) * relative_std)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, H, T, C/H]
            return t.view(batch, self.num_heads, self.head_channels, length).transpose(2, 3)

        query = split_heads(self.query(x)) / math.sqrt(self.head_channels)
        key, value = split_heads(self.key(x)), split_heads(self.value(x))

        # offset[i, j] = j - i + window indexes the relative tables; `near` marks |j - i| <= window
        positions = torch.arange(length, device=x.device)
        offset = positions[None, :] - positions[:, None] + self.window_size
        near = ((offset >= 0) & (offset <= 2 * self.window_size)).to(x.dtype)
        offset = offset.clamp(0, 2 * self.window_size)

        scores = query @ key.transpose(-2, -1)
        relative_scores = query @ self.relative_keys.T  # [B, H, T, 2w+1]
        scores = scores + torch.gather(relative_scores, -1, offset.expand(batch, self.num_heads, -1, -1)) * near
        pair_mask = mask.unsqueeze(-1) * mask.unsqueeze(-2)  # [B, 1, T, T]
        weights = self.dropout(torch.softmax(scores.masked_fill(pair_mask == 0, -1e4), dim=-1))

        # the band of weights around the diagonal, re-indexed by relative offset: [B, H, T, 2w+1]
        band_offsets = torch.arange(-self.window_size, self.window_size + 1, device=x.device)
        band_columns = positions[:, None] + band_offsets[None, :]
        band_valid = ((band_columns >= 0) & (band_columns < length)).to(x.dtype)
        band_columns = band_columns.clamp(0, length - 1).expand(batch, self.num_heads, -1, -1)
        band = torch.gather(weights, -1, band_columns) * band_valid

        attended = weights @ value + band @ self.relative_values
        return self.output(attended.transpose(2, 3).reshape(batch, channels, length))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attention(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: GlowTTSConfig):
        super().__init__()
        channels = config.hidden_channels
        self.attention = RelativeMultiHeadAttention(channels, config.num_heads, config.window_size, config.dropout)
        self.attention_norm = ChannelLayerNorm(channels)
        self.feed_forward = ConvFeedForward(
            channels, config.filter_channels, config.encoder_kernel_size, config.dropout
        )
        self.feed_forward_norm = ChannelLayerNorm(channels)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        x = x * mask
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x, mask, packing)))


class ResidualConvPrenet(nn.Module):
    """3 x [conv5 -> LayerNorm -> ReLU -> dropout] added back through a zero-initialised 1x1
    projection, so the prenet starts as the identity and learns how much to contribute."""

    def __init__(self, channels: int, dropout: float, kernel_size: int = 5, num_layers: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2) for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(num_layers))
        self.dropout = Dropout(dropout)
        self.projection = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = x
        for conv, norm in zip(self.convs, self.norms):
            hidden = self.dropout(torch.relu(norm(conv(hidden * mask))))
        return (x + self.projection(hidden)) * mask


class TextEncoder(nn.Module):
    """Token ids -> prior mean and log-std per token, and predicted log-durations."""

    def __init__(self, num_symbols: int, out_channels: int, config: GlowTTSConfig):
        super().__init__()
        hidden = config.hidden_channels
        self.hidden_channels = hidden
        self.embedding = nn.Embedding(num_symbols, hidden)
        nn.init.normal_(self.embedding.weight, 0.0, hidden**-0.5)
        self.prenet = ResidualConvPrenet(hidden, config.prenet_dropout) if config.prenet else None
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.project_mean = nn.Conv1d(hidden, out_channels, 1)
        self.project_log_std = None if config.mean_only else nn.Conv1d(hidden, out_channels, 1)
        self.duration_predictor = DurationPredictor(
            hidden, config.duration_channels, config.duration_kernel_size, config.duration_dropout
        )

    def forward(
        self, text_ids: torch.Tensor, text_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean [B, C, L], log_std [B, C, L], log_durations [B, L], mask [B, 1, L])."""
        x = (self.embedding(text_ids) * math.sqrt(self.hidden_channels)).transpose(1, 2)
        mask = channel_mask(text_lengths, text_ids.shape[1], x.dtype)
        if self.prenet is not None:
            x = self.prenet(x, mask)
        packing = Packing.build(mask, self.layers[0].feed_forward.packing_gap) if len(self.layers) else None
        for layer in self.layers:
            x = layer(x, mask, packing)
        x = x * mask
        mean = self.project_mean(x) * mask
        log_std = torch.zeros_like(mean) if self.project_log_std is None else self.project_log_std(x) * mask
        # detached: the duration loss must not shape the text representation the prior uses
        log_durations = self.duration_predictor(x.detach(), mask)
        return mean, log_std, log_durations, mask


# --------------------------------------------------------------------------------------------
# Flow decoder. Every flow maps (x, mask) -> (z, logdet [B]); reverse=True applies the inverse
# and returns the log-determinant of the inverse (the negative of the forward one). With a
# `packing`, x and mask are packed ([1, C, N] and packing.mask: the batch's valid frames end to
# end) and the log-determinants are still per utterance.


def _frames(mask: torch.Tensor, packing: Packing | None) -> torch.Tensor:
    """Valid frames per utterance [B]."""
    return mask.sum(dim=(1, 2)) if packing is None else packing.item_frames


def _item_sums(x: torch.Tensor, packing: Packing | None) -> torch.Tensor:
    """Per-utterance sums [B] of a masked [B, C, T] (or packed [1, C, N])."""
    return x.sum(dim=(1, 2)) if packing is None else packing.item_sums(x)


class ActNorm(nn.Module):
    """Per-channel affine z = bias + exp(log_scale) * x; `initialize` sets it from data (DDI)."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False, packing: Packing | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = self.log_scale.sum() * _frames(mask, packing)
        if reverse:
            return (x - self.bias) * torch.exp(-self.log_scale) * mask, -logdet
        return (self.bias + torch.exp(self.log_scale) * x) * mask, logdet

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Make this batch's output zero-mean, unit-variance per channel over valid frames."""
        count = mask.sum(dim=(0, 2))
        mean = (x * mask).sum(dim=(0, 2)) / count
        variance = (x * x * mask).sum(dim=(0, 2)) / count - mean**2
        log_std = 0.5 * torch.log(variance.clamp_min(1e-6))
        self.log_scale.copy_(-log_std.view_as(self.log_scale))
        self.bias.copy_((-mean * torch.exp(-log_std)).view_as(self.bias))


class InvConvNear(nn.Module):
    """Invertible 1x1 convolution applied to groups of `n_split` channels (one shared matrix).

    Each group takes n_split/2 channels from each half of the coupling split, so the mixing
    crosses the split. log|det| = log|det W| * (C / n_split) per valid frame.
    """

    def __init__(self, channels: int, n_split: int):
        super().__init__()
        self.channels = channels
        self.n_split = n_split
        orthogonal, _ = torch.linalg.qr(torch.randn(n_split, n_split))
        if torch.det(orthogonal) < 0:
            orthogonal[:, 0] = -orthogonal[:, 0]
        self.weight = nn.Parameter(orthogonal)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False, packing: Packing | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, length = x.shape
        per_group, half_split = channels // self.n_split, self.n_split // 2
        groups = x.reshape(batch, 2, per_group, half_split, length).transpose(2, 3)
        groups = groups.reshape(batch, self.n_split, per_group, length)
        weight = torch.linalg.inv(self.weight) if reverse else self.weight
        mixed = torch.einsum("ij,bjct->bict", weight, groups)
        z = mixed.reshape(batch, 2, half_split, per_group, length).transpose(2, 3).reshape(batch, channels, length)
        logdet = torch.linalg.slogdet(self.weight).logabsdet * per_group * _frames(mask, packing)
        return z * mask, -logdet if reverse else logdet


class WaveNet(nn.Module):
    """Non-causal WaveNet: gated (tanh x sigmoid) dilated convolutions with residual and skip
    paths, weight-normalised; returns the sum of the skip outputs."""

    def __init__(self, channels: int, kernel_size: int, dilation_rate: int, num_layers: int, dropout: float):
        super().__init__()
        self.channels = channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(num_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            gate_conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation, padding=padding)
            self.in_layers.append(weight_norm(gate_conv))
            last = i == num_layers - 1  # the last layer only feeds the skip path
            self.res_skip_layers.append(weight_norm(nn.Conv1d(channels, channels if last else 2 * channels, 1)))
        self.dropout = Dropout(dropout)
        self.packing_gap = max(layer.padding[0] for layer in self.in_layers)  # the widest dilated kernel's reach

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # halves taken with `chunk`, whose backward concatenates the two gradients; a slice's
        # backward writes its half into a zero-filled full-size buffer, one per half
        skip = torch.zeros_like(x)
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            tanh_input, sigmoid_input = self.dropout(in_layer(x)).chunk(2, dim=1)
            out = res_skip_layer(torch.tanh(tanh_input) * torch.sigmoid(sigmoid_input))
            if i < len(self.in_layers) - 1:
                residual, skip_out = out.chunk(2, dim=1)
                x = (x + residual) * mask
                skip = skip + skip_out
            else:
                skip = skip + out
        return skip * mask


class AffineCoupling(nn.Module):
    """z = [x_a, m(x_a) + exp(log s(x_a)) * x_b]: invertible whatever the network computing
    (m, log s) from x_a. The end conv starts at zero, so a fresh coupling is the identity."""

    def __init__(self, channels: int, config: GlowTTSConfig):
        super().__init__()
        hidden = config.coupling_hidden_channels
        self.sigmoid_scale = config.sigmoid_scale
        self.start = weight_norm(nn.Conv1d(channels // 2, hidden, 1))
        self.wavenet = WaveNet(
            hidden,
            config.coupling_kernel_size,
            config.coupling_dilation_rate,
            config.coupling_layers,
            config.coupling_dropout,
        )
        self.end = nn.Conv1d(hidden, channels, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False, packing: Packing | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed (gap >= the WaveNet's packing_gap), the network computing (m, log s) runs on
        the valid frames only; every layer masks its input, so utterances never mix."""
        x_a, x_b = x.chunk(2, dim=1)
        shift, log_scale = self.end(self.wavenet(self.start(x_a) * mask, mask)).chunk(2, dim=1)
        if self.sigmoid_scale:
            log_scale = torch.log(1e-6 + torch.sigmoid(log_scale + 2))
        logdet = _item_sums(log_scale * mask, packing)
        if reverse:
            z_b = (x_b - shift) * torch.exp(-log_scale) * mask
            return torch.cat([x_a, z_b], dim=1), -logdet
        z_b = (shift + torch.exp(log_scale) * x_b) * mask
        return torch.cat([x_a, z_b], dim=1), logdet


def squeeze(x: torch.Tensor, mask: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, T] -> [B, C*factor, T/factor]: `factor` consecutive frames become channels.

    A squeezed frame is valid only if all its source frames are (lengths floor to a multiple).
    """
    batch, channels, length = x.shape
    squeezed = x.reshape(batch, channels, length // factor, factor).permute(0, 3, 1, 2)
    squeezed = squeezed.reshape(batch, channels * factor, length // factor)
    squeezed_mask = mask[:, :, factor - 1 :: factor]
    return squeezed * squeezed_mask, squeezed_mask


def unsqueeze(x: torch.Tensor, mask: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `squeeze`."""
    batch, channels, length = x.shape
    restored = x.reshape(batch, factor, channels // factor, length).permute(0, 2, 3, 1)
    restored = restored.reshape(batch, channels // factor, length * factor)
    restored_mask = mask.repeat_interleave(factor, dim=2)
    return restored * restored_mask, restored_mask


class FlowDecoder(nn.Module):
    """Squeeze, then blocks of ActNorm -> InvConvNear -> AffineCoupling, then unsqueeze.

    forward(mel [B, n_mels, T], mask [B, 1, T]) -> (z, logdet [B]); reverse=True maps z back
    to mel and returns the inverse map's log-determinant. T must be a multiple of n_sqz.
    """

    def __init__(self, channels: int, config: GlowTTSConfig):
        super().__init__()
        self.n_sqz = config.n_sqz
        squeezed = channels * config.n_sqz
        self.flows = nn.ModuleList()
        for _ in range(config.flow_blocks):
            self.flows.append(ActNorm(squeezed))
            self.flows.append(InvConvNear(squeezed, config.n_split))
            self.flows.append(AffineCoupling(squeezed, config))
        couplings = [flow for flow in self.flows if isinstance(flow, AffineCoupling)]
        self.packing_gap = max((c.wavenet.packing_gap for c in couplings), default=0)
        # persisted so a run resumed from a checkpoint does not redo data-dependent init
        self.register_buffer("ddi_done", torch.tensor(False))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[2] % self.n_sqz:
            raise ValueError(f"flow input has {x.shape[2]} frames, not a multiple of n_sqz={self.n_sqz}")
        x, squeezed_mask = squeeze(x, mask, self.n_sqz)
        logdet_total = x.new_zeros(x.shape[0])
        # the flows on the valid frames only (see `Packing`); z is unpacked with zeros on padding
        packing = Packing.build(squeezed_mask, self.packing_gap)
        if packing is not None:
            x, squeezed_mask = packing.pack(x), packing.mask
        for flow in reversed(self.flows) if reverse else self.flows:
            x, logdet = flow(x, squeezed_mask, reverse=reverse, packing=packing)
            logdet_total = logdet_total + logdet
        if packing is not None:
            x, squeezed_mask = packing.unpack(x), packing.padded_mask
        x, _ = unsqueeze(x, squeezed_mask, self.n_sqz)
        return x, logdet_total

    @torch.no_grad()
    def data_dependent_init(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Initialise every ActNorm, in order, from the activations this batch gives it."""
        x, squeezed_mask = squeeze(x, mask, self.n_sqz)
        for flow in self.flows:
            if isinstance(flow, ActNorm):
                flow.initialize(x, squeezed_mask)
            x, _ = flow(x, squeezed_mask)
        self.ddi_done.fill_(True)


# --------------------------------------------------------------------------------------------
# The system


@dataclass
class _AlignedForward:
    """Everything one teacher-forced pass produces (channel-major)."""

    z: torch.Tensor  # [B, n_mels, T]
    logdet: torch.Tensor  # [B]
    frame_mask: torch.Tensor  # [B, 1, T]
    mean: torch.Tensor  # [B, n_mels, L]
    log_std: torch.Tensor  # [B, n_mels, L]
    log_durations: torch.Tensor  # [B, L]
    text_mask: torch.Tensor  # [B, 1, L]
    path: torch.Tensor  # [B, L, T], hard 0/1 alignment from MAS


@register("glow-tts")
class GlowTTS(TTSModel):
    """Glow-TTS: flow decoder trained by maximum likelihood with Monotonic Alignment Search.

    `decoder(mel, mask, reverse=False) -> (z, logdet)` is the flow on its own (channel-major),
    for tests and analysis. Frames are padded to a multiple of n_sqz and true lengths are
    floored to one, as in the reference.
    """

    Config = GlowTTSConfig
    feature_kinds = ("mel",)
    config: GlowTTSConfig

    def __init__(self, config: GlowTTSConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        self.n_mels = config.audio.n_mels
        self.encoder = TextEncoder(num_symbols, self.n_mels, config)
        self.decoder = FlowDecoder(self.n_mels, config)

    def frame_multiple(self) -> int:
        return self.config.n_sqz

    # ---- training ---------------------------------------------------------------------------
    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """Data-dependent ActNorm init on the first batch (skipped once done, e.g. on resume)."""
        if not self.config.ddi or not batches or bool(self.decoder.ddi_done):
            return
        mel, frame_mask = self._flow_inputs(batches[0])
        self.decoder.data_dependent_init(mel, frame_mask)

    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        aligned = self._aligned_forward(batch)
        mle_loss = self._mle_loss(aligned)
        duration_loss = self._duration_loss(aligned)
        return {"loss": mle_loss + duration_loss, "mle_loss": mle_loss, "duration_loss": duration_loss}

    def _flow_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel [B, n_mels, T] trimmed to a multiple of n_sqz, and its mask with lengths floored."""
        n_sqz = self.config.n_sqz
        mel = batch.mel
        usable = mel.shape[1] // n_sqz * n_sqz
        lengths = batch.frame_lengths // n_sqz * n_sqz
        frame_mask = channel_mask(lengths, usable, mel.dtype)
        return mel[:, :usable].transpose(1, 2) * frame_mask, frame_mask

    def _aligned_forward(self, batch: Batch) -> _AlignedForward:
        mean, log_std, log_durations, text_mask = self.encoder(batch.text_ids, batch.text_lengths)
        mel, frame_mask = self._flow_inputs(batch)
        z, logdet = self.decoder(mel, frame_mask)
        path = self._most_likely_path(z, mean, log_std, text_mask, frame_mask)
        return _AlignedForward(z, logdet, frame_mask, mean, log_std, log_durations, text_mask, path)

    @staticmethod
    @torch.no_grad()
    def _most_likely_path(
        z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, text_mask: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """MAS over log N(z_j; mean_i, std_i) for every (token i, frame j): [B, L, T].

        The Gaussian log-density is expanded so that every term is a matrix product over
        channels instead of a [B, C, L, T] tensor.
        """
        inverse_variance = torch.exp(-2 * log_std)  # [B, C, L]
        normaliser = torch.sum(-0.5 * LOG_2PI - log_std, dim=1).unsqueeze(-1)  # [B, L, 1]
        quadratic = inverse_variance.transpose(1, 2) @ (-0.5 * z**2)  # [B, L, T]
        cross = (mean * inverse_variance).transpose(1, 2) @ z  # [B, L, T]
        mean_term = torch.sum(-0.5 * mean**2 * inverse_variance, dim=1).unsqueeze(-1)  # [B, L, 1]
        log_likelihood = normaliser + quadratic + cross + mean_term
        pair_mask = text_mask.transpose(1, 2) * frame_mask  # [B, L, T]
        return maximum_path(log_likelihood, pair_mask).to(z.dtype)

    def _mle_loss(self, aligned: _AlignedForward) -> torch.Tensor:
        """Negative log-likelihood per mel value (nats), change of variables included."""
        to_frames = aligned.path.transpose(1, 2)  # [B, T, L]
        prior_mean = (to_frames @ aligned.mean.transpose(1, 2)).transpose(1, 2)
        prior_log_std = (to_frames @ aligned.log_std.transpose(1, 2)).transpose(1, 2)
        mask = aligned.frame_mask
        squared_error = torch.exp(-2 * prior_log_std) * (aligned.z - prior_mean) ** 2
        negative_log_likelihood = (
            torch.sum(prior_log_std * mask) + 0.5 * torch.sum(squared_error * mask) - torch.sum(aligned.logdet)
        )
        return negative_log_likelihood / (mask.sum() * self.n_mels) + 0.5 * LOG_2PI

    @staticmethod
    def _duration_loss(aligned: _AlignedForward) -> torch.Tensor:
        """Squared error of predicted log-durations against MAS's, per token."""
        text_mask = aligned.text_mask.squeeze(1)
        target = torch.log(1e-8 + aligned.path.sum(dim=-1)) * text_mask
        return torch.sum((aligned.log_durations - target) ** 2) / text_mask.sum()

    # ---- inference --------------------------------------------------------------------------
    def infer(
        self, text_ids: torch.Tensor, noise_scale: float | None = None, length_scale: float | None = None
    ) -> Synthesis:
        """Sample a mel: ceil(predicted durations * length_scale) frames per token, z drawn from
        the expanded prior with its std scaled by noise_scale, then the flow in reverse."""
        noise_scale = self.config.noise_scale if noise_scale is None else noise_scale
        length_scale = self.config.length_scale if length_scale is None else length_scale
        n_sqz = self.config.n_sqz
        with self.evaluating():
            ids = text_ids.to(self.device, torch.long).reshape(1, -1)
            lengths = torch.tensor([ids.shape[1]], device=self.device)
            mean, log_std, log_durations, text_mask = self.encoder(ids, lengths)
            durations = torch.ceil(torch.exp(log_durations) * text_mask[:, 0] * length_scale).long()
            total = int(durations.sum())
            if total < n_sqz:  # the flow needs at least one squeezed frame
                durations[0, -1] += n_sqz - total
                total = n_sqz
            frame_limit = self.config.max_inference_frames // n_sqz * n_sqz
            hit_max_frames = total // n_sqz * n_sqz > frame_limit
            num_frames = min(total // n_sqz * n_sqz, frame_limit)

            path = durations_to_path(durations, num_frames).to(mean.dtype)  # [1, L, T]
            prior_mean = (path.transpose(1, 2) @ mean.transpose(1, 2)).transpose(1, 2)
            prior_log_std = (path.transpose(1, 2) @ log_std.transpose(1, 2)).transpose(1, 2)
            z = prior_mean + torch.exp(prior_log_std) * torch.randn_like(prior_mean) * noise_scale
            mel, _ = self.decoder(z, torch.ones_like(z[:, :1]), reverse=True)
        return Synthesis(
            mel=mel[0].T.contiguous().float().cpu().numpy(),
            audio_config=self.config.audio,
            durations=path[0].sum(dim=1).long().cpu().numpy(),  # what was rendered, after trimming
            alignment=None,
            stopped=not hit_max_frames,
            info={"noise_scale": noise_scale, "length_scale": length_scale, "hit_max_frames": hit_max_frames},
        )

    def alignment(self, batch: Batch) -> list[Alignment]:
        """MAS durations per token (they sum to the frame count floored to a multiple of n_sqz)."""
        with self.evaluating():
            durations = self._aligned_forward(batch).path.sum(dim=-1).round().long().cpu().numpy()
        return [
            Alignment(utt_id, soft=None, durations=durations[b, : int(batch.text_lengths[b])].astype(np.int64))
            for b, utt_id in enumerate(batch.ids)
        ]
