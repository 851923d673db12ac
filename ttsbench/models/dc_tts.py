"""DC-TTS (Tachibana et al. 2017, arXiv 1710.08969), after Kyubyong/dc_tts (K) and the paper.

Two fully convolutional networks, trained independently:

- Text2Mel maps characters to a coarse mel spectrogram at a quarter of the frame rate. TextEnc
  (non-causal) gives keys K and values V per character; AudioEnc (causal) turns the mel frames
  decoded so far into queries Q; dot-product attention A = softmax_n(KᵀQ/√d) reads R = VA; and
  AudioDec (causal) predicts the next frame from [R; Q]. A guided-attention loss (g = 0.2) pulls
  A towards the diagonal, which is what makes the system learn to align in a few thousand steps.
- SSRN (spectrogram super-resolution network, non-causal) upsamples the coarse mel 4x in time
  and maps it to the full linear spectrogram for Griffin-Lim. It trains on ground-truth mels.

Every layer is a 1-D convolution, most of them highway convolutions (HC): a conv gives 2d
channels split as [H1, H2], and the output is σ(H1)·H2 + (1 − σ(H1))·X. As in K, LayerNorm
follows every conv and dropout follows every layer. Causal convs are left-padded by (k − 1)·δ,
so the prediction for frame t never sees frames after t; at inference the same causal convs run
one frame at a time from a small cache of their past inputs, so decoding is linear in length.

Tensors inside are channel-major, [B, C, T], with float masks [B, 1, T]; the harness's
time-major batches are transposed on the way in and out. Features use DC-TTS's own front end
(n_fft 2048, hop 276, [0, 1] dB scaling), and the 4x reduced mel is `mel[:, ::4]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ttsbench.align.guided import guided_attention_loss
from ttsbench.audio import AudioConfig, linear_to_mel
from ttsbench.batches import Batch, sequence_mask
from ttsbench.models import register
from ttsbench.models.base import Alignment, ModelConfig, Synthesis, TTSModel
from ttsbench.models.layers import ChannelLayerNorm, attention_durations, channel_mask

# Per-call state of the causal convs while decoding frame by frame: each keeps its last
# (k − 1)·δ inputs here, keyed by the conv module itself.
StreamCache = dict[nn.Module, torch.Tensor]


def dc_tts_audio_config() -> AudioConfig:
    """K's front end (hyperparams.py / utils.py).

    n_fft 2048 (1025 bins), hop 276 (12.5 ms), window 1102 (50 ms), pre-emphasis 0.97,
    fmax = Nyquist, dB scaled into [0, 1] with max_db 100 and ref_db 20, Griffin-Lim on
    magnitude ** 1.5 for 50 iterations. Silence is trimmed at 60 dB below the peak, K's
    `librosa.effects.trim` default: the guided-attention prior assumes text position n/N and
    time t/T advance together, which leading and trailing silence would break. (librosa here
    frames the trim with the STFT's 1102/276 rather than K's 2048/512: a few ms of difference.)
    """
    return AudioConfig(
        n_fft=2048,
        hop_length=276,
        win_length=1102,
        fmax=None,
        scaling="db01",
        ref_db=20.0,
        max_db=100.0,
        preemphasis=0.97,
        trim_db=60.0,
        griffin_lim_iters=50,
        griffin_lim_power=1.5,
    )


@dataclass
class DCTTSConfig(ModelConfig):
    """DC-TTS hyperparameters; defaults are the paper's sizes with K's recipe (see `full`).

    The mel bands F come from `audio.n_mels` (80) and the SSRN output F′ from `audio.n_freq`.
    """

    audio: AudioConfig = field(default_factory=dc_tts_audio_config)
    embedding_dim: int = 128  # e
    hidden_dim: int = 256  # d: Text2Mel channels; keys, values and queries each have d
    ssrn_channels: int = 512  # c
    dropout: float = 0.05
    dilations: tuple[int, ...] = (1, 3, 9, 27)  # one stack of 3**j dilations (k = 3)
    reduction: int = 4  # Text2Mel frames are every 4th mel frame; SSRN upsamples 2 x 2
    guided_attention_g: float = 0.2
    guided_attention_weight: float = 1.0  # K: loss = L1 + BD + 1 x L_att
    max_reduced_frames: int = 210  # inference guard, in reduced frames (K's max_T: 210 x 4 = 10.5 s)
    # Forcibly incremental attention (inference only, paper section 4.2): a step whose attention
    # argmax moves by less than -back or more than +forward characters is forced to a one-hot at
    # previous + 1. The paper's window is [-1, 3]; attention_window_back = 0 never moves backwards.
    attention_window_back: int = 1
    attention_window_forward: int = 3
    # K has no stop rule (it always decodes max_T frames): stop once the attention argmax has
    # been on the last character (the EOS symbol) for this many consecutive reduced frames.
    stop_after_eos_frames: int = 2
    # SSRN trains on one random window of this many reduced frames (4x as many linear frames)
    # per utterance; None trains on whole utterances, as K and the paper do. Its convolutions are
    # non-causal with a short receptive field, so windows teach the same local mapping; tiny uses them because SSRN's three
    # F′ x F′ (1025 x 1025) layers at the full frame rate dominate a CPU step.
    ssrn_train_window: int | None = None
    # The two networks are trained independently (paper section 4; K trains them in two runs):
    # SSRN for this many steps, Text2Mel for the whole run; None trains SSRN for the whole run
    # too. Measured on the digits corpus, SSRN's quality, not Text2Mel's alignment, decides
    # when DC-TTS becomes intelligible, so both presets leave it at None.
    ssrn_steps: int | None = None
    # Data-dependent init (like Glow-TTS's ActNorm): before the first step, each network's output
    # bias is set to the logit of its target's mean per bin over the first batch, so training
    # starts from the mean spectrum instead of spending its first hundreds of steps finding it.
    # Off in `full` (K has no such init); on in `tiny`, whose budget is minutes.
    mean_output_init: bool = False

    @classmethod
    def full(cls) -> "DCTTSConfig":
        """Paper sizes e/d/c = 128/256/512 with K's recipe, the verified reference.

        K: Adam (default betas), lr 1e-3 with Noam warm-up 4000, gradients clipped by value to
        ±1 (no norm clipping), batch 32. The paper's Table 1 (Adam 2e-4, betas 0.5/0.9, batch
        16) is not verified against the paper, so K's is used.
        """
        return cls(
            batch_size=32,
            optimizer="adam",
            learning_rate=1e-3,
            lr_schedule="noam",
            warmup_steps=4000,
            grad_clip_norm=None,
            grad_clip_value=1.0,
        )

    @classmethod
    def tiny(cls) -> "DCTTSConfig":
        """Same code path scaled to train on 2 CPU cores: e/d/c = 32/64/128, dilations (1, 3).

        SSRN trains on random windows of 16 reduced frames (0.8 s; see `ssrn_train_window`),
        much cheaper per step than whole utterances; on the digits corpus halving the window
        from 32 halved SSRN's step time and did not slow DC-TTS's way to intelligible speech in
        steps (the commit gives the runs). An FFT of 1024
        points instead of 2048 halves F′, so SSRN's three F′ x F′ layers, most of a joint step,
        cost a quarter; what Whisper hears of the ground-truth spectra through Griffin-Lim is
        unchanged at that size. Both output biases start at the mean target (`mean_output_init`).
        The spec suggests max_T 100 for tiny; the guard here is 250 reduced frames (12.5 s)
        because the embedded corpus's validation clips are ~9.5 s (~190 reduced frames), and a
        guard below that would cut every validation synthesis short.
        """
        return cls(
            audio=dataclasses.replace(dc_tts_audio_config(), n_fft=1024, win_length=1024),
            mean_output_init=True,
            embedding_dim=32,
            hidden_dim=64,
            ssrn_channels=128,
            dilations=(1, 3),
            max_reduced_frames=250,
            ssrn_train_window=16,
            batch_size=8,
            optimizer="adam",
            learning_rate=1e-3,
            lr_schedule="constant",
            grad_clip_norm=None,
            grad_clip_value=1.0,
        )


# ---------------------------------------------------------------------------------------------
# Building blocks


class PaddedConv1d(nn.Conv1d):
    """Conv1d that keeps the length: centred padding, or causal left padding of (k − 1)·δ.

    A causal conv can also run on a chunk of new frames at a time: given a `cache`, it prepends
    the inputs it saw last call (zeros the first time, like the padding), so decoding frame by
    frame computes exactly what one pass over the whole sequence computes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, causal: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.causal = causal
        self.context = (kernel_size - 1) * dilation
        # K's variance-scaling (He) initialiser rather than PyTorch's smaller default.
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if not self.causal:
            left = self.context // 2
            return super().forward(F.pad(x, (left, self.context - left)))
        if cache is None:
            return super().forward(F.pad(x, (self.context, 0)))
        past = cache.get(self)
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([past, x], dim=-1)
        cache[self] = x[:, :, x.shape[-1] - self.context :]
        return super().forward(x)


class Conv(nn.Module):
    """C(k, δ): conv -> LayerNorm -> optional ReLU -> dropout (K's `conv1d`).

    `mask` zeroes padding before the conv so a padded batch computes what each utterance
    alone would (matters for the non-causal TextEnc and SSRN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        causal: bool = False,
        relu: bool = False,
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.conv = PaddedConv1d(in_channels, out_channels, kernel_size, dilation, causal)
        self.norm = ChannelLayerNorm(out_channels, eps=1e-5) if layer_norm else nn.Identity()
        self.relu = relu
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: StreamCache | None = None) -> torch.Tensor:
        if mask is not None:
            x = x * mask
        h = self.norm(self.conv(x, cache))
        return self.dropout(F.relu(h) if self.relu else h)


def output_projection(in_channels: int, out_channels: int) -> Conv:
    """The last 1x1 conv before the sigmoid, without LayerNorm or dropout.

    Deviation from K (and TU), which normalise and drop out the output logits too: LayerNorm
    across the output bins fixes every frame's mean logit, so a silent frame and a loud frame of
    the same shape could not differ in level; the paper's final layer is a plain conv.
    """
    return Conv(in_channels, out_channels, layer_norm=False)


class HighwayConv(nn.Module):
    """HC(k, δ): conv to 2d channels, split [H1, H2], out = σ(H1)·H2 + (1 − σ(H1))·X.

    As K: LayerNorm on H1 and H2 separately, dropout on the output.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool, dropout: float):
        super().__init__()
        self.channels = channels
        self.conv = PaddedConv1d(channels, 2 * channels, kernel_size, dilation, causal)
        self.gate_norm = ChannelLayerNorm(channels, eps=1e-5)
        self.value_norm = ChannelLayerNorm(channels, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: StreamCache | None = None) -> torch.Tensor:
        h = self.conv(x if mask is None else x * mask, cache)
        gate = torch.sigmoid(self.gate_norm(h[:, : self.channels]))
        value = self.value_norm(h[:, self.channels :])
        return self.dropout(gate * value + (1.0 - gate) * x)


class Upsample2x(nn.Module):
    """Transposed conv doubling the frame rate -> LayerNorm -> dropout (K's `conv1d_transpose`).

    Kernel 3 as K (the paper uses 2), stride 2. Padding 1 + output padding 1 give exactly 2T
    frames, with output frame 2i centred on input frame i, matching `mel[::2]`.
    """

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.deconv = nn.ConvTranspose1d(channels, channels, 3, stride=2, padding=1, output_padding=1)
        nn.init.kaiming_normal_(self.deconv.weight, nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        self.norm = ChannelLayerNorm(channels, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.dropout(self.norm(self.deconv(x if mask is None else x * mask)))


class LayerStack(nn.ModuleList):
    """Conv / HighwayConv layers applied in order, each given the mask and the stream cache."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: StreamCache | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, mask, cache)
        return x


def highway_layers(
    channels: int, dilations: tuple[int, ...], causal: bool, dropout: float, kernel_size: int = 3
) -> list[nn.Module]:
    """HC(kernel_size, δ) for each δ in `dilations`, in order."""
    return [HighwayConv(channels, kernel_size, delta, causal, dropout) for delta in dilations]


# ---------------------------------------------------------------------------------------------
# Text2Mel


class TextEncoder(nn.Module):
    """TextEnc (non-causal): Embed(e) -> C(2d) ReLU -> C(2d) -> 2 x HC(3; dilations) ->
    2 x HC(3, 1) -> 2 x HC(1, 1) -> split into keys K and values V, d channels each."""

    def __init__(self, num_symbols: int, config: DCTTSConfig):
        super().__init__()
        e, d, p = config.embedding_dim, config.hidden_dim, config.dropout
        self.embedding = nn.Embedding(num_symbols, e, padding_idx=0)
        nn.init.normal_(self.embedding.weight, 0.0, 0.1)  # K: truncated normal, stddev 0.1
        with torch.no_grad():
            self.embedding.weight[0].zero_()  # K zero-pads the padding symbol's row too
        self.layers = LayerStack(
            [
                Conv(e, 2 * d, relu=True, dropout=p),
                Conv(2 * d, 2 * d, dropout=p),
                *highway_layers(2 * d, config.dilations * 2, causal=False, dropout=p),
                *highway_layers(2 * d, (1, 1), causal=False, dropout=p),
                *highway_layers(2 * d, (1, 1), causal=False, dropout=p, kernel_size=1),
            ]
        )
        self.hidden_dim = d

    def forward(self, text_ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, N], mask [B, 1, N] or None -> keys, values [B, d, N]."""
        hidden = self.layers(self.embedding(text_ids).transpose(1, 2), mask)
        return hidden[:, : self.hidden_dim], hidden[:, self.hidden_dim :]


class AudioEncoder(LayerStack):
    """AudioEnc (causal): C(d) ReLU -> C(d) ReLU -> C(d) -> 2 x HC(3; dilations) -> 2 x HC(3, 3)."""

    def __init__(self, config: DCTTSConfig):
        d, p = config.hidden_dim, config.dropout
        super().__init__(
            [
                Conv(config.audio.n_mels, d, causal=True, relu=True, dropout=p),
                Conv(d, d, causal=True, relu=True, dropout=p),
                Conv(d, d, causal=True, dropout=p),
                *highway_layers(d, config.dilations * 2, causal=True, dropout=p),
                *highway_layers(d, (3, 3), causal=True, dropout=p),
            ]
        )


class AudioDecoder(LayerStack):
    """AudioDec (causal): C(d) on [R; Q] -> HC(3; dilations) -> 2 x HC(3, 1) -> 3 x C(d) ReLU ->
    C(F) logits (the sigmoid is applied by the caller, so the loss can take logits)."""

    def __init__(self, config: DCTTSConfig):
        d, p = config.hidden_dim, config.dropout
        super().__init__(
            [
                Conv(2 * d, d, causal=True, dropout=p),
                *highway_layers(d, config.dilations, causal=True, dropout=p),
                *highway_layers(d, (1, 1), causal=True, dropout=p),
                *(Conv(d, d, causal=True, relu=True, dropout=p) for _ in range(3)),
                output_projection(d, config.audio.n_mels),
            ]
        )


class Text2Mel(nn.Module):
    """Text -> coarse mel logits, one reduced frame per step, with dot-product attention."""

    def __init__(self, num_symbols: int, config: DCTTSConfig):
        super().__init__()
        self.text_encoder = TextEncoder(num_symbols, config)
        self.audio_encoder = AudioEncoder(config)
        self.audio_decoder = AudioDecoder(config)
        self.scale = 1.0 / math.sqrt(config.hidden_dim)

    def attention_scores(self, keys: torch.Tensor, queries: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """A = softmax over characters of KᵀQ/√d: keys [B, d, N], queries [B, d, T] -> [B, N, T].

        Padding characters get no weight (K leaves them in; masking makes a padded batch
        attend as each utterance alone would).
        """
        logits = keys.transpose(1, 2) @ queries * self.scale
        if text_mask is not None:
            logits = logits.masked_fill(~text_mask[:, :, None], float("-inf"))
        return torch.softmax(logits, dim=1)

    def decode(
        self, queries: torch.Tensor, values: torch.Tensor, attention: torch.Tensor, cache: StreamCache | None = None
    ) -> torch.Tensor:
        """R = VA, then AudioDec on [R; Q] -> mel logits [B, F, T]."""
        return self.audio_decoder(torch.cat([values @ attention, queries], dim=1), None, cache)

    def forward(
        self, text_ids: torch.Tensor, text_lengths: torch.Tensor | None, previous_frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass. `previous_frames` [B, F, T] is the decoder input S: frame t holds
        the reduced mel frame t − 1 (zeros at t = 0). Returns logits [B, F, T], attention [B, N, T]."""
        text_mask = None if text_lengths is None else sequence_mask(text_lengths, text_ids.shape[1])
        weight_dtype = self.text_encoder.embedding.weight.dtype
        keys, values = self.text_encoder(text_ids, None if text_mask is None else text_mask[:, None].to(weight_dtype))
        queries = self.audio_encoder(previous_frames)
        attention = self.attention_scores(keys, queries, text_mask)
        return self.decode(queries, values, attention), attention


# ---------------------------------------------------------------------------------------------
# SSRN


class SSRN(nn.Module):
    """Spectrogram super-resolution network (non-causal): coarse mel [B, F, T/4] -> linear
    logits [B, F′, T].

    C(c) -> HC(3, 1), HC(3, 3) -> 2 x [up x2 -> HC(3, 1), HC(3, 3)] -> C(2c) -> 2 x HC(3, 1) ->
    C(F′) -> 2 x C(F′) ReLU -> C(F′) logits. Its dilations are fixed (1, 3) at every size.
    """

    def __init__(self, config: DCTTSConfig):
        super().__init__()
        c, p, n_freq = config.ssrn_channels, config.dropout, config.audio.n_freq
        self.layers = nn.ModuleList(
            [
                Conv(config.audio.n_mels, c, dropout=p),
                *highway_layers(c, (1, 3), causal=False, dropout=p),
                Upsample2x(c, p),
                *highway_layers(c, (1, 3), causal=False, dropout=p),
                Upsample2x(c, p),
                *highway_layers(c, (1, 3), causal=False, dropout=p),
                Conv(c, 2 * c, dropout=p),
                *highway_layers(2 * c, (1, 1), causal=False, dropout=p),
                Conv(2 * c, n_freq, dropout=p),
                Conv(n_freq, n_freq, relu=True, dropout=p),
                Conv(n_freq, n_freq, relu=True, dropout=p),
                output_projection(n_freq, n_freq),
            ]
        )

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, F, T_r] with true reduced lengths (None: no padding) -> logits [B, F′, 4 T_r]."""
        mask = None if lengths is None else channel_mask(lengths, mel.shape[-1], mel.dtype)
        x = mel
        for layer in self.layers:
            if isinstance(layer, Upsample2x):
                x = layer(x, mask)
                mask = None if mask is None else mask.repeat_interleave(2, dim=-1)
            else:
                x = layer(x, mask)
        return x


# ---------------------------------------------------------------------------------------------
# The system


@register("dc-tts")
class DCTTS(TTSModel):
    """DC-TTS: Text2Mel and SSRN of highway (causal) convolutions, guided attention, trained as two networks.

    Text2Mel predicts a 4x time-reduced mel with causal convolutions and dot-product attention
    under a guided-attention loss (g = 0.2); SSRN upsamples a coarse mel to the full linear
    spectrogram. Each has its own optimizer and its own loss; SSRN learns from ground-truth mels.
    """

    Config = DCTTSConfig
    feature_kinds = ("mel", "linear")
    networks = ("text2mel", "ssrn")
    config: DCTTSConfig

    def __init__(self, config: DCTTSConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        if config.reduction != 4:
            raise ValueError(f"DC-TTS's SSRN upsamples 2 x 2, so reduction must be 4, got {config.reduction}")
        if config.audio.scaling != "db01":
            raise ValueError("DC-TTS predicts sigmoid outputs, so its features must use scaling='db01' ([0, 1])")
        self.reduction = config.reduction
        self.text2mel = Text2Mel(num_symbols, config)
        self.ssrn = SSRN(config)

    def frame_multiple(self) -> int:
        return self.reduction

    def network_parameters(self, network: str) -> list[nn.Parameter]:
        return list(self._network(network).parameters())

    def network_steps(self) -> dict[str, int]:
        return {} if self.config.ssrn_steps is None else {"ssrn": self.config.ssrn_steps}

    def _network(self, network: str) -> nn.Module:
        if network not in self.networks:
            raise ValueError(f"DC-TTS trains the networks {self.networks} separately; got {network!r}")
        return getattr(self, network)

    # ---- features -----------------------------------------------------------------------------
    def reduce(self, mel: torch.Tensor) -> torch.Tensor:
        """Time-major mel [B, T, F] -> reduced channel-major [B, F, ceil(T/4)] (K's `mel[::4]`)."""
        return mel[:, :: self.reduction].transpose(1, 2)

    def reduced_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Reduced frames that start inside each utterance: ceil(T_b / 4)."""
        return torch.div(frame_lengths + self.reduction - 1, self.reduction, rounding_mode="floor")

    @staticmethod
    def decoder_input(reduced_mel: torch.Tensor) -> torch.Tensor:
        """S: the reduced mel shifted right by one frame, zeros first, so step t sees frames < t."""
        return F.pad(reduced_mel, (1, 0))[:, :, :-1]

    def _pad_frames(self, features: torch.Tensor) -> torch.Tensor:
        """Pad the frame axis to a multiple of 4 with silence (batches collated for another multiple)."""
        extra = -features.shape[1] % self.reduction
        if extra == 0:
            return features
        return F.pad(features, (0, 0, 0, extra), value=self.config.audio.silence_value)

    # ---- training -----------------------------------------------------------------------------
    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """`mean_output_init`: both output biases at the logit of the first batch's mean target."""
        if not self.config.mean_output_init or not batches:
            return
        batch = batches[0]
        mel = self.reduce(self._pad_frames(batch.mel))  # [B, F, T_r]
        linear = self._pad_frames(batch.features["linear"]).transpose(1, 2)  # [B, F′, T]
        reduced_mask = channel_mask(self.reduced_lengths(batch.frame_lengths), mel.shape[-1], mel.dtype)
        frame_mask = channel_mask(batch.frame_lengths, linear.shape[-1], linear.dtype)
        with torch.no_grad():
            for layer, target, mask in ((self.text2mel.audio_decoder[-1], mel, reduced_mask),
                                        (self.ssrn.layers[-1], linear, frame_mask)):
                mean = (target * mask).sum(dim=(0, 2)) / mask.sum()
                layer.conv.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))

    def training_step(self, batch: Batch, step: int, network: str = "model") -> dict[str, torch.Tensor]:
        """Losses of one network: "text2mel" (L1 + BD + guided attention) or "ssrn" (L1 + BD)."""
        self._network(network)
        if network == "text2mel":
            return self._text2mel_losses(batch)
        return self._ssrn_losses(batch)

    def _text2mel_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        target = self.reduce(self._pad_frames(batch.mel))
        lengths = self.reduced_lengths(batch.frame_lengths)
        logits, attention = self.text2mel(batch.text_ids, batch.text_lengths, self.decoder_input(target))
        l1, bd = spectral_losses(logits, target, channel_mask(lengths, target.shape[-1], target.dtype))
        att = self.attention_loss(attention, batch.text_lengths, lengths)
        return {"loss": l1 + bd + self.config.guided_attention_weight * att, "l1": l1, "bd": bd, "att": att}

    def _ssrn_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        mel = self.reduce(self._pad_frames(batch.mel))
        target = self._pad_frames(batch.features["linear"]).transpose(1, 2)
        reduced_lengths, frame_lengths = self.reduced_lengths(batch.frame_lengths), batch.frame_lengths
        window = self.config.ssrn_train_window
        if window is not None and window < mel.shape[-1]:
            mel, target, reduced_lengths, frame_lengths = self._random_windows(
                mel, target, reduced_lengths, frame_lengths, window
            )
        logits = self.ssrn(mel, reduced_lengths)
        l1, bd = spectral_losses(logits, target, channel_mask(frame_lengths, target.shape[-1], target.dtype))
        return {"loss": l1 + bd, "l1": l1, "bd": bd}

    def _random_windows(
        self,
        mel: torch.Tensor,
        linear: torch.Tensor,
        reduced_lengths: torch.Tensor,
        frame_lengths: torch.Tensor,
        window: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One window of `window` reduced frames (and the 4x linear frames under it) per utterance.

        Starts are uniform over the positions that keep the window inside the utterance (0 for
        a shorter one, whose window then ends in masked padding). Returns the windows and their
        valid reduced and full lengths.
        """
        r, device = self.reduction, mel.device
        room = (reduced_lengths - window).clamp(min=0) + 1
        starts = (torch.rand(mel.shape[0], device=device) * room).long()
        reduced_index = starts[:, None] + torch.arange(window, device=device)
        frame_index = r * starts[:, None] + torch.arange(r * window, device=device)
        mel = mel.gather(2, reduced_index[:, None, :].expand(-1, mel.shape[1], -1))
        linear = linear.gather(2, frame_index[:, None, :].expand(-1, linear.shape[1], -1))
        return mel, linear, (reduced_lengths - starts).clamp(max=window), (frame_lengths - r * starts).clamp(max=r * window)

    def attention_loss(self, attention: torch.Tensor, text_lengths: torch.Tensor, reduced_lengths: torch.Tensor) -> torch.Tensor:
        """Guided attention: mean of A ⊙ W over each utterance's own N x T_r cells.

        Deviation from K, which builds W once on a fixed 180 x 210 grid: here N and T are each
        utterance's lengths, so every utterance's penalty follows its own diagonal.
        """
        return guided_attention_loss(attention, text_lengths, reduced_lengths, self.config.guided_attention_g)

    # ---- inference ----------------------------------------------------------------------------
    def infer(self, text_ids: torch.Tensor) -> Synthesis:
        """Autoregressive Text2Mel over reduced frames, then SSRN to the linear spectrogram.

        Each step feeds only the newest frame through AudioEnc and AudioDec; their causal convs
        keep their past inputs in a cache, so this equals recomputing the prefix (K, TU) at a
        cost linear in length. Attention is forcibly incremental (see the config). Decoding stops
        after `stop_after_eos_frames` frames on the last character; `max_reduced_frames` is a
        guard that, when it cuts decoding, leaves stopped=False and info["hit_max_frames"].

        `Synthesis.mel` is the coarse mel Text2Mel predicts, [T_r, F] at a quarter of the frame
        rate (frames_per_step = 4 says so); the linear spectrogram has the full 4 T_r frames.
        """
        with self.evaluating():
            config = self.config
            text = text_ids.to(self.device, torch.long).reshape(1, -1)
            last_token = text.shape[1] - 1
            keys, values = self.text2mel.text_encoder(text)
            cache: StreamCache = {}
            frame = keys.new_zeros(1, config.audio.n_mels, 1)
            previous = -1  # "before the first character": the first step may attend to 0 .. forward - 1
            frames, columns = [], []
            forced_steps, frames_on_last_token = 0, 0
            stopped = False
            for _ in range(config.max_reduced_frames):
                queries = self.text2mel.audio_encoder(frame, None, cache)
                attention = self.text2mel.attention_scores(keys, queries, None)
                position = int(attention[0, :, 0].argmax())
                if not -config.attention_window_back <= position - previous <= config.attention_window_forward:
                    position = min(previous + 1, last_token)
                    attention = F.one_hot(torch.tensor([position], device=keys.device), text.shape[1])
                    attention = attention.to(keys.dtype).reshape(1, -1, 1)
                    forced_steps += 1
                previous = position
                frame = torch.sigmoid(self.text2mel.decode(queries, values, attention, cache))
                frames.append(frame)
                columns.append(attention[0, :, 0])
                frames_on_last_token = frames_on_last_token + 1 if position == last_token else 0
                if frames_on_last_token >= config.stop_after_eos_frames:
                    stopped = True
                    break
            coarse_mel = torch.cat(frames, dim=-1)  # [1, F, T_r]
            linear = torch.sigmoid(self.ssrn(coarse_mel))  # [1, F′, 4 T_r]
            return Synthesis(
                # Full rate, as every system reports it: the mel SSRN's linear output implies
                # (what the vocoder hears). Text2Mel's coarse mel is kept in info.
                mel=linear_to_mel(linear[0].T.float().cpu().numpy(), config.audio),
                audio_config=config.audio,
                linear=linear[0].T.float().cpu().numpy(),
                linear_audio_config=config.audio,
                alignment=torch.stack(columns, dim=1).float().cpu().numpy(),
                stopped=stopped,
                frames_per_step=self.reduction,
                info={
                    "reduced_frames": len(frames),
                    "coarse_mel": coarse_mel[0].T.float().cpu().numpy(),
                    "frames": linear.shape[-1],
                    "forced_steps": forced_steps,
                    "hit_max_frames": not stopped,
                },
            )

    def alignment(self, batch: Batch) -> list[Alignment]:
        """Teacher-forced attention per utterance, [N_b, ceil(T_b/4)] (no forcing: that is inference
        only), and the teacher-forced Text2Mel output through SSRN.

        Durations count the reduced frames whose argmax is each character, times 4; the last
        reduced frame is partly past the utterance's end, so its character gives the overshoot
        back and durations sum to T_b (`attention_durations`).
        """
        with self.evaluating():
            target = self.reduce(self._pad_frames(batch.mel))
            logits, attention = self.text2mel(batch.text_ids, batch.text_lengths, self.decoder_input(target))
            linear = torch.sigmoid(self.ssrn(torch.sigmoid(logits)))  # [B, F', 4 T_r]
            attention = attention.float().cpu()
            alignments = []
            for index, utt_id in enumerate(batch.ids):
                text_length = int(batch.text_lengths[index])
                num_frames = int(batch.frame_lengths[index])
                steps = math.ceil(num_frames / self.reduction)
                soft = attention[index, :text_length, :steps].numpy()
                durations = attention_durations(soft, self.reduction, num_frames)
                alignments.append(Alignment(utt_id, soft=soft, durations=durations, frames_per_step=self.reduction,
                                            teacher_forced=self._synthesis(linear[index, :, :num_frames])))
            return alignments

    def _synthesis(self, linear: torch.Tensor) -> Synthesis:
        """A Synthesis from SSRN's linear output [F', T] of one utterance (mel derived from it)."""
        spectrum = linear.T.float().cpu().numpy()
        config = self.config.audio
        return Synthesis(mel=linear_to_mel(spectrum, config), audio_config=config, linear=spectrum,
                         linear_audio_config=config, frames_per_step=self.reduction)


def spectral_losses(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 on sigmoid outputs and binary divergence (BCE with logits) on targets in [0, 1].

    logits, target [B, C, T]; mask [B, 1, T]. Both are means over valid frames and all bins.
    """
    cells = mask.sum() * logits.shape[1]
    l1 = ((torch.sigmoid(logits) - target).abs() * mask).sum() / cells
    bd = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask).sum() / cells
    return l1, bd
