"""coqui-tts 0.28.0's Glow-TTS, Tacotron and FastSpeech2 (ForwardTTS) as ttsbench systems.

Sizes follow ttsbench's tiny presets where coqui's config exposes them; the optimiser is the
class, betas, weight decay and clipping of coqui's config, with the learning rate and warm-up of
ttsbench's tiny preset (coqui's 4,000-step Noam warm-up would not end inside a CPU budget).
Where coqui's code fixes a size (Tacotron's widths), the config says so. `full()` is coqui's
config unchanged, with its own optimiser recipe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ttsbench.audio import AudioConfig
from ttsbench.batches import Batch
from ttsbench.models import Alignment, ModelConfig, Synthesis
from ttsbench.schedule import PiecewiseConstant, Schedule

from ttsbench_coqui.wrapper import CoquiSystem, hard_durations


def audio_args(audio: AudioConfig) -> dict[str, Any]:
    """coqui's BaseAudioConfig for ttsbench's front end (its AudioProcessor serves only logs)."""
    from TTS.tts.configs.shared_configs import BaseAudioConfig

    fmax = audio.fmax if audio.fmax is not None else audio.sample_rate / 2
    return {"audio": BaseAudioConfig(sample_rate=audio.sample_rate, num_mels=audio.n_mels, fft_size=audio.n_fft,
                                     hop_length=audio.hop_length, win_length=audio.win_length,
                                     mel_fmin=audio.fmin, mel_fmax=fmax),
            "use_phonemes": False, "run_eval": False, "test_sentences": []}


@dataclass
class CoquiRecipe(ModelConfig):
    """The optimiser recipe coqui's three configs share (RAdam, betas (0.9, 0.998), weight decay
    1e-6, gradient-norm clip 5, Noam warm-up 4,000, batch 32); each model sets its learning rate."""

    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "radam"] = "radam"
    lr_schedule: Literal["constant", "noam", "exponential"] = "noam"
    warmup_steps: int = 4000
    betas: tuple[float, float] = (0.9, 0.998)
    weight_decay: float = 1e-6
    grad_clip_norm: float | None = 5.0


# ---------------------------------------------------------------------------------------------
# Glow-TTS


@dataclass
class CoquiGlowTTSConfig(CoquiRecipe):
    """coqui's GlowTTSConfig fields that size the model; defaults are coqui's."""

    hidden_channels: int = 192  # hidden_channels_enc and _dec
    duration_channels: int = 256  # hidden_channels_dp
    encoder_layers: int = 6
    encoder_ffn_channels: int = 768
    use_encoder_prenet: bool = True
    flow_blocks: int = 12  # num_flow_blocks_dec
    coupling_layers: int = 4  # num_block_layers
    coupling_kernel_size: int = 5  # kernel_size_dec
    data_dep_init_steps: int = 10
    # std of the prior sample at inference: coqui's default 0 decodes the prior mean, the official
    # Glow-TTS (and ttsbench's glow-tts) samples with 0.667
    inference_noise_scale: float = 0.0
    max_inference_frames: int = 2000  # ttsbench's guard: coqui's inference has none

    @classmethod
    def full(cls) -> "CoquiGlowTTSConfig":
        """coqui's config and recipe (lr 1e-3)."""
        return cls()

    @classmethod
    def tiny(cls) -> "CoquiGlowTTSConfig":
        """ttsbench glow-tts tiny's sizes (64 channels, 2 encoder layers, 4 flow blocks of 2
        layers, kernel 3, no prenet), batch 8 and warm-up 200."""
        return cls(hidden_channels=64, duration_channels=64, encoder_layers=2, encoder_ffn_channels=256,
                   use_encoder_prenet=False, flow_blocks=4, coupling_layers=2, coupling_kernel_size=3,
                   batch_size=8, warmup_steps=200)


class CoquiGlowTTS(CoquiSystem):
    """coqui-tts's Glow-TTS (MAS, flow decoder) behind ttsbench's interface."""

    Config = CoquiGlowTTSConfig
    config: CoquiGlowTTSConfig

    def __init__(self, config: CoquiGlowTTSConfig, num_symbols: int):
        super().__init__(config, num_symbols)
        self.register_buffer("initialised", torch.tensor(False))  # a resumed run keeps its DDI

    def build_coqui(self, config: ModelConfig) -> nn.Module:
        from TTS.tts.configs.glow_tts_config import GlowTTSConfig
        from TTS.tts.models.glow_tts import GlowTTS

        assert isinstance(config, CoquiGlowTTSConfig)
        encoder = {"kernel_size": 3, "dropout_p": 0.1, "num_layers": config.encoder_layers, "num_heads": 2,
                   "hidden_channels_ffn": config.encoder_ffn_channels, "input_length": None}
        model = GlowTTS(GlowTTSConfig(
            **audio_args(config.audio), out_channels=config.audio.n_mels, hidden_channels_enc=config.hidden_channels,
            hidden_channels_dec=config.hidden_channels, hidden_channels_dp=config.duration_channels,
            encoder_params=encoder, use_encoder_prenet=config.use_encoder_prenet,
            num_flow_blocks_dec=config.flow_blocks, num_block_layers=config.coupling_layers,
            kernel_size_dec=config.coupling_kernel_size, data_dep_init_steps=config.data_dep_init_steps,
            inference_noise_scale=config.inference_noise_scale))
        model.run_data_dep_init = False
        return model

    def warmup_batches_needed(self) -> int:
        return self.config.data_dep_init_steps

    @torch.no_grad()
    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """coqui's data-dependent ActNorm initialisation, over its `data_dep_init_steps` batches
        (coqui spends its first training steps on them without an update; so does nothing here)."""
        if bool(self.initialised):
            return
        for batch in batches:
            self.coqui.run_data_dep_init = True
            self.coqui.train_step(self.coqui_batch(batch), self.criterion)
        self.coqui.run_data_dep_init = False
        self.initialised.fill_(True)

    def synthesis(self, outputs: dict[str, Any]) -> Synthesis:
        mel, path = outputs["model_outputs"][0], outputs["alignments"][0]  # [T, n_mels], [T, L]
        limit = self.config.max_inference_frames
        return Synthesis(mel=mel[:limit].float().cpu().numpy(), audio_config=self.config.audio,
                         durations=hard_durations(path[:limit]), stopped=mel.shape[0] <= limit)

    def utterance_alignment(self, utt_id: str, outputs: dict[str, Any], b: int, tokens: int,
                            frames: int) -> Alignment:
        path = outputs["alignments"][b, :frames, :tokens]  # [T, L]: MAS, cropped to a multiple of 2
        return Alignment(utt_id, durations=hard_durations(path))


# ---------------------------------------------------------------------------------------------
# Tacotron


@dataclass
class CoquiTacotronConfig(CoquiRecipe):
    """coqui's TacotronConfig fields that can be set. Its widths are fixed in coqui's code
    (embedding 256, CBHG encoder and postnet, 256-unit decoder RNNs), so no field sizes them."""

    gradual_training: tuple[tuple[int, int, int], ...] = ((0, 7, 32), (10000, 5, 32), (50000, 3, 32),
                                                          (130000, 2, 16), (290000, 1, 8))
    max_decoder_steps: int = 10000
    attention_type: str = "original"
    location_attn: bool = True
    ga_alpha: float = 5.0
    learning_rate: float = 1e-4

    @classmethod
    def full(cls) -> "CoquiTacotronConfig":
        """coqui's config and recipe."""
        return cls()

    @classmethod
    def tiny(cls) -> "CoquiTacotronConfig":
        """coqui's full widths (they cannot be set), ttsbench tiny's r schedule 7 -> 5 -> 3 -> 2
        at batch 8 and its constant lr 2e-3."""
        return cls(gradual_training=((0, 7, 8), (1500, 5, 8), (3000, 3, 8), (6000, 2, 8)), batch_size=8,
                   learning_rate=2e-3, lr_schedule="constant", warmup_steps=0)


class CoquiTacotron(CoquiSystem):
    """coqui-tts's Tacotron (v1: CBHG encoder, location attention, linear-spectrogram postnet)."""

    Config = CoquiTacotronConfig
    config: CoquiTacotronConfig
    feature_kinds = ("mel", "linear")

    def build_coqui(self, config: ModelConfig) -> nn.Module:
        from TTS.tts.configs.tacotron_config import TacotronConfig
        from TTS.tts.models.tacotron import Tacotron

        assert isinstance(config, CoquiTacotronConfig)
        rows = [list(row) for row in config.gradual_training]
        return Tacotron(TacotronConfig(
            **audio_args(config.audio), out_channels=config.audio.n_fft // 2 + 1, r=rows[0][1],
            gradual_training=rows, max_decoder_steps=config.max_decoder_steps, attention_type=config.attention_type,
            location_attn=config.location_attn, ga_alpha=config.ga_alpha))

    def schedules(self) -> dict[str, Schedule]:
        """coqui's gradual training (its `on_epoch_start` callback), applied per step."""
        rows = self.config.gradual_training
        return {"r": PiecewiseConstant.from_rows(rows, 1), "batch_size": PiecewiseConstant.from_rows(rows, 2)}

    def apply_schedules(self, values: Mapping[str, float]) -> None:
        if "r" in values:
            self.set_r(int(values["r"]))

    def set_r(self, r: int) -> None:
        self.coqui.decoder.set_r(r)
        self.coqui.config.r = r

    def frame_multiple(self) -> int:
        return int(self.coqui.decoder.r)

    def get_extra_state(self) -> dict[str, Any]:
        return {"r": self.frame_multiple()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_r(int(state["r"]))

    def extra_inputs(self, batch: Batch) -> dict[str, Any]:
        """Linear targets and coqui's stop targets: 1 from each utterance's last frame on, one
        per decoder step (any of its r frames), as coqui's dataset and `format_batch` make them."""
        r = self.frame_multiple()
        return {"linear_input": batch.features["linear"],
                "stop_targets": stop_targets(batch.frame_lengths, batch.mel.shape[1], r),
                "stop_target_lengths": torch.ceil(batch.frame_lengths / r)}

    def inference_inputs(self, x: torch.Tensor) -> dict[str, Any]:
        return {"d_vectors": None, "speaker_ids": None}

    def synthesis(self, outputs: dict[str, Any]) -> Synthesis:
        mel, linear, attention = outputs["decoder_outputs"][0], outputs["model_outputs"][0], outputs["alignments"][0]
        steps = attention.shape[0]
        return Synthesis(mel=mel.float().cpu().numpy(), linear=linear.float().cpu().numpy(),
                         audio_config=self.config.audio, alignment=attention.T.float().cpu().numpy(),
                         stopped=steps < self.config.max_decoder_steps, frames_per_step=self.frame_multiple(),
                         info={"decoder_steps": steps, "r": self.frame_multiple()})

    def utterance_alignment(self, utt_id: str, outputs: dict[str, Any], b: int, tokens: int,
                            frames: int) -> Alignment:
        r = self.frame_multiple()
        soft = outputs["alignments"][b, : math.ceil(frames / r), :tokens].T  # [L, steps]
        return Alignment(utt_id, soft=soft.float().cpu().numpy(), frames_per_step=r)


def stop_targets(frame_lengths: torch.Tensor, frames: int, r: int) -> torch.Tensor:
    """[B, frames / r]: 1 for each decoder step holding or following an utterance's last frame."""
    stop = torch.arange(frames, device=frame_lengths.device)[None] >= frame_lengths[:, None] - 1
    return (stop.view(len(frame_lengths), frames // r, r).sum(2) > 0).float()


# ---------------------------------------------------------------------------------------------
# FastSpeech2 (coqui's ForwardTTS with pitch, energy and its aligner)


@dataclass
class CoquiFastSpeech2Config(CoquiRecipe):
    """coqui's Fastspeech2Config / ForwardTTSArgs fields that size the model; coqui's defaults."""

    hidden_channels: int = 384
    ffn_channels: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    predictor_channels: int = 256  # duration, pitch and energy predictors
    # coqui ramps the aligner's binary loss over epochs; ttsbench's trainer counts steps
    binary_loss_warmup_steps: int = 10000
    max_inference_frames: int = 2000  # ttsbench's guard on the predicted length
    optimizer: Literal["adam", "adamw", "radam"] = "adam"
    learning_rate: float = 1e-4

    @classmethod
    def full(cls) -> "CoquiFastSpeech2Config":
        """coqui's config and recipe (Adam, lr 1e-4)."""
        return cls()

    @classmethod
    def tiny(cls) -> "CoquiFastSpeech2Config":
        """ttsbench fastspeech2 tiny's sizes (hidden 64, 1+1 layers, FFN 128, predictors 64),
        batch 8, its constant lr 1e-3 and binary-loss ramp of 300 steps."""
        return cls(hidden_channels=64, ffn_channels=128, encoder_layers=1, decoder_layers=1, predictor_channels=64,
                   binary_loss_warmup_steps=300, batch_size=8, learning_rate=1e-3, lr_schedule="constant",
                   warmup_steps=0)


class CoquiFastSpeech2(CoquiSystem):
    """coqui-tts's FastSpeech2: ForwardTTS with pitch and energy, durations from its aligner."""

    Config = CoquiFastSpeech2Config
    config: CoquiFastSpeech2Config
    feature_kinds = ("mel", "pitch", "energy")

    def __init__(self, config: CoquiFastSpeech2Config, num_symbols: int):
        super().__init__(config, num_symbols)
        # coqui's dataset normalises pitch and energy by their mean and std (zeros stay zero)
        self.register_buffer("pitch_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("energy_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("stats_ready", torch.tensor(False))

    def build_coqui(self, config: ModelConfig) -> nn.Module:
        from TTS.tts.configs.fastspeech2_config import Fastspeech2Config
        from TTS.tts.configs.forward_tts_config import ForwardTTSArgs
        from TTS.tts.models.forward_tts import ForwardTTS

        assert isinstance(config, CoquiFastSpeech2Config)
        stack = {"hidden_channels_ffn": config.ffn_channels, "num_heads": 1, "dropout_p": 0.1}
        args = ForwardTTSArgs(
            out_channels=config.audio.n_mels, hidden_channels=config.hidden_channels, use_pitch=True, use_energy=True,
            use_aligner=True, pitch_predictor_hidden_channels=config.predictor_channels,
            energy_predictor_hidden_channels=config.predictor_channels,
            duration_predictor_hidden_channels=config.predictor_channels,
            encoder_params={**stack, "num_layers": config.encoder_layers},
            decoder_params={**stack, "num_layers": config.decoder_layers})
        return ForwardTTS(Fastspeech2Config(**audio_args(config.audio), model_args=args, compute_f0=False,
                                            compute_energy=False))

    def warmup_batches_needed(self) -> int:
        return 8

    @torch.no_grad()
    def on_train_start(self, batches: Sequence[Batch]) -> None:
        """Pitch and energy means and stds over the warm-up batches' nonzero frames (coqui's
        dataset takes them over the whole training set before training)."""
        if bool(self.stats_ready):
            return
        for kind, stats in (("pitch", self.pitch_stats), ("energy", self.energy_stats)):
            values = torch.cat([b.features[kind][b.frame_mask] for b in batches])
            values = values[values > 0]
            stats.copy_(torch.stack([values.mean(), values.std().clamp_min(1e-3)]))
        self.stats_ready.fill_(True)

    def before_step(self, step: int) -> None:
        self.coqui.binary_loss_weight = min(step / max(self.config.binary_loss_warmup_steps, 1), 1.0)

    def extra_inputs(self, batch: Batch) -> dict[str, Any]:
        return {"durations": None, "pitch": self.normalised(batch, "pitch", self.pitch_stats),
                "energy": self.normalised(batch, "energy", self.energy_stats)}

    @staticmethod
    def normalised(batch: Batch, kind: str, stats: torch.Tensor) -> torch.Tensor:
        """[B, 1, T]: (x - mean) / std where x > 0, else 0, zero past each length."""
        values = batch.features[kind]
        keep = (values > 0) & batch.frame_mask
        return torch.where(keep, (values - stats[0]) / stats[1], torch.zeros_like(values)).unsqueeze(1)

    def inference_inputs(self, x: torch.Tensor) -> dict[str, Any]:
        return {"d_vectors": None, "speaker_ids": None}

    def synthesis(self, outputs: dict[str, Any]) -> Synthesis:
        mel, path = outputs["model_outputs"][0], outputs["alignments"][0]  # [T, n_mels], [L, T]
        limit = self.config.max_inference_frames
        return Synthesis(mel=mel[:limit].float().cpu().numpy(), audio_config=self.config.audio,
                         durations=hard_durations(path[:, :limit].T), stopped=mel.shape[0] <= limit)

    def utterance_alignment(self, utt_id: str, outputs: dict[str, Any], b: int, tokens: int,
                            frames: int) -> Alignment:
        return Alignment(utt_id, durations=outputs["o_alignment_dur"][b, :tokens].long().cpu().numpy())
