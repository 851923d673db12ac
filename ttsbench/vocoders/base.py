"""The vocoder interface: spectrogram -> waveform, a part separate from the acoustic model.

As in torchaudio's `Tacotron2TTSBundle`, text processing, acoustic model and vocoder are three
parts: a system's `infer` stops at a spectrogram (`Synthesis`) and a `Vocoder` turns it into
audio, so one acoustic model can be heard through several vocoders and the gap each vocoder
leaves can be measured on its own (copy synthesis of recordings, `Vocoder.copy`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ttsbench.audio import AudioConfig
from ttsbench.models.base import Synthesis


@dataclass(frozen=True)
class Waveform:
    """Vocoded audio with the front end it is at (its sample rate, for saving and scoring) and
    the name of the vocoder that made it (recorded on every result row)."""

    audio: np.ndarray
    config: AudioConfig
    vocoder: str

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.config.sample_rate


class Vocoder(ABC):
    """Turns an acoustic model's output into audio, and a recording into its copy synthesis."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def refusal(self, mel_config: AudioConfig) -> str | None:
        """Why a mel made under `mel_config` cannot be vocoded here (None: it can)."""
        return None

    @abstractmethod
    def vocode(self, synthesis: Synthesis) -> Waveform:
        """The synthesis as audio."""

    @abstractmethod
    def copy(self, audio: np.ndarray, sample_rate: int) -> Waveform:
        """The recording's own spectrogram through this vocoder: what a perfect acoustic model
        would sound like with it, the ceiling a system is read against."""
