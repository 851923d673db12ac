"""Vocoders, by name: `griffin-lim`, `hifigan-lj`, `hifigan-universal` (see each module).

A suite, `ttsbench synth` and `ttsbench vocode` name one. A system whose mel is not the one a
neural vocoder was trained on (DC-TTS's dB-scaled mel and its SSRN's linear spectrogram) is
heard through its own path, Griffin-Lim, as its paper does: `resolve` says which vocoder a
system actually gets, and every result row records it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ttsbench.audio import AudioConfig
from ttsbench.errors import UserError
from ttsbench.models.base import TTSModel
from ttsbench.options import DEFAULT_VOCODER, FALLBACK_VOCODER, VOCODERS
from ttsbench.vocoders.base import Vocoder, Waveform
from ttsbench.vocoders.griffin_lim import GriffinLim
from ttsbench.vocoders.hifigan import HiFiGAN, VocoderUnavailable

__all__ = ["DEFAULT", "FALLBACK", "NAMES", "UnknownVocoderError", "Vocoder", "VocoderUnavailable", "Waveform", "for_model", "get",
           "resolve"]

_FACTORIES: dict[str, Callable[[str], Vocoder]] = {
    "griffin-lim": lambda device: GriffinLim(),
    "hifigan-lj": lambda device: HiFiGAN("hifigan-lj", device),
    "hifigan-universal": lambda device: HiFiGAN("hifigan-universal", device),
}
NAMES = tuple(_FACTORIES)
DEFAULT = DEFAULT_VOCODER
if NAMES != VOCODERS:  # the command line and suites offer options.VOCODERS without importing torch
    raise ImportError(f"ttsbench.options.VOCODERS {VOCODERS} does not list the registry's {NAMES}")
FALLBACK = FALLBACK_VOCODER


class UnknownVocoderError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@functools.lru_cache(maxsize=16)
def get(name: str, device: str = "cpu") -> Vocoder:
    """The vocoder called `name` (weights load on its first use)."""
    if name not in _FACTORIES:
        raise UnknownVocoderError(f"unknown vocoder {name!r}; known: {', '.join(NAMES)}")
    return _FACTORIES[name](device)


def resolve(name: str, mel_config: AudioConfig, device: str = "cpu") -> Vocoder:
    """`name` if it can vocode a mel made under `mel_config`, else the system's own path."""
    vocoder = get(name, device)
    return vocoder if vocoder.refusal(mel_config) is None else get(FALLBACK, device)


def for_model(name: str, model: TTSModel) -> Vocoder:
    """The vocoder `model`'s output goes through when `name` is asked for, on the model's device."""
    return resolve(name, model.feature_audio_configs()["mel"], str(model.device))
