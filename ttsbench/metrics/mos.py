"""DistillMOS: a no-reference MOS predictor for speech, run offline on the CPU.

- Model: DistillMOS (Stahl & Gamper, "Distillation and Pruning for Scalable Self-Supervised
  Representation-Based Speech Quality Assessment", ICASSP 2025; Microsoft, MIT licence): a small
  CNN + transformer distilled from an XLS-R-based speech quality model, variant 7, whose weights
  ship inside the `distillmos` wheel. No-reference: it scores one recording alone, without the
  clean original, so it can score synthetic speech that has none.
- Why a reimplementation: `distillmos/__init__.py` imports `torchaudio` at its top, and
  torchaudio is not installed here (nor wanted). Its inference path is thin: a power-0.3
  compressed complex STFT, six 2-D convolutions, and the transformer with attention pooling of
  `xls_r_sqa` (which imports only torch). This module rewrites that front with the same module
  names, so the package's state dict loads strictly; it was checked against the original to
  within 1e-5 on real LJSpeech clips.
- Input handling as the original: 16 kHz; clips are cut into 7.68 s windows (the last zero-padded
  when shorter) whose starts are spread evenly with hops of at most 1 s; each window is
  peak-normalised; the window scores are averaged. Output 1 + 4 * q, q in [0, 1].
"""

from __future__ import annotations

import functools
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttsbench import wheels
from ttsbench.errors import UserError

PACKAGE = "distillmos"
WEIGHTS_FILE = "weights/distill_mos_v7.pt"
WEIGHTS_SHA256 = "b18b3ac60227267cfb91e5d00ce22cc7b73716fd92f269484da1446e27031a40"  # distillmos 0.9.1
INSTALL_HINT = "pip install --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0 (make install does)"

MOS_RATE = 16000
WINDOW = 122880  # samples per scored window (7.68 s): 384 frames after the CNN
MAX_HOP = 16000  # windows start at most 1 s apart
HOP_LENGTH, WIN_LENGTH = 160, 320  # STFT: 10 ms hop, 20 ms Hann window
CNN_LAYERS, CNN_CHANNELS, FIRST_CHANNELS = 6, 256, 64
TRANSFORMER_DIM, TRANSFORMER_HEADS, TRANSFORMER_LAYERS = 200, 8, 7


class MOSUnavailable(UserError, RuntimeError):
    """The DistillMOS packages are missing or their weights are not the pinned ones."""


def _compressed_stft(wave: Tensor) -> Tensor:
    """(batch, samples) -> (batch, 2, freq, frames): real and imaginary parts with the magnitude
    compressed to |X|^0.3, the input the network was trained on."""
    pad = (WIN_LENGTH - HOP_LENGTH) // 2
    padded = F.pad(wave, (pad, pad), mode="reflect")
    spec = torch.stft(padded, n_fft=WIN_LENGTH, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, center=False,
                      window=torch.hann_window(WIN_LENGTH, device=wave.device), return_complex=True)
    parts = torch.view_as_real(spec)
    magnitude = torch.clip(parts.pow(2).sum(-1, keepdim=True).sqrt(), 1e-12)
    return (magnitude.pow(0.3) * parts / magnitude).permute(0, 3, 1, 2)


class _ComplexSpecCNN(nn.Module):
    """Six 3x3 convolutions over the compressed spectrum; frequency halves from layer 2 on, time
    halves in the last layer. Named `cnn.cnn.*` as in the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, freq = 2, WIN_LENGTH // 2 + 1
        for i in range(CNN_LAYERS):
            out = min(FIRST_CHANNELS * 2 ** max(i - 1, 0), CNN_CHANNELS)
            f_stride, t_stride = (2 if i >= 1 else 1), (2 if i == CNN_LAYERS - 1 else 1)
            layers += [nn.Conv2d(channels, out, (3, 3), stride=(f_stride, t_stride), padding=(0, 1)), nn.LeakyReLU(0.1)]
            channels, freq = out, (freq - 3) // f_stride + 1
        self.cnn = nn.Sequential(*layers)
        self.out_dim = channels * freq

    def forward(self, wave: Tensor) -> Tensor:
        """(batch, samples) -> (batch, frames, channels * freq)."""
        return torch.flatten(self.cnn(_compressed_stft(wave)), 1, -2).transpose(1, 2)


def _attention_head(dim_input: int) -> nn.Module:
    """xls_r_sqa's transformer + attention pooling + sigmoid, configured as DistillMOS does."""
    try:  # here, so that a missing package is one clear line when MOS runs
        from xls_r_sqa.config import FEAT_SEQ_LEN, Config
        from xls_r_sqa.sqa_model import SingleLayerModel
    except ImportError as err:
        raise MOSUnavailable(f"the DistillMOS packages are missing: {INSTALL_HINT}") from err
    config = Config("", None, feat_seq_len=FEAT_SEQ_LEN, dim_transformer=TRANSFORMER_DIM, xlsr_name=None,
                    nhead_transformer=TRANSFORMER_HEADS, nlayers_transformer=TRANSFORMER_LAYERS)
    config.dim_input = dim_input  # the CNN's features, not MFCCs
    return SingleLayerModel(config)


def _windows(wave: Tensor) -> Tensor:
    """(1, samples) -> (windows, WINDOW): zero-padded to one window, or evenly spread windows
    at most MAX_HOP apart covering the whole clip; same start positions as the original."""
    overlength = wave.shape[1] - WINDOW
    if overlength < 0:
        return F.pad(wave, (0, -overlength))
    starts = [int(c * overlength) for c in np.linspace(0, 1, int(np.ceil(overlength / MAX_HOP)) + 1)]
    return torch.cat([wave[:, s:s + WINDOW] for s in starts], dim=0)


class _DistillMOSModel(nn.Module):
    """DistillMOS variant 7: module names `cnn` and `transformer_pool_attn` as in the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = _ComplexSpecCNN()
        self.transformer_pool_attn = _attention_head(self.cnn.out_dim)

    def forward(self, wave: Tensor) -> Tensor:
        """(1, samples) at 16 kHz -> the MOS (1..5), averaged over the windows."""
        windows = _windows(wave)
        windows = windows / (windows.abs().amax(dim=1, keepdim=True) + 1e-8)
        quality = self.transformer_pool_attn(self.cnn(windows))
        return 1 + 4 * quality.mean()


def weights_path() -> Path:
    """The checkpoint inside the installed distillmos package, found without importing it
    (its __init__ imports torchaudio)."""
    folder = wheels.package_folder(PACKAGE)
    if folder is None:
        raise MOSUnavailable(f"the DistillMOS packages are missing: {INSTALL_HINT}")
    return folder / WEIGHTS_FILE


@functools.lru_cache(maxsize=1)
def _model() -> _DistillMOSModel:
    """The model with the pinned weights, in eval mode; built once per process."""
    path = weights_path()
    if (found := wheels.unpinned(path, WEIGHTS_SHA256)) is not None:
        raise MOSUnavailable(f"{path}: sha256 {found} is not the pinned DistillMOS v7 ({WEIGHTS_SHA256}); "
                             f"reinstall: {INSTALL_HINT}")
    model = _DistillMOSModel()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], strict=True)
    return model.eval()


def distillmos(audio: np.ndarray, sample_rate: int) -> float:
    """DistillMOS of one mono clip at any rate (resampled to 16 kHz, clipped to [-1, 1])."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or not len(audio):
        raise ValueError(f"DistillMOS needs non-empty mono audio, got shape {audio.shape}")
    if sample_rate != MOS_RATE:
        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=MOS_RATE)
    wave = torch.from_numpy(np.clip(audio, -1.0, 1.0).astype(np.float32))[None]
    model = _model()
    with torch.inference_mode():
        return float(model(wave))
