"""Tacotron (v1) with gradual training, built as Coqui TTS builds it (paper: arXiv 1703.10135).

Text -> embedding -> prenet -> CBHG encoder; an attention-RNN decoder emits r mel frames per step
with location-aware additive attention and a stop token; a CBHG postnet maps the mel to a
513-bin linear spectrogram for Griffin-Lim. Gradual training changes r (and the batch size)
at scheduled steps while every layer keeps its shape: the mel projection always emits
80 * r_init values and only the first 80 * r are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ttsbench.align.guided import guided_attention_loss
from ttsbench.audio import AudioConfig
from ttsbench.batches import Batch, sequence_mask
from ttsbench.models import register
from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.models.layers import attention_durations
from ttsbench.schedule import PiecewiseConstant, Schedule

# (start_step, r, batch_size): from start_step on, decode r frames per step with this batch size.
GradualTrainingRow = tuple[int, int, int]


@dataclass
class TacotronConfig(ModelConfig):
    """Tacotron v1 hyperparameters; defaults are Coqui's (C configs/tacotron_config.py)."""

    embedding_dim: int = 256
    encoder_prenet_dims: tuple[int, ...] = (256, 128)
    encoder_bank_k: int = 16
    encoder_channels: int = 128  # conv bank, projections, highways and each GRU direction
    encoder_highways: int = 4
    decoder_prenet_dims: tuple[int, ...] = (256, 128)
    attention_rnn_dim: int = 256
    attention_dim: int = 128
    location_filters: int = 32
    location_kernel: int = 31
    decoder_rnn_dim: int = 256
    decoder_rnn_layers: int = 2
    postnet_bank_k: int = 8
    postnet_channels: int = 128  # conv bank, highways and each GRU direction
    postnet_projection_dim: int = 256  # projections are [this, n_mels] (the last feeds the residual)
    postnet_highways: int = 4
    prenet_dropout: float = 0.5
    stopnet_dropout: float = 0.1
    separate_stopnet: bool = True
    max_decoder_steps: int = 10000  # decoder steps (each emits r frames), counted as Coqui counts them
    stop_threshold: float = 0.6
    last_char_attention_threshold: float = 0.6
    stop_pos_weight: float = 0.2
    # The paper uses L1. Coqui picks L1 only when model == "Tacotron" but its config says
    # "tacotron", so Coqui's Tacotron silently trains with MSE; "mse" reproduces that.
    loss: Literal["l1", "mse"] = "l1"
    mel_loss_weight: float = 0.25
    linear_loss_weight: float = 0.25
    stop_loss_weight: float = 1.0
    ga_alpha: float = 5.0  # guided-attention weight (an alignment aid); 0 disables it
    ga_sigma: float = 0.4
    gradual_training: tuple[GradualTrainingRow, ...] = (
        (0, 7, 32),
        (10000, 5, 32),
        (50000, 3, 32),
        (130000, 2, 16),
        (290000, 1, 8),
    )

    @classmethod
    def full(cls) -> "TacotronConfig":
        """Coqui/paper sizes and recipe: RAdam, Noam warm-up 4000, clip 5, r 7 -> 1 over 290k steps."""
        return cls(
            batch_size=32,
            optimizer="radam",
            learning_rate=1e-4,
            lr_schedule="noam",
            warmup_steps=4000,
            betas=(0.9, 0.998),
            weight_decay=1e-6,
            grad_clip_norm=5.0,
        )

    @classmethod
    def tiny(cls) -> "TacotronConfig":
        """Same code path scaled to train on 2 CPU cores: half of Coqui's widths, r 7 -> 2.

        Half widths rather than quarter widths: on a CPU a step's time is mostly the decoder
        loop's per-step overhead, not its matrix sizes, so the wider model costs little more per
        step and learns in far fewer steps (measured on the digits corpus; see the commit). The
        schedule keeps r high while the model learns to speak (free-running, it feeds its own
        output back once per r frames) and keeps batch 8, as Coqui keeps its batch until r = 2;
        the earlier 6 -> 2 within 300 steps at batch 4 spent most of a short run at r = 2.
        """
        return cls(
            audio=AudioConfig(),
            embedding_dim=128,
            encoder_prenet_dims=(128, 64),
            encoder_bank_k=4,
            encoder_channels=64,
            encoder_highways=2,
            decoder_prenet_dims=(128, 64),
            attention_rnn_dim=128,
            attention_dim=64,
            location_filters=8,
            location_kernel=15,
            decoder_rnn_dim=128,
            postnet_bank_k=4,
            postnet_channels=64,
            postnet_projection_dim=128,
            postnet_highways=2,
            max_decoder_steps=1000,
            batch_size=8,
            optimizer="adam",
            learning_rate=2e-3,
            grad_clip_norm=1.0,
            gradual_training=((0, 7, 8), (1500, 5, 8), (3000, 3, 8), (6000, 2, 8)),
        )


# ---------------------------------------------------------------------------------------------
# Building blocks


class Prenet(nn.Module):
    """FC -> ReLU -> dropout stack: the information bottleneck that makes the decoder attend."""

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip((in_dim, *dims[:-1]), dims))
        self.dropout = dropout
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        return x


class BatchNormConv1d(nn.Module):
    """Conv1d (no bias) -> BatchNorm -> optional ReLU, 'same' length for odd and even kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool):
        super().__init__()
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, bias=False)
        # eps as TF (and Coqui); momentum is PyTorch's default, since Coqui's literal 0.99 would
        # make the running statistics just the last batch's.
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(F.pad(x, self.padding)))
        return F.relu(x) if self.relu else x


class Highway(nn.Module):
    """y = T * relu(H x) + (1 - T) * x, gate bias -1 so each layer starts close to identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.transform.bias)
        nn.init.constant_(self.gate.bias, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x))
        return gate * F.relu(self.transform(x)) + (1.0 - gate) * x


class CBHG(nn.Module):
    """Conv bank (kernels 1..K) + projections with a residual + highways + BiGRU.

    No max-pool after the bank: Coqui drops the paper's pool. Padding is zeroed between the
    convolutions and the GRU is packed, so a padded batch computes what one utterance alone would
    (BatchNorm statistics aside).
    """

    def __init__(
        self,
        in_dim: int,
        bank_k: int,
        bank_channels: int,
        projection_dims: Sequence[int],
        highway_dim: int,
        num_highways: int,
    ):
        super().__init__()
        if projection_dims[-1] != in_dim:
            raise ValueError(f"CBHG's last projection ({projection_dims[-1]}) must equal its input ({in_dim})")
        self.bank = nn.ModuleList(BatchNormConv1d(in_dim, bank_channels, k, relu=True) for k in range(1, bank_k + 1))
        projection_in = (bank_k * bank_channels, *projection_dims[:-1])
        last = len(projection_dims) - 1
        self.projections = nn.ModuleList(
            BatchNormConv1d(i, o, 3, relu=index < last)
            for index, (i, o) in enumerate(zip(projection_in, projection_dims))
        )
        self.pre_highway = nn.Linear(in_dim, highway_dim, bias=False) if in_dim != highway_dim else nn.Identity()
        self.highways = nn.ModuleList(Highway(highway_dim) for _ in range(num_highways))
        self.gru = nn.GRU(highway_dim, highway_dim, batch_first=True, bidirectional=True)
        self.out_dim = 2 * highway_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, C] -> [B, T, 2 * highway_dim]; `lengths` None means no padding."""
        keep = None if lengths is None else sequence_mask(lengths, x.shape[1])[:, None, :].to(x.dtype)

        def zero_padding(h: torch.Tensor) -> torch.Tensor:
            return h if keep is None else h * keep

        h = zero_padding(x.transpose(1, 2))
        h = zero_padding(torch.cat([conv(h) for conv in self.bank], dim=1))
        for conv in self.projections:
            h = zero_padding(conv(h))
        h = self.pre_highway(h.transpose(1, 2) + x)
        for highway in self.highways:
            h = highway(h)
        if lengths is None:
            return self.gru(h)[0]
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]


class LocationSensitiveAttention(nn.Module):
    """Additive attention with location features (Coqui 'original', sigmoid normalisation).

    The location features come from a convolution over the previous and the cumulative weights,
    so the model knows where it attended and is nudged to move forward. Weights are
    sigmoid(e) / sum(sigmoid(e)) over the text, which is smoother than softmax early in training.
    """

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, filters: int, kernel_size: int):
        super().__init__()
        self.query_layer = nn.Linear(query_dim, attention_dim, bias=False)
        self.memory_layer = nn.Linear(memory_dim, attention_dim, bias=False)
        self.location_padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.location_conv = nn.Conv1d(2, filters, kernel_size, bias=False)
        self.location_layer = nn.Linear(filters, attention_dim, bias=False)
        self.energy = nn.Linear(attention_dim, 1)
        tanh_gain = nn.init.calculate_gain("tanh")
        for layer in (self.query_layer, self.memory_layer, self.location_layer):
            nn.init.xavier_uniform_(layer.weight, gain=tanh_gain)

    def forward(
        self,
        query: torch.Tensor,
        processed_memory: torch.Tensor,
        previous_weights: torch.Tensor,
        cumulative_weights: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """query [B, Q], processed_memory [B, N, A], weights [B, N], mask [B, N] -> weights [B, N]."""
        weights = F.pad(torch.stack([previous_weights, cumulative_weights], 1), self.location_padding)
        location = self.location_layer(self.location_conv(weights).transpose(1, 2))
        energies = self.energy(torch.tanh(self.query_layer(query)[:, None, :] + location + processed_memory))
        energies = energies.squeeze(-1)
        scores = torch.sigmoid(energies).masked_fill(~text_mask, 0.0)
        return scores / scores.sum(dim=1, keepdim=True)


@dataclass
class DecoderState:
    """Recurrent state carried from one decoder step to the next."""

    attention_hidden: torch.Tensor
    decoder_hiddens: list[torch.Tensor]
    context: torch.Tensor
    attention_weights: torch.Tensor
    cumulative_weights: torch.Tensor


class Decoder(nn.Module):
    """Attention RNN -> attention -> 2 residual GRUs -> r frames and a stop logit per step."""

    def __init__(self, config: TacotronConfig, memory_dim: int, n_mels: int, r_init: int):
        super().__init__()
        self.n_mels = n_mels
        self.separate_stopnet = config.separate_stopnet
        self.prenet = Prenet(n_mels, config.decoder_prenet_dims, config.prenet_dropout)
        self.attention_rnn = nn.GRUCell(self.prenet.out_dim + memory_dim, config.attention_rnn_dim)
        self.attention = LocationSensitiveAttention(
            config.attention_rnn_dim, memory_dim, config.attention_dim, config.location_filters, config.location_kernel
        )
        self.project_to_decoder_in = nn.Linear(config.attention_rnn_dim + memory_dim, config.decoder_rnn_dim)
        self.decoder_rnns = nn.ModuleList(
            nn.GRUCell(config.decoder_rnn_dim, config.decoder_rnn_dim) for _ in range(config.decoder_rnn_layers)
        )
        # Sized for r_init so the layer keeps its shape when r shrinks; the output is sliced.
        self.proj_to_mel = nn.Linear(config.decoder_rnn_dim, n_mels * r_init)
        self.stopnet = nn.Sequential(
            nn.Dropout(config.stopnet_dropout), nn.Linear(config.decoder_rnn_dim + n_mels * r_init, 1)
        )

    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        batch, text_length, memory_dim = memory.shape
        return DecoderState(
            attention_hidden=memory.new_zeros(batch, self.attention_rnn.hidden_size),
            decoder_hiddens=[memory.new_zeros(batch, rnn.hidden_size) for rnn in self.decoder_rnns],
            context=memory.new_zeros(batch, memory_dim),
            attention_weights=memory.new_zeros(batch, text_length),
            cumulative_weights=memory.new_zeros(batch, text_length),
        )

    def step(
        self,
        state: DecoderState,
        prenet_out: torch.Tensor,
        memory: torch.Tensor,
        processed_memory: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """One step: frames [B, n_mels * r_init] (caller slices to r), stop logit [B], new state."""
        attention_hidden = self.attention_rnn(torch.cat([prenet_out, state.context], -1), state.attention_hidden)
        weights = self.attention(
            attention_hidden, processed_memory, state.attention_weights, state.cumulative_weights, text_mask
        )
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)
        x = self.project_to_decoder_in(torch.cat([attention_hidden, context], -1))
        hiddens = []
        for rnn, hidden in zip(self.decoder_rnns, state.decoder_hiddens):
            hidden = rnn(x, hidden)
            hiddens.append(hidden)
            x = x + hidden
        frames = self.proj_to_mel(x)
        stop_input = torch.cat([x, frames], -1)
        stop_logit = self.stopnet(stop_input.detach() if self.separate_stopnet else stop_input).squeeze(-1)
        new_state = DecoderState(attention_hidden, hiddens, context, weights, state.cumulative_weights + weights)
        return frames, stop_logit, new_state


@dataclass
class TacotronOutput:
    """Teacher-forced outputs; frames = decoder steps * r."""

    mel: torch.Tensor  # [B, T, n_mels]
    linear: torch.Tensor  # [B, T, n_freq]
    stop_logits: torch.Tensor  # [B, steps]
    attention: torch.Tensor  # [B, steps, N]


# ---------------------------------------------------------------------------------------------
# The system


@register("tacotron-gradual")
class Tacotron(TTSModel):
    """Tacotron (v1) with gradual training: reduction factor r and batch size follow a step schedule.

    CBHG encoder, attention-RNN decoder emitting r frames per step with a stop token, CBHG
    postnet to a linear spectrogram; r and the batch size change at the steps of
    `gradual_training` while layer shapes stay fixed (Coqui's recipe).
    """

    Config = TacotronConfig
    feature_kinds = ("mel", "linear")
    config: TacotronConfig

    def __init__(self, config: TacotronConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        self.gradual_rows = [tuple(int(v) for v in row) for row in config.gradual_training]
        if not self.gradual_rows or any(len(row) != 3 for row in self.gradual_rows):
            raise ValueError(f"gradual_training needs (start_step, r, batch_size) rows, got {config.gradual_training}")
        self.r_init = self.gradual_rows[0][1]
        if any(not 1 <= r <= self.r_init for _, r, _ in self.gradual_rows):
            raise ValueError(f"every r must lie in [1, r_init={self.r_init}] (the first row's r): {self.gradual_rows}")
        self.r = self.r_init
        audio = config.audio
        self.n_mels = audio.n_mels

        self.embedding = nn.Embedding(num_symbols, config.embedding_dim)
        nn.init.normal_(self.embedding.weight, 0.0, 0.3)
        self.encoder_prenet = Prenet(config.embedding_dim, config.encoder_prenet_dims, config.prenet_dropout)
        self.encoder_cbhg = CBHG(
            self.encoder_prenet.out_dim,
            config.encoder_bank_k,
            config.encoder_channels,
            (config.encoder_channels, self.encoder_prenet.out_dim),
            config.encoder_channels,
            config.encoder_highways,
        )
        self.decoder = Decoder(config, self.encoder_cbhg.out_dim, self.n_mels, self.r_init)
        self.postnet = CBHG(
            self.n_mels,
            config.postnet_bank_k,
            config.postnet_channels,
            (config.postnet_projection_dim, self.n_mels),
            config.postnet_channels,
            config.postnet_highways,
        )
        self.last_linear = nn.Linear(self.postnet.out_dim, audio.n_freq)

    # ---- gradual training ---------------------------------------------------------------------
    def schedules(self) -> dict[str, Schedule]:
        return {
            "r": PiecewiseConstant.from_rows(self.gradual_rows, 1),
            "batch_size": PiecewiseConstant.from_rows(self.gradual_rows, 2),
        }

    def apply_schedules(self, values: Mapping[str, float]) -> None:
        if "r" in values:
            self.set_r(int(values["r"]))

    def set_r(self, r: int) -> None:
        """Decode r frames per step from now on; only the slice of the mel projection changes."""
        if not 1 <= r <= self.r_init:
            raise ValueError(f"r must lie in [1, {self.r_init}], got {r}")
        self.r = r

    def frame_multiple(self) -> int:
        return self.r

    def get_extra_state(self) -> dict[str, Any]:
        """Keep the current r in checkpoints, so a reloaded model decodes as it was trained."""
        return {"r": self.r}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_r(int(state["r"]))

    # ---- forward ------------------------------------------------------------------------------
    def encode(self, text_ids: torch.Tensor, text_lengths: torch.Tensor | None) -> torch.Tensor:
        """[B, N] ids -> encoder memory [B, N, 2 * encoder_channels]."""
        return self.encoder_cbhg(self.encoder_prenet(self.embedding(text_ids)), text_lengths)

    def decode_teacher_forced(
        self, memory: torch.Tensor, text_mask: torch.Tensor, mel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode against ground truth mel [B, T, n_mels] (T a multiple of r).

        Step t sees the last true frame of group t-1 (a zero go-frame at t = 0). The prenet runs
        on all of them at once: it is per-frame, so this equals running it inside the loop.
        Returns mel [B, T, n_mels], stop logits [B, T/r], attention [B, T/r, N].
        """
        batch, num_frames, _ = mel.shape
        r = self.r
        steps = num_frames // r
        go_frame = mel.new_zeros(batch, 1, self.n_mels)
        previous_frames = torch.cat([go_frame, mel[:, r - 1 :: r][:, : steps - 1]], dim=1)
        prenet_out = self.decoder.prenet(previous_frames)
        processed_memory = self.decoder.attention.memory_layer(memory)
        state = self.decoder.initial_state(memory)
        frames, stops, weights = [], [], []
        for t in range(steps):
            step_frames, stop_logit, state = self.decoder.step(
                state, prenet_out[:, t], memory, processed_memory, text_mask
            )
            frames.append(step_frames[:, : self.n_mels * r])
            stops.append(stop_logit)
            weights.append(state.attention_weights)
        mel_out = torch.stack(frames, 1).reshape(batch, steps * r, self.n_mels)
        return mel_out, torch.stack(stops, 1), torch.stack(weights, 1)

    def forward(
        self,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        mel: torch.Tensor,
        frame_lengths: torch.Tensor | None = None,
    ) -> TacotronOutput:
        """Teacher-forced pass: mel [B, T, n_mels] with T a multiple of the current r."""
        if mel.shape[1] % self.r:
            raise ValueError(f"{mel.shape[1]} frames is not a multiple of r={self.r}; collate with frame_multiple=r")
        memory = self.encode(text_ids, text_lengths)
        text_mask = sequence_mask(text_lengths, text_ids.shape[1])
        mel_out, stop_logits, attention = self.decode_teacher_forced(memory, text_mask, mel)
        linear = self.last_linear(self.postnet(mel_out, frame_lengths))
        return TacotronOutput(mel_out, linear, stop_logits, attention)

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        """Masked mel and linear losses, a per-step stop loss and (optionally) guided attention.

        Tacotron is one network trained end to end, so `network` is always "model".
        """
        config = self.config
        mel = self._pad_to_multiple_of_r(batch.mel)
        linear = self._pad_to_multiple_of_r(batch.features["linear"])
        out = self(batch.text_ids, batch.text_lengths, mel, batch.frame_lengths)

        frame_mask = sequence_mask(batch.frame_lengths, mel.shape[1])
        mel_loss = self._masked_spectral_loss(out.mel, mel, frame_mask)
        linear_loss = self._masked_spectral_loss(out.linear, linear, frame_mask)

        # Stop target is 1 from the last true frame on; a step is a stop step if its r-group
        # holds any such frame. Steps past ceil(T_b / r) are padding and are not scored.
        batch_size, num_frames = frame_mask.shape
        steps = num_frames // self.r
        frame_stop = torch.arange(num_frames, device=mel.device)[None, :] >= (batch.frame_lengths - 1)[:, None]
        stop_targets = frame_stop.view(batch_size, steps, self.r).any(dim=2).to(out.stop_logits.dtype)
        step_lengths = torch.div(batch.frame_lengths + self.r - 1, self.r, rounding_mode="floor")
        step_mask = sequence_mask(step_lengths, steps)
        pos_weight = torch.tensor(config.stop_pos_weight, device=mel.device)
        stop_loss = F.binary_cross_entropy_with_logits(
            out.stop_logits[step_mask], stop_targets[step_mask], pos_weight=pos_weight
        )

        loss = config.mel_loss_weight * mel_loss + config.linear_loss_weight * linear_loss
        loss = loss + config.stop_loss_weight * stop_loss
        parts = {"mel_loss": mel_loss, "linear_loss": linear_loss, "stop_loss": stop_loss}
        if config.ga_alpha > 0:
            ga_loss = guided_attention_loss(
                out.attention.transpose(1, 2), batch.text_lengths, step_lengths, config.ga_sigma
            )
            loss = loss + config.ga_alpha * ga_loss
            parts["ga_loss"] = ga_loss
        return {"loss": loss, **parts}

    def _masked_spectral_loss(
        self, prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean L1 (or MSE) over the true frames and all bins."""
        errors = (prediction - target).abs() if self.config.loss == "l1" else (prediction - target) ** 2
        weights = frame_mask[..., None].to(errors.dtype)
        return (errors * weights).sum() / (weights.sum() * errors.shape[-1])

    def _pad_to_multiple_of_r(self, features: torch.Tensor) -> torch.Tensor:
        """Pad the frame axis up to a multiple of r with the batch's silence (its minimum) value.

        The trainer collates with `frame_multiple()`, so this only acts on batches collated for
        another r (e.g. by a metric); padded frames are masked out of every loss.
        """
        extra = -features.shape[1] % self.r
        if extra == 0:
            return features
        silence = features.new_full((features.shape[0], extra, *features.shape[2:]), float(features.min()))
        return torch.cat([features, silence], dim=1)

    # ---- inference ----------------------------------------------------------------------------
    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """Greedy decoding from a zero go-frame, feeding back the last of each step's r frames.

        Stops once more than T_text/4 steps are done and either sigmoid(stop) > stop_threshold
        or the attention on the last character exceeds its threshold (Coqui's rule); otherwise
        `max_decoder_steps` cuts it and the result says stopped=False.
        """
        with self.evaluating():
            config = self.config
            r = self.r
            text = text_ids.to(self.device, torch.long).reshape(1, -1)
            text_length = text.shape[1]
            memory = self.encode(text, None)
            text_mask = torch.ones_like(text, dtype=torch.bool)
            processed_memory = self.decoder.attention.memory_layer(memory)
            state = self.decoder.initial_state(memory)
            previous_frame = memory.new_zeros(1, self.n_mels)
            frames, weights = [], []
            stopped = False
            for step in range(1, config.max_decoder_steps + 1):
                step_frames, stop_logit, state = self.decoder.step(
                    state, self.decoder.prenet(previous_frame), memory, processed_memory, text_mask
                )
                step_frames = step_frames[:, : self.n_mels * r]
                frames.append(step_frames)
                weights.append(state.attention_weights[0])
                previous_frame = step_frames[:, -self.n_mels :]
                wants_stop = (
                    torch.sigmoid(stop_logit).item() > config.stop_threshold
                    or state.attention_weights[0, -1].item() > config.last_char_attention_threshold
                )
                if step > text_length / 4 and wants_stop:
                    stopped = True
                    break
            mel = torch.cat(frames, 0).reshape(-1, self.n_mels)
            linear = self.last_linear(self.postnet(mel[None]))[0]
            decoder_steps = len(frames)
            return Synthesis(
                mel=mel.float().cpu().numpy(),
                linear=linear.float().cpu().numpy(),
                audio_config=config.audio,
                alignment=torch.stack(weights, 1).float().cpu().numpy(),
                stopped=stopped,
                frames_per_step=r,
                info={
                    "decoder_steps": decoder_steps,
                    "r": r,
                    "hit_max_steps": not stopped,
                },
            )

    def alignment(self, batch: Batch) -> list[Alignment]:
        """Teacher-forced attention per utterance, [T_text, ceil(T/r)] (one column per decoder step),
        and the teacher-forced output.

        Durations count the steps whose argmax is each token, times r; the last step's r-group is
        partly padding, so its token gives that overshoot back and durations sum to the true T
        (`attention_durations`).
        """
        with self.evaluating():
            r = self.r
            memory = self.encode(batch.text_ids, batch.text_lengths)
            mel = self._pad_to_multiple_of_r(batch.mel)
            mel_out, _, attention = self.decode_teacher_forced(memory, batch.text_mask, mel)
            linear = self.last_linear(self.postnet(mel_out, batch.frame_lengths))
            attention = attention.float().cpu()
            alignments = []
            for index, utt_id in enumerate(batch.ids):
                text_length = int(batch.text_lengths[index])
                num_frames = int(batch.frame_lengths[index])
                steps = math.ceil(num_frames / r)
                soft = attention[index, :steps, :text_length].T.numpy()
                durations = attention_durations(soft, r, num_frames)
                forced = Synthesis(mel=mel_out[index, :num_frames].float().cpu().numpy(),
                                   linear=linear[index, :num_frames].float().cpu().numpy(),
                                   audio_config=self.config.audio, frames_per_step=r)
                alignments.append(Alignment(utt_id, soft=soft, durations=durations, frames_per_step=r,
                                            teacher_forced=forced))
            return alignments
