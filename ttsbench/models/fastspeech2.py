"""FastSpeech2 trained with SNIPER: SNIP pruning at init, sparsity decaying to zero.

The network is FastSpeech2 in the shape SNIPER's authors trained it (ESPnet: pre-LN FFT blocks,
scaled positional encodings, token-averaged pitch and energy with 1x1 convolutional embeddings,
a Tacotron2 postnet). Durations come without a teacher model: a jointly trained aligner (Badlani
et al., 2021, arXiv 2108.10447; Coqui's ForwardTTS `use_aligner`) scores every (token, frame)
pair by an L2 distance plus a beta-binomial prior, learns from a CTC forward-sum loss, and its
attention is binarised every step by Monotonic Alignment Search; the MAS durations (summing to
each mel's length exactly) drive the length regulator and are the duration predictor's target.
`duration_source="file"` reads fixed durations from `DIR/ID.npy` instead.

SNIPER (iamanigeeit/sniper): SNIP scores at initialisation, a step schedule of sparsity that
falls to zero, masks that all come from the initial scores, and weights that come back restarted
from their initial values (`ttsbench.sparsity`). `sparsity_variant` picks the comparison: dense,
constant sparsity, or the decaying SNIPER schedule.

Pitch and energy are token averages, as in ESPnet (and FastPitch), rather than ming024's
quantised frame-level bins: the predictors then run once per token, like the duration
predictor, instead of once per frame, averaging over a token smooths DIO's octave errors, and
it is the form the SNIPER paper trained. Pitch is log-F0 averaged over a token's voiced frames
and standardised with training-set statistics; a token with no voiced frame gets 0 (the mean
pitch), so unvoiced stretches have one consistent, neutral target instead of interpolated
contours. Energy is the log of the STFT frame's L2 norm, standardised: the log makes it relative
(dB-like), as the log-mel the decoder predicts, where raw norms span orders of magnitude.

Tensors inside are channel-major, [B, C, T], with float masks [B, 1, T].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttsbench.align.mas import maximum_path
from ttsbench import prosody
from ttsbench.batches import Batch
from ttsbench.models import register
from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.models.layers import (
    ChannelLayerNorm,
    Dropout,
    DurationPredictor,
    FFTBlock,
    Packing,
    ScaledPositionalEncoding,
    VariancePredictor,
    channel_mask,
    durations_to_path,
    length_regulate,
)
from ttsbench.schedule import PiecewiseConstant
from ttsbench.sparsity import SparsityController, prunable_parameters, zero_fraction

ENERGY_FLOOR = 1e-5
MASKED_SCORE = -1e4  # finite, so CTC and log-softmax stay free of NaN gradients


# --------------------------------------------------------------------------------------------
# Config


@dataclass
class FastSpeech2Config(ModelConfig):
    """FastSpeech2 + SNIPER hyperparameters; defaults are SNIPER's ESPnet LJSpeech recipe."""

    # encoder and decoder (FFT blocks)
    hidden_channels: int = 384
    num_heads: int = 2
    encoder_layers: int = 4
    decoder_layers: int = 4
    ffn_channels: int = 1536
    ffn_kernel_size: int = 3
    transformer_dropout: float = 0.2
    attention_dropout: float = 0.2
    normalize_before: bool = True
    # variance adaptor
    duration_predictor_channels: int = 256
    duration_predictor_kernel_size: int = 3
    duration_predictor_dropout: float = 0.1
    pitch_predictor_layers: int = 5
    pitch_predictor_channels: int = 256
    pitch_predictor_kernel_size: int = 5
    pitch_predictor_dropout: float = 0.5
    pitch_embedding_kernel_size: int = 1
    stop_gradient_from_pitch_predictor: bool = True
    energy_predictor_channels: int = 256
    energy_predictor_kernel_size: int = 3
    energy_predictor_dropout: float = 0.5
    energy_embedding_kernel_size: int = 1
    # postnet (0 layers: none)
    postnet_layers: int = 5
    postnet_channels: int = 256
    postnet_kernel_size: int = 5
    postnet_dropout: float = 0.5
    # durations: the jointly trained aligner, or integer durations from DIR/ID.npy
    duration_source: Literal["aligner", "file"] = "aligner"
    durations_dir: str = ""
    aligner_channels: int = 80
    aligner_temperature: float = 0.0005
    aligner_prior_scaling: float = 1.0
    forward_sum_weight: float = 1.0
    binary_loss_weight: float = 0.1
    binary_loss_warmup_steps: int = 120_000  # Coqui: 150 epochs; here 150 x 800 iterations
    # sparsity
    sparsity_variant: Literal["dense", "constant", "sniper"] = "sniper"
    constant_sparsity: float = 0.2
    # SNIPER's {epoch 0: 20 %, 5: 10 %, 10: 0 %} at its 800 iterations per epoch, one step each
    sniper_schedule: tuple[tuple[int, float], ...] = ((0, 0.2), (4000, 0.1), (8000, 0.0))
    snip_batches: int = 800  # the reference scores over the whole first epoch
    max_param_sparsity: float = 0.75
    # inference
    max_inference_frames: int = 2000

    def __post_init__(self) -> None:
        if self.hidden_channels % self.num_heads:
            raise ValueError(f"hidden_channels {self.hidden_channels} is not divisible by num_heads {self.num_heads}")
        if self.duration_source not in ("aligner", "file"):
            raise ValueError(f"duration_source must be 'aligner' or 'file', got {self.duration_source!r}")
        if self.sparsity_variant not in ("dense", "constant", "sniper"):
            raise ValueError(f"sparsity_variant must be dense, constant or sniper, got {self.sparsity_variant!r}")
        if self.pitch_predictor_layers < 1:
            raise ValueError("pitch_predictor_layers must be at least 1")
        PiecewiseConstant(tuple((int(s), float(v)) for s, v in self.sniper_schedule))  # validates the steps
        for value in [self.constant_sparsity, *(v for _, v in self.sniper_schedule)]:
            if not 0.0 <= value < min(1.0, self.max_param_sparsity + 1e-9):
                raise ValueError(
                    f"sparsity {value} is outside [0, max_param_sparsity={self.max_param_sparsity}]"
                )

    @classmethod
    def full(cls) -> "FastSpeech2Config":
        """SNIPER's ESPnet LJSpeech model: adim 384, 4+4 layers, Noam(384, 4000), batch 32."""
        return cls(
            batch_size=32,
            optimizer="adam",
            learning_rate=(384 * 4000) ** -0.5,  # ESPnet's lr 1.0 x Noam(d=384, warmup 4000) at its peak
            lr_schedule="noam",
            warmup_steps=4000,
            grad_clip_norm=1.0,
        )

    @classmethod
    def tiny(cls) -> "FastSpeech2Config":
        """Same code path at CPU scale: hidden 64, 1+1 FFT layers, no postnet, sparsity 0 by step 300."""
        return cls(
            hidden_channels=64,
            encoder_layers=1,
            decoder_layers=1,
            ffn_channels=128,
            transformer_dropout=0.1,
            attention_dropout=0.0,
            duration_predictor_channels=64,
            pitch_predictor_layers=2,
            pitch_predictor_channels=64,
            pitch_predictor_kernel_size=3,
            pitch_predictor_dropout=0.1,
            energy_predictor_channels=64,
            energy_predictor_dropout=0.1,
            postnet_layers=0,
            aligner_channels=64,
            binary_loss_warmup_steps=300,
            constant_sparsity=0.4,
            sniper_schedule=((0, 0.4), (100, 0.2), (200, 0.1), (300, 0.0)),
            snip_batches=8,
            batch_size=8,
            optimizer="adam",
            learning_rate=1e-3,
            lr_schedule="constant",
            grad_clip_norm=1.0,
        )


# --------------------------------------------------------------------------------------------
# Blocks


class FFTStack(nn.Module):
    """Scaled positional encoding, FFT blocks and (pre-LN) a final LayerNorm: encoder or decoder."""

    def __init__(self, config: FastSpeech2Config, num_layers: int):
        super().__init__()
        channels = config.hidden_channels
        self.position_embedding = ScaledPositionalEncoding(channels, config.transformer_dropout)
        self.blocks = nn.ModuleList(
            FFTBlock(
                channels,
                config.num_heads,
                config.ffn_channels,
                config.ffn_kernel_size,
                config.transformer_dropout,
                config.normalize_before,
                config.attention_dropout,
            )
            for _ in range(num_layers)
        )
        self.final_norm = ChannelLayerNorm(channels, eps=1e-5) if config.normalize_before else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.position_embedding(x, mask)
        packing = Packing.build(mask, self.blocks[0].feed_forward.packing_gap) if len(self.blocks) else None
        if packing is not None:  # the same blocks over the valid frames only (see `Packing`)
            return packing.unpack(self._packed(packing.pack(x), packing))
        for block in self.blocks:
            x = block(x, mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x * mask

    def _packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        for block in self.blocks:
            x = block.forward_packed(x, packing)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x * packing.mask


class DeepVariancePredictor(nn.Module):
    """n x [conv(k) -> ReLU -> LayerNorm -> dropout] -> 1x1 projection; [B, C, L] -> [B, L].

    `layers.VariancePredictor` is the two-layer case; ESPnet's pitch predictor has five.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(in_channels if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2)
            for i in range(num_layers)
        )
        self.norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(num_layers))
        self.dropout = Dropout(dropout)
        self.projection = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = self.dropout(norm(torch.relu(conv(x * mask))))
        return (self.projection(x * mask) * mask).squeeze(1)


class Postnet(nn.Module):
    """Tacotron2's residual postnet: n x [conv(k) -> BatchNorm -> tanh (not the last) -> dropout]."""

    def __init__(self, n_mels: int, channels: int, kernel_size: int, num_layers: int, dropout: float):
        super().__init__()
        widths = [n_mels] + [channels] * (num_layers - 1) + [n_mels]
        self.convs = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], kernel_size, padding=kernel_size // 2) for i in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(widths[i + 1]) for i in range(num_layers))
        self.dropout = Dropout(dropout)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = mel
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x * mask))
            x = self.dropout(x if i == len(self.convs) - 1 else torch.tanh(x))
        return x * mask


class Aligner(nn.Module):
    """Badlani et al.'s alignment network (Coqui `AlignmentNetwork`).

    Text embeddings (keys) and mel frames (queries) are encoded by small convolution stacks
    into one space; a frame's score for a token is -temperature * squared distance, normalised
    over the tokens, plus a log-prior. Returns those log-scores [B, L, T] (what the forward-sum
    loss takes); the soft attention is their softmax over tokens.
    """

    def __init__(self, text_channels: int, n_mels: int, attention_channels: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.key_encoder = nn.Sequential(
            nn.Conv1d(text_channels, 2 * text_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(2 * text_channels, attention_channels, 1),
        )
        self.query_encoder = nn.Sequential(
            nn.Conv1d(n_mels, 2 * n_mels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(2 * n_mels, n_mels, 1),
            nn.ReLU(),
            nn.Conv1d(n_mels, attention_channels, 1),
        )

    def forward(
        self, text_embedded: torch.Tensor, mel: torch.Tensor, text_mask: torch.Tensor, log_prior: torch.Tensor
    ) -> torch.Tensor:
        keys = self.key_encoder(text_embedded * text_mask)  # [B, A, L]
        queries = self.query_encoder(mel)  # [B, A, T]
        # |k - q|^2 expanded, so no [B, A, L, T] tensor is ever built
        distance = (
            keys.pow(2).sum(1).unsqueeze(2) + queries.pow(2).sum(1).unsqueeze(1) - 2 * keys.transpose(1, 2) @ queries
        )
        scores = (-self.temperature * distance).masked_fill(text_mask.transpose(1, 2) == 0, MASKED_SCORE)
        return torch.log_softmax(scores, dim=1) + log_prior


def beta_binomial_log_prior(
    text_lengths: torch.Tensor, frame_lengths: torch.Tensor, max_text: int, max_frames: int, scaling: float = 1.0
) -> torch.Tensor:
    """log P(token k | frame i) under BetaBinomial(n=L, a=s*i, b=s*(T+1-i)), floored at 1e-8.

    The alignment prior of Badlani et al. (Coqui's `beta_binomial_prior_distribution`): frame i
    of T is most likely near token i*L/T, so a fresh aligner starts near the diagonal. [B, L, T],
    0 outside each utterance (those cells are masked elsewhere).
    """
    device = text_lengths.device
    k = torch.arange(max_text, device=device, dtype=torch.float32).view(1, -1, 1)
    i = torch.arange(1, max_frames + 1, device=device, dtype=torch.float32).view(1, 1, -1)
    n = text_lengths.to(torch.float32).view(-1, 1, 1)
    m = frame_lengths.to(torch.float32).view(-1, 1, 1)
    valid = (k < n) & (i <= m)
    a = scaling * i
    b = (scaling * (m + 1 - i)).clamp_min(1e-3)  # positive outside the utterance too
    rest = (n - k).clamp_min(0.0)
    log_choose = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(rest + 1)
    log_beta_ratio = (
        torch.lgamma(k + a) + torch.lgamma(rest + b) - torch.lgamma(n + a + b)
        - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
    )
    log_prior = torch.logaddexp(log_choose + log_beta_ratio, torch.tensor(math.log(1e-8), device=device))
    return torch.where(valid, log_prior, torch.zeros((), device=device))


def forward_sum_loss(
    log_scores: torch.Tensor, text_lengths: torch.Tensor, frame_lengths: torch.Tensor, blank_log_prob: float = -1.0
) -> torch.Tensor:
    """CTC over the aligner's scores with the tokens in order as the target (Badlani et al.).

    Summing over every monotonic path (a blank class absorbs frames between tokens) rewards
    the aligner for any alignment the data supports, without choosing one. Per-item losses are
    divided by the text length and averaged, as Coqui's ForwardSumLoss.
    """
    batch, max_text, _ = log_scores.shape
    with_blank = F.pad(log_scores, (0, 0, 1, 0), value=blank_log_prob)  # class 0 is the blank
    log_probs = torch.log_softmax(with_blank, dim=1).permute(2, 0, 1)  # [T, B, 1 + L]
    targets = torch.arange(1, max_text + 1, device=log_scores.device).expand(batch, max_text)
    return F.ctc_loss(
        log_probs, targets, frame_lengths, text_lengths, blank=0, reduction="mean", zero_infinity=True
    )


def even_durations(num_tokens: int, frames: int) -> torch.Tensor:
    """frames spread over tokens as evenly as possible, in order (the first ones get the rest)."""
    durations = torch.full((num_tokens,), frames // num_tokens, dtype=torch.long)
    durations[: frames % num_tokens] += 1
    return durations


def average_per_token(values: torch.Tensor, weights: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """Weighted mean of frame values [B, T] over each token's frames (path [B, L, T]); 0 if none."""
    sums = (path @ (values * weights).unsqueeze(-1)).squeeze(-1)
    counts = (path @ weights.unsqueeze(-1)).squeeze(-1)
    return torch.where(counts > 0, sums / counts.clamp_min(1e-8), torch.zeros_like(sums))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class _TeacherForced:
    """One teacher-forced pass (channel-major) with everything the losses need."""

    mel_before: torch.Tensor  # [B, n_mels, T]
    mel_after: torch.Tensor  # [B, n_mels, T] (== mel_before without a postnet)
    frame_mask: torch.Tensor  # [B, 1, T]
    text_mask: torch.Tensor  # [B, 1, L]
    durations: torch.Tensor  # [B, L], integer frames per token, summing to each mel's length
    path: torch.Tensor  # [B, L, T], the hard alignment those durations make
    log_duration_prediction: torch.Tensor  # [B, L]
    pitch_prediction: torch.Tensor  # [B, L]
    pitch_target: torch.Tensor  # [B, L]
    energy_prediction: torch.Tensor  # [B, L]
    energy_target: torch.Tensor  # [B, L]
    log_scores: torch.Tensor | None  # [B, L, T] aligner scores (None with file durations)
    log_attention: torch.Tensor | None  # [B, L, T] log soft attention, normalised over tokens


# --------------------------------------------------------------------------------------------
# The system


@register("fastspeech2-sniper")
class FastSpeech2Sniper(TTSModel):
    """FastSpeech2 trained with SNIPER: SNIP pruning at init, sparsity decaying to zero.

    `sparsity` is the `SparsityController` (None for the dense variant); it prunes the FFT
    stacks, variance predictors, output layer and postnet, but neither embeddings, norms nor
    the aligner, which stands in for the external durations the reference was given.
    """

    Config = FastSpeech2Config
    feature_kinds = ("mel", *prosody.KINDS)
    config: FastSpeech2Config

    def __init__(self, config: FastSpeech2Config, num_symbols: int):
        super().__init__(config, num_symbols)
        if config.duration_source == "file" and not config.durations_dir:
            # checked here, not in the config, so overrides may set the two fields in any order
            raise ValueError("duration_source='file' needs durations_dir (a folder of ID.npy integer arrays)")
        channels, n_mels = config.hidden_channels, config.audio.n_mels
        self.n_mels = n_mels
        self.embedding = nn.Embedding(num_symbols, channels)
        self.encoder = FFTStack(config, config.encoder_layers)
        self.duration_predictor = DurationPredictor(
            channels,
            config.duration_predictor_channels,
            config.duration_predictor_kernel_size,
            config.duration_predictor_dropout,
        )
        self.pitch_predictor = DeepVariancePredictor(
            channels,
            config.pitch_predictor_channels,
            config.pitch_predictor_kernel_size,
            config.pitch_predictor_layers,
            config.pitch_predictor_dropout,
        )
        self.pitch_embedding = nn.Conv1d(
            1, channels, config.pitch_embedding_kernel_size, padding=config.pitch_embedding_kernel_size // 2
        )
        self.energy_predictor = VariancePredictor(
            channels,
            config.energy_predictor_channels,
            config.energy_predictor_kernel_size,
            config.energy_predictor_dropout,
        )
        self.energy_embedding = nn.Conv1d(
            1, channels, config.energy_embedding_kernel_size, padding=config.energy_embedding_kernel_size // 2
        )
        self.decoder = FFTStack(config, config.decoder_layers)
        self.mel_projection = nn.Conv1d(channels, n_mels, 1)
        self.postnet = (
            Postnet(
                n_mels,
                config.postnet_channels,
                config.postnet_kernel_size,
                config.postnet_layers,
                config.postnet_dropout,
            )
            if config.postnet_layers > 0
            else None
        )
        self.aligner = (
            Aligner(channels, n_mels, config.aligner_channels, config.aligner_temperature)
            if config.duration_source == "aligner"
            else None
        )
        self._initialise_weights()
        # (mean, std) of voiced log-F0 and of log-energy, from the training batches (persisted)
        self.register_buffer("pitch_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("energy_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("feature_stats_ready", torch.tensor(False))
        self.sparsity = (
            None
            if config.sparsity_variant == "dense"
            else SparsityController(self.prunable_parameters(), config.max_param_sparsity)
        )
        self._counted_parameters = [p for _, p in self.prunable_parameters()]  # sparsity_actual's population
        self._sparsity_target = float(self._sparsity_schedule()(0))
        self._file_durations: dict[str, np.ndarray] = {}

    def _initialise_weights(self) -> None:
        """ESPnet's xavier_uniform init for weight matrices; biases keep PyTorch's nonzero init.

        ESPnet zeroes every bias, which gives each one a SNIP score of exactly 0 and so prunes
        all biases first at any sparsity; nonzero biases are ranked on their merits instead.
        """
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and not name.startswith("embedding"):
                nn.init.xavier_uniform_(parameter)

    def prunable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """SNIPER's prunable set (biases included, norms and embeddings not), minus the aligner."""
        return prunable_parameters(self, skip_prefixes=("aligner",))

    # ---- schedules and sparsity ---------------------------------------------------------------
    def _sparsity_schedule(self) -> PiecewiseConstant:
        config = self.config
        rows = {
            "dense": ((0, 0.0),),
            "constant": ((0, config.constant_sparsity),),
            "sniper": config.sniper_schedule,
        }[config.sparsity_variant]
        return PiecewiseConstant(tuple((int(start), float(value)) for start, value in rows))

    def schedules(self) -> dict[str, PiecewiseConstant]:
        return {"sparsity_target": self._sparsity_schedule()}

    def apply_schedules(self, values: Mapping[str, float]) -> None:
        if "sparsity_target" not in values:
            return
        target = float(values["sparsity_target"])
        if self.sparsity is None and target:
            raise ValueError(f"the dense variant cannot prune (sparsity_target {target})")
        self._sparsity_target = target
        if self.sparsity is not None:
            self.sparsity.set_sparsity(target)

    def warmup_batches_needed(self) -> int:
        """Batches `on_train_start` wants: SNIP scores (and feature statistics) sum over them."""
        return self.config.snip_batches

    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """Feature statistics, then SNIP scores at the initial weights and the first masks.

        Each step is skipped once done (a resumed run keeps them from its checkpoint). `batches`
        is read twice and each batch moves to the model's device only while it is scored, so a
        lazily collated sequence of many batches never sits on the device at once.
        """
        if not batches:
            raise ValueError("on_train_start needs at least one batch (feature statistics and SNIP scores)")
        if not bool(self.feature_stats_ready):
            self._fit_feature_stats(batches)
        if self.sparsity is None or bool(self.sparsity.scored):
            return
        was_training = self.training
        self.train()  # scored as trained, dropout included, as the reference does
        try:
            self.sparsity.compute_scores(lambda batch: self._losses(batch, step=0)["loss"], batches)
        finally:
            self.train(was_training)
        self.sparsity.set_sparsity(self._sparsity_target)  # the schedule's value, or the last one applied

    def after_optimizer_step(self, step: int) -> None:
        """Re-zero pruned weights that Adam's momentum moved (`SparsityController.after_optimizer_step`)."""
        if self.sparsity is not None:
            self.sparsity.after_optimizer_step()

    @torch.no_grad()
    def _fit_feature_stats(self, batches: Sequence[Batch]) -> None:
        log_f0, log_energy = [], []
        for batch in batches:
            valid = batch.frame_mask
            f0 = batch.features["pitch"]
            log_f0.append(torch.log(f0[valid & (f0 > 0)].double()).cpu())
            log_energy.append(torch.log(batch.features["energy"][valid].double().clamp_min(ENERGY_FLOOR)).cpu())
        for stats, values in ((self.pitch_stats, torch.cat(log_f0)), (self.energy_stats, torch.cat(log_energy))):
            if values.numel() > 1:
                stats.copy_(torch.stack([values.mean(), values.std().clamp_min(1e-3)]))
        self.feature_stats_ready.fill_(True)

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        if self.sparsity is not None and not bool(self.sparsity.scored):
            raise RuntimeError(
                "SNIP scores are missing: call on_train_start(batches) before training (the trainer does)"
            )
        return self._losses(batch, step)

    def _losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        config = self.config
        out = self._teacher_forced(batch)
        target = batch.mel[:, : out.mel_before.shape[2]].transpose(1, 2)
        frame_mask, token_mask = out.frame_mask, out.text_mask.squeeze(1)
        mel_values = frame_mask.sum() * self.n_mels

        def mel_l1(prediction: torch.Tensor) -> torch.Tensor:
            return (torch.abs(prediction - target) * frame_mask).sum() / mel_values

        mel_loss = mel_l1(out.mel_before) + (mel_l1(out.mel_after) if self.postnet is not None else 0.0)
        duration_target = torch.log(out.durations.to(target.dtype) + 1.0)
        duration_loss = masked_mean((out.log_duration_prediction - duration_target) ** 2, token_mask)
        pitch_loss = masked_mean((out.pitch_prediction - out.pitch_target) ** 2, token_mask)
        energy_loss = masked_mean((out.energy_prediction - out.energy_target) ** 2, token_mask)
        loss = mel_loss + duration_loss + pitch_loss + energy_loss

        zero = target.new_zeros(())
        align_forward_sum, align_bin = zero, zero
        if out.log_scores is not None:
            align_forward_sum = forward_sum_loss(out.log_scores, batch.text_lengths, batch.frame_lengths)
            hard = out.path
            align_bin = -(out.log_attention.clamp_min(math.log(1e-12)) * hard).sum() / hard.sum()
            warmup = config.binary_loss_warmup_steps
            binary_weight = config.binary_loss_weight * (min(1.0, step / warmup) if warmup > 0 else 1.0)
            loss = loss + config.forward_sum_weight * align_forward_sum + binary_weight * align_bin

        return {
            "loss": loss,
            "mel_loss": mel_loss,
            "duration_loss": duration_loss,
            "pitch_loss": pitch_loss,
            "energy_loss": energy_loss,
            "align_forward_sum": align_forward_sum,
            "align_bin": align_bin,
            "sparsity_target": target.new_tensor(self._sparsity_target),
            "sparsity_actual": zero_fraction(self._counted_parameters),
        }

    def _encode(
        self, text_ids: torch.Tensor, text_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token embeddings [B, C, L], encoder output [B, C, L], text mask [B, 1, L])."""
        embedded = self.embedding(text_ids).transpose(1, 2)
        text_mask = channel_mask(text_lengths, text_ids.shape[1], embedded.dtype)
        return embedded, self.encoder(embedded * text_mask, text_mask), text_mask

    def _predict_variances(
        self, encoded: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-durations, normalised pitch and normalised energy per token, each [B, L]."""
        pitch_input = encoded.detach() if self.config.stop_gradient_from_pitch_predictor else encoded
        return (
            self.duration_predictor(encoded, text_mask),
            self.pitch_predictor(pitch_input, text_mask),
            self.energy_predictor(encoded, text_mask),
        )

    def _decode(
        self,
        encoded: torch.Tensor,
        pitch: torch.Tensor,
        energy: torch.Tensor,
        text_mask: torch.Tensor,
        durations: torch.Tensor,
        frames: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add pitch and energy embeddings, repeat tokens by `durations`, decode.

        Returns (mel, mel after the postnet, frame mask), channel-major over `frames` frames.
        """
        adapted = encoded + self.pitch_embedding(pitch.unsqueeze(1)) + self.energy_embedding(energy.unsqueeze(1))
        expanded, totals = length_regulate((adapted * text_mask).transpose(1, 2), durations, frames)
        frame_mask = channel_mask(totals, frames, expanded.dtype)
        decoded = self.decoder(expanded.transpose(1, 2), frame_mask)
        mel = self.mel_projection(decoded) * frame_mask
        mel_after = mel + self.postnet(mel, frame_mask) if self.postnet is not None else mel
        return mel, mel_after, frame_mask

    def _teacher_forced(self, batch: Batch) -> _TeacherForced:
        embedded, encoded, text_mask = self._encode(batch.text_ids, batch.text_lengths)
        frames = batch.mel.shape[1]
        if self.aligner is not None:
            log_scores, log_attention, durations = self._align(embedded, batch)
        else:
            log_scores = log_attention = None
            durations = self._durations_from_files(batch)
        path = durations_to_path(durations, frames).to(encoded.dtype)
        pitch_target, energy_target = self._token_targets(batch, path)
        log_duration_prediction, pitch_prediction, energy_prediction = self._predict_variances(encoded, text_mask)
        mel_before, mel_after, frame_mask = self._decode(
            encoded, pitch_target, energy_target, text_mask, durations, frames
        )
        return _TeacherForced(
            mel_before=mel_before,
            mel_after=mel_after,
            frame_mask=frame_mask,
            text_mask=text_mask,
            durations=durations,
            path=path,
            log_duration_prediction=log_duration_prediction,
            pitch_prediction=pitch_prediction,
            pitch_target=pitch_target,
            energy_prediction=energy_prediction,
            energy_target=energy_target,
            log_scores=log_scores,
            log_attention=log_attention,
        )

    def _token_targets(self, batch: Batch, path: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised log-F0 over each token's voiced frames, and standardised log-energy."""
        f0, energy = batch.features["pitch"], batch.features["energy"]
        voiced = (f0 > 0) & batch.frame_mask
        pitch_mean, pitch_std = self.pitch_stats
        energy_mean, energy_std = self.energy_stats
        log_f0 = (torch.log(f0.clamp_min(1.0)) - pitch_mean) / pitch_std
        log_energy = (torch.log(energy.clamp_min(ENERGY_FLOOR)) - energy_mean) / energy_std
        pitch = average_per_token(log_f0, voiced.to(path.dtype), path)
        energy_per_token = average_per_token(log_energy, batch.frame_mask.to(path.dtype), path)
        return pitch, energy_per_token

    def _align(self, embedded: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Aligner scores, log soft attention and MAS durations [B, L] (no gradient through MAS)."""
        text_lengths, frame_lengths = batch.text_lengths, batch.frame_lengths
        max_text, frames = batch.text_ids.shape[1], batch.mel.shape[1]
        text_mask = channel_mask(text_lengths, max_text, embedded.dtype)
        frame_mask = channel_mask(frame_lengths, frames, embedded.dtype)
        with torch.no_grad():
            log_prior = beta_binomial_log_prior(
                text_lengths, frame_lengths, max_text, frames, self.config.aligner_prior_scaling
            ).to(embedded.dtype)
        mel = batch.mel.transpose(1, 2) * frame_mask
        log_scores = self.aligner(embedded, mel, text_mask, log_prior)
        log_attention = torch.log_softmax(log_scores, dim=1)
        durations = self._mas_durations(log_attention.detach(), text_mask, frame_mask, text_lengths, frame_lengths)
        return log_scores, log_attention, durations

    @staticmethod
    def _mas_durations(
        log_attention: torch.Tensor,
        text_mask: torch.Tensor,
        frame_mask: torch.Tensor,
        text_lengths: torch.Tensor,
        frame_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Frames per token from MAS over the log attention; they sum to each mel's length.

        An utterance with more tokens than frames has no alignment giving every token a frame;
        its frames are spread evenly in order instead (some tokens get none).
        """
        pair_mask = text_mask.transpose(1, 2) * frame_mask  # [B, L, T]
        fits = (text_lengths <= frame_lengths).cpu()
        durations = torch.zeros(text_mask.shape[0], text_mask.shape[2], dtype=torch.long, device=log_attention.device)
        if bool(fits.all()):
            return maximum_path(log_attention, pair_mask).sum(-1).round().long()
        aligned = fits.nonzero().squeeze(1).to(log_attention.device)
        if aligned.numel():
            durations[aligned] = maximum_path(log_attention[aligned], pair_mask[aligned]).sum(-1).round().long()
        for b in (~fits).nonzero().squeeze(1).tolist():
            tokens = int(text_lengths[b])
            durations[b, :tokens] = even_durations(tokens, int(frame_lengths[b])).to(durations.device)
        return durations

    def _durations_from_files(self, batch: Batch) -> torch.Tensor:
        """Integer durations [B, L] read from `durations_dir/ID.npy`, checked against the batch."""
        directory = Path(self.config.durations_dir)
        durations = torch.zeros(len(batch), batch.text_ids.shape[1], dtype=torch.long)
        for b, utt_id in enumerate(batch.ids):
            tokens, frames = int(batch.text_lengths[b]), int(batch.frame_lengths[b])
            if utt_id not in self._file_durations:
                path = directory / f"{utt_id}.npy"
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no durations for utterance {utt_id!r} (duration_source='file')")
                values = np.load(path)
                if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
                    raise ValueError(
                        f"{path}: durations must be a 1-D integer array, got {values.dtype} {values.shape}"
                    )
                if len(values) != tokens:
                    raise ValueError(f"{path}: {len(values)} durations for {tokens} tokens of {utt_id!r}")
                if values.min(initial=0) < 0:
                    raise ValueError(f"{path}: negative durations")
                if int(values.sum()) != frames:
                    raise ValueError(f"{path}: durations sum to {int(values.sum())} but the mel has {frames} frames")
                self._file_durations[utt_id] = values.astype(np.int64)
            durations[b, :tokens] = torch.from_numpy(self._file_durations[utt_id])
        return durations.to(self.device)

    # ---- inference ----------------------------------------------------------------------------
    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """Predicted durations (clamp(round(exp(log d) - 1), min=1)), pitch and energy, then decode."""
        with self.evaluating():
            ids = text_ids.to(self.device, torch.long).reshape(1, -1)
            _, encoded, text_mask = self._encode(ids, torch.tensor([ids.shape[1]], device=self.device))
            log_durations, pitch, energy = self._predict_variances(encoded, text_mask)
            durations = torch.clamp(torch.round(torch.exp(log_durations) - 1.0), min=1).long()
            predicted_frames = int(durations.sum())
            frames = min(predicted_frames, self.config.max_inference_frames)
            _, mel, _ = self._decode(encoded, pitch, energy, text_mask, durations, frames)
            rendered = durations_to_path(durations, frames).sum(-1)  # what fits under the cap
        hit_max_frames = predicted_frames > frames
        return Synthesis(
            mel=mel[0].T.contiguous().float().cpu().numpy(),
            audio_config=self.config.audio,
            durations=rendered[0].long().cpu().numpy(),
            alignment=None,
            stopped=not hit_max_frames,
            info={
                "hit_max_frames": hit_max_frames,
                "pitch": pitch[0].float().cpu().numpy(),
                "energy": energy[0].float().cpu().numpy(),
            },
        )

    def alignment(self, batch: Batch) -> list[Alignment]:
        """The aligner's soft attention [L, T] and its MAS durations (or the file durations)."""
        with self.evaluating():
            if self.aligner is None:
                durations, attention = self._durations_from_files(batch), None
            else:
                embedded, _, _ = self._encode(batch.text_ids, batch.text_lengths)
                _, log_attention, durations = self._align(embedded, batch)
                attention = torch.exp(log_attention).float().cpu().numpy()
            durations = durations.cpu().numpy()
        alignments = []
        for b, utt_id in enumerate(batch.ids):
            tokens, frames = int(batch.text_lengths[b]), int(batch.frame_lengths[b])
            soft = None if attention is None else attention[b, :tokens, :frames]
            alignments.append(Alignment(utt_id, soft=soft, durations=durations[b, :tokens].astype(np.int64)))
        return alignments
