"""The one audio front end: loading, spectrograms and Griffin-Lim, all through librosa.

Every system sees features computed by these functions. Systems that need other settings
(DC-TTS: n_fft 2048, hop 276, pre-emphasis, [0, 1] dB scaling) pass their own `AudioConfig`,
so two systems never disagree about what "a mel spectrogram" is because of hand-written DSP.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import librosa
import numpy as np
import soundfile as sf
from threadpoolctl import ThreadpoolController

Scaling = Literal["log", "db01"]


@dataclass(frozen=True)
class AudioConfig:
    """Front-end settings. Defaults are the standard LJSpeech setting of Glow-TTS/FastSpeech2.

    scaling:
      - "log":  ln(max(S, log_clamp)) on magnitudes (Glow-TTS, FastSpeech2, Tacotron here).
      - "db01": DC-TTS's clip((20 log10(max(S, 1e-5)) - ref_db + max_db) / max_db, 1e-8, 1).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    log_clamp: float = 1e-5
    scaling: Scaling = "log"
    ref_db: float = 20.0
    max_db: float = 100.0
    preemphasis: float = 0.0
    trim_db: float | None = None
    griffin_lim_iters: int = 60
    griffin_lim_power: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.log_clamp) and self.log_clamp > 0):
            raise ValueError(f"log_clamp must be a positive number, got {self.log_clamp!r}")
        if not (math.isfinite(self.fmin) and 0 <= self.fmin < (self.fmax or self.sample_rate / 2)):
            raise ValueError(f"fmin must be >= 0 and below fmax, got {self.fmin!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.fmax is not None and self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {self.fmax} is above Nyquist ({self.sample_rate / 2})")
        if self.scaling not in ("log", "db01"):
            raise ValueError(f"unknown scaling {self.scaling!r}; use 'log' or 'db01'")

    @property
    def n_freq(self) -> int:
        """Bins of the linear spectrogram."""
        return self.n_fft // 2 + 1

    @property
    def silence_value(self) -> float:
        """The compressed value of a silent bin: what padding frames should hold."""
        return float(np.log(self.log_clamp)) if self.scaling == "log" else 1e-8

    def digest(self) -> str:
        """A short stable hash: the feature-cache key part that changes when any setting does."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def replace(self, **changes: object) -> "AudioConfig":
        return dataclasses.replace(self, **changes)


def read_mono(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Any channel count -> mono float32, resampled to `sample_rate` when given; returns (audio, rate)."""
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = data.mean(axis=1)
    if sample_rate is not None and file_rate != sample_rate:
        return librosa.resample(audio, orig_sr=file_rate, target_sr=sample_rate), sample_rate
    return audio, file_rate


def load_audio(path: str | Path, config: AudioConfig) -> np.ndarray:
    """Read any sample rate / channel count, return mono float32 at `config.sample_rate`, trimmed."""
    audio, _ = read_mono(path, config.sample_rate)
    if config.trim_db is not None and audio.size:
        audio, _ = librosa.effects.trim(
            audio, top_db=config.trim_db, frame_length=config.win_length, hop_length=config.hop_length
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def stft_magnitude(audio: np.ndarray, config: AudioConfig) -> np.ndarray:
    """|STFT| [n_fft // 2 + 1, frames] after pre-emphasis: what the mel and linear features
    (and FastSpeech2's energy) are computed from, so they share one framing."""
    if config.preemphasis:
        audio = librosa.effects.preemphasis(audio, coef=config.preemphasis)
    stft = librosa.stft(
        audio,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window="hann",
        center=True,
        pad_mode="reflect",
    )
    return np.abs(stft).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Clip:
    """One clip's samples under one front end; its |STFT| is computed on first use and then shared
    by every feature kind taken from it (mel, linear, energy): one STFT per file, not one per kind."""

    audio: np.ndarray
    config: AudioConfig

    @functools.cached_property
    def magnitude(self) -> np.ndarray:
        return stft_magnitude(self.audio, self.config)


@functools.lru_cache(maxsize=16)
def _mel_basis(config: AudioConfig) -> np.ndarray:
    """The mel filterbank of a front end: built once per process (it costs as much as an STFT)."""
    return librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax
    )


def _to_mel(magnitude: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The mel filterbank applied to |S| [bins, frames], on one BLAS thread: a threaded sgemm
    rounds differently in the last bits, and a mel must not depend on the machine's cores or
    on which process (a pool worker, a job) computed it."""
    with _blas().limit(limits=1, user_api="blas"):
        return _mel_basis(config) @ magnitude


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded (numpy's), found once: a limit then costs ~6 us, not a scan."""
    return ThreadpoolController()


def _compress(magnitude: np.ndarray, config: AudioConfig) -> np.ndarray:
    if config.scaling == "log":
        return np.log(np.maximum(magnitude, config.log_clamp)).astype(np.float32)
    db = 20.0 * np.log10(np.maximum(magnitude, 1e-5))
    return np.clip((db - config.ref_db + config.max_db) / config.max_db, 1e-8, 1.0).astype(np.float32)


def _decompress(features: np.ndarray, config: AudioConfig) -> np.ndarray:
    if config.scaling == "log":
        return np.exp(features)
    db = np.clip(features, 0.0, 1.0) * config.max_db - config.max_db + config.ref_db
    return np.power(10.0, db / 20.0)


def natural_log_mel(features: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Any compressed mel in natural-log magnitude (floored at 1e-5), so "log" and "db01" features
    are on one scale: the validation curve compares systems whose front ends differ (DC-TTS)."""
    return np.log(np.maximum(_decompress(np.asarray(features, dtype=np.float64), config), 1e-5)).astype(np.float32)


def mel_spectrogram(audio: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Compressed mel magnitude spectrogram, shape [frames, n_mels] (time-major like the models)."""
    return mel_feature(Clip(audio, config))


def linear_spectrogram(audio: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Compressed linear magnitude spectrogram, shape [frames, n_fft // 2 + 1]."""
    return linear_feature(Clip(audio, config))


def mel_feature(clip: Clip) -> np.ndarray:
    """The cached "mel" kind: `mel_spectrogram` from the clip's shared |STFT|."""
    return _compress(_to_mel(clip.magnitude, clip.config), clip.config).T.copy()


def linear_feature(clip: Clip) -> np.ndarray:
    """The cached "linear" kind: `linear_spectrogram` from the clip's shared |STFT|."""
    return _compress(clip.magnitude, clip.config).T.copy()


def linear_to_mel(linear: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The compressed mel [frames, n_mels] that a compressed linear spectrogram implies.

    Lets a system that predicts a linear spectrogram (DC-TTS's SSRN) report the full-rate mel
    that the vocoder will hear, computed exactly as `mel_spectrogram` computes it from audio.
    """
    magnitude = _decompress(np.asarray(linear, dtype=np.float64), config).T
    return _compress(_to_mel(magnitude, config), config).T.copy()


def num_frames(num_samples: int, config: AudioConfig) -> int:
    """Frames the centred STFT produces for `num_samples` samples."""
    return 1 + num_samples // config.hop_length


def griffin_lim_from_linear(linear: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Audio from a compressed linear spectrogram [frames, n_freq] via librosa's Griffin-Lim."""
    magnitude = _decompress(np.asarray(linear, dtype=np.float64), config).T ** config.griffin_lim_power
    audio = librosa.griffinlim(
        magnitude,
        n_iter=config.griffin_lim_iters,
        hop_length=config.hop_length,
        win_length=config.win_length,
        n_fft=config.n_fft,
        window="hann",
        center=True,
        random_state=0,
    )
    if config.preemphasis:
        audio = librosa.effects.deemphasis(audio, coef=config.preemphasis)
    return audio.astype(np.float32)


def griffin_lim_from_mel(mel: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Audio from a compressed mel [frames, n_mels]: NNLS inverse of the filterbank, then Griffin-Lim."""
    mel_magnitude = _decompress(np.asarray(mel, dtype=np.float64), config).T
    magnitude = librosa.feature.inverse.mel_to_stft(
        mel_magnitude,
        sr=config.sample_rate,
        n_fft=config.n_fft,
        power=1.0,
        fmin=config.fmin,
        fmax=config.fmax,
    )
    linear = _compress(magnitude, config).T
    return griffin_lim_from_linear(linear, config)


def save_audio(path: str | Path, audio: np.ndarray, config: AudioConfig) -> None:
    """Write 16-bit PCM, peak-limited so Griffin-Lim output never clips."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, config.sample_rate, subtype="PCM_16")
