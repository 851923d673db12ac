"""Griffin-Lim: phase recovered by iteration from the system's own spectrogram (librosa).

The path every system had before neural vocoders: from the linear spectrogram where the model
predicts one (Tacotron's CBHG, DC-TTS's SSRN), else from the mel through the NNLS inverse of
the filterbank. No training and no weights; it accepts any front end.
"""

from __future__ import annotations

import numpy as np

from ttsbench.audio import AudioConfig, griffin_lim_from_linear, griffin_lim_from_mel, mel_spectrogram
from ttsbench.models.base import Synthesis
from ttsbench.vocoders.base import Vocoder, Waveform


class GriffinLim(Vocoder):
    name = "griffin-lim"
    description = "librosa Griffin-Lim from the system's linear spectrogram, else from its mel (NNLS inverse)"

    def vocode(self, synthesis: Synthesis) -> Waveform:
        if synthesis.linear is not None:
            config = synthesis.linear_audio_config or synthesis.audio_config
            return Waveform(griffin_lim_from_linear(synthesis.linear, config), config, self.name)
        return Waveform(griffin_lim_from_mel(synthesis.mel, synthesis.audio_config), synthesis.audio_config, self.name)

    def copy(self, audio: np.ndarray, sample_rate: int) -> Waveform:
        config = copy_config(sample_rate)
        return Waveform(griffin_lim_copy(audio, sample_rate, config), config, self.name)


def copy_config(sample_rate: int) -> AudioConfig:
    """The default front end at `sample_rate` (the mel band stops at 8 kHz or Nyquist)."""
    return AudioConfig(sample_rate=sample_rate, fmax=min(8000.0, sample_rate / 2))


def griffin_lim_copy(audio: np.ndarray, sample_rate: int, config: AudioConfig | None = None) -> np.ndarray:
    """The recording's own mel through Griffin-Lim: a perfect acoustic model's output."""
    config = config or copy_config(sample_rate)
    if config.sample_rate != sample_rate:
        raise ValueError(f"config is for {config.sample_rate} Hz but the audio is {sample_rate} Hz")
    return griffin_lim_from_mel(mel_spectrogram(np.asarray(audio, dtype=np.float32), config), config)
