"""conv-mas: a convolutional TTS whose durations come from monotonic alignment search.

The encoder gives each token a hidden state and a mean mel frame mu; MAS (Glow-TTS's aligner)
picks the monotonic path that maximises the frames' log-likelihood under N(mu, I); a duration
predictor learns those durations (log domain, on detached states, as in Glow-TTS); a conv
decoder maps the length-regulated states to the mel. Losses: the prior's negative
log-likelihood on the path (what trains the alignment), the decoder's L1, the duration MSE.
What it uses from ttsbench is public: `TTSModel` and the types crossing it, `Batch`, the
shared layers and `maximum_path`; it is registered by the entry point in pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ttsbench.align.mas import maximum_path
from ttsbench.batches import Batch, sequence_mask
from ttsbench.models import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.models.layers import ChannelLayerNorm, DurationPredictor, length_regulate


@dataclass
class ConvMASConfig(ModelConfig):
    """Sizes of the encoder, decoder and duration predictor (the optimiser fields come from
    ModelConfig)."""

    embedding_dim: int = 256  # symbol embedding, and the width of every conv stack
    kernel_size: int = 5  # of the encoder's and decoder's convolutions
    encoder_layers: int = 3
    decoder_layers: int = 4
    dropout: float = 0.1
    duration_channels: int = 256
    max_inference_frames: int = 2000  # guard on the predicted length

    @classmethod
    def full(cls) -> "ConvMASConfig":
        """The default widths; Adam 1e-3, batch 32."""
        return cls(batch_size=32)

    @classmethod
    def tiny(cls) -> "ConvMASConfig":
        """Same code at CPU scale: width 64, batch 8."""
        return cls(embedding_dim=64, duration_channels=64, batch_size=8, learning_rate=2e-3)


class ConvStack(nn.Module):
    """Residual [conv -> ReLU -> channel LayerNorm -> dropout] blocks on [B, C, T], masked."""

    def __init__(self, channels: int, layers: int, kernel_size: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = x + self.dropout(norm(torch.relu(conv(x * mask))))
        return x * mask


class ConvMAS(TTSModel):
    """A convolutional TTS aligned by monotonic alignment search (example plugin)."""

    Config = ConvMASConfig
    config: ConvMASConfig

    def __init__(self, config: ConvMASConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        width, n_mels = config.embedding_dim, config.audio.n_mels
        self.embedding = nn.Embedding(num_symbols, width, padding_idx=0)
        self.encoder = ConvStack(width, config.encoder_layers, config.kernel_size, config.dropout)
        self.to_mean = nn.Conv1d(width, n_mels, 1)
        self.durations = DurationPredictor(width, config.duration_channels, 3, config.dropout)
        self.decoder = ConvStack(width, config.decoder_layers, config.kernel_size, config.dropout)
        self.to_mel = nn.Conv1d(width, n_mels, 1)

    def encode(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, C, L] and per-token mean frames [B, n_mels, L]."""
        mask = text_mask.unsqueeze(1).to(torch.float32)
        hidden = self.encoder(self.embedding(text_ids).transpose(1, 2), mask)
        return hidden, self.to_mean(hidden) * mask

    def align(self, batch: Batch, mean: torch.Tensor) -> torch.Tensor:
        """MAS durations [B, L]: the path maximising sum log N(y_t; mu_i, I) (constants dropped)."""
        with torch.no_grad():
            mel = batch.mel  # [B, T, n_mels]
            log_likelihood = -0.5 * torch.cdist(mean.transpose(1, 2), mel) ** 2  # [B, L, T]
            mask = batch.text_mask.unsqueeze(2) & batch.frame_mask.unsqueeze(1)
            path = maximum_path(log_likelihood, mask)
        return path.sum(2).long()

    def decode(self, hidden: torch.Tensor, durations: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Mel [B, T, n_mels] from token states [B, C, L] and durations [B, L]."""
        frames, lengths = length_regulate(hidden.transpose(1, 2), durations, num_frames)
        mask = sequence_mask(lengths, frames.shape[1]).unsqueeze(1).to(frames.dtype)
        return (self.to_mel(self.decoder(frames.transpose(1, 2), mask)) * mask).transpose(1, 2)

    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        hidden, mean = self.encode(batch.text_ids, batch.text_mask)
        durations = self.align(batch, mean)
        frame_mask = batch.frame_mask.unsqueeze(-1).to(batch.mel.dtype)
        frames = frame_mask.sum() * batch.mel.shape[2]
        aligned_mean, _ = length_regulate(mean.transpose(1, 2), durations, batch.mel.shape[1])
        prior_loss = 0.5 * (((batch.mel - aligned_mean) ** 2) * frame_mask).sum() / frames
        mel = self.decode(hidden, durations, batch.mel.shape[1])
        mel_loss = ((mel - batch.mel).abs() * frame_mask).sum() / frames
        text_mask = batch.text_mask.unsqueeze(1).to(hidden.dtype)
        predicted = self.durations(hidden.detach(), text_mask)
        target = torch.log1p(durations.to(predicted.dtype)) * text_mask.squeeze(1)
        duration_loss = ((predicted - target) ** 2).sum() / text_mask.sum()
        loss = prior_loss + mel_loss + duration_loss
        return {"loss": loss, "prior_loss": prior_loss, "mel_loss": mel_loss, "duration_loss": duration_loss}

    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """Predicted durations (at least one frame a token), regulated and decoded; capped."""
        with self.evaluating():
            ids = text_ids.to(self.device, torch.long).reshape(1, -1)
            mask = torch.ones_like(ids, dtype=torch.bool)
            hidden, _ = self.encode(ids, mask)
            predicted = self.durations(hidden, mask.unsqueeze(1).to(hidden.dtype))
            durations = torch.clamp(torch.round(torch.expm1(predicted)), min=1).long()
            total = int(durations.sum())
            num_frames = min(total, self.config.max_inference_frames)
            mel = self.decode(hidden, durations, num_frames)
        return Synthesis(mel=mel[0].cpu().numpy(), audio_config=self.config.audio,
                         durations=durations[0].cpu().numpy(), stopped=total <= self.config.max_inference_frames)

    def alignment(self, batch: Batch) -> list[Alignment]:
        """The MAS durations of each utterance under the current means."""
        with self.evaluating():
            _, mean = self.encode(batch.text_ids, batch.text_mask)
            durations = self.align(batch, mean).cpu().numpy()
        return [Alignment(utt_id, durations=durations[b, : int(batch.text_lengths[b])].astype(np.int64))
                for b, utt_id in enumerate(batch.ids)]
