from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
from threadpoolctl import threadpool_limits

from ttsbench.audio import (
    AudioConfig,
    griffin_lim_from_linear,
    griffin_lim_from_mel,
    linear_spectrogram,
    load_audio,
    mel_spectrogram,
    num_frames,
)


@pytest.fixture(scope="module")
def clip(embedded_corpus) -> np.ndarray:
    return load_audio(embedded_corpus.utterances[1].audio_path, AudioConfig())


def test_mel_matches_librosa_called_directly(clip):
    config = AudioConfig()
    mel = mel_spectrogram(clip, config)
    reference = librosa.feature.melspectrogram(
        y=clip, sr=22050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0, fmax=8000,
        power=1.0, center=True, pad_mode="reflect",
    )
    expected = np.log(np.maximum(reference, 1e-5)).T
    assert mel.shape == (num_frames(len(clip), config), 80)
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, expected, atol=1e-4)
    assert mel.min() >= np.log(1e-5) - 1e-6


def test_linear_spectrogram_shape_and_values(clip):
    config = AudioConfig()
    linear = linear_spectrogram(clip, config)
    magnitude = np.abs(librosa.stft(clip, n_fft=1024, hop_length=256, win_length=1024, pad_mode="reflect"))
    assert linear.shape == (num_frames(len(clip), config), 513)
    np.testing.assert_allclose(linear, np.log(np.maximum(magnitude, 1e-5)).T, atol=1e-4)


def test_db01_scaling_is_in_unit_range_and_differs_from_log(clip):
    dc = AudioConfig(n_fft=2048, hop_length=276, win_length=1102, fmax=None, scaling="db01", preemphasis=0.97)
    mel = mel_spectrogram(clip, dc)
    assert mel.shape == (1 + len(clip) // 276, 80)
    assert 0.0 < mel.min() and mel.max() <= 1.0
    assert mel.std() > 0.05


def _log_mel_correlation(a: np.ndarray, b: np.ndarray, config: AudioConfig) -> float:
    ma, mb = mel_spectrogram(a, config), mel_spectrogram(b, config)
    n = min(len(ma), len(mb))
    return float(np.corrcoef(ma[:n].ravel(), mb[:n].ravel())[0, 1])


def test_griffin_lim_of_real_clip_correlates_with_original(clip):
    config = AudioConfig(griffin_lim_iters=32)
    from_linear = griffin_lim_from_linear(linear_spectrogram(clip, config), config)
    from_mel = griffin_lim_from_mel(mel_spectrogram(clip, config), config)
    noise = np.random.default_rng(0).normal(0, 0.05, len(clip)).astype(np.float32)
    assert abs(len(from_linear) - len(clip)) <= config.hop_length
    assert _log_mel_correlation(clip, from_linear, config) > 0.95
    assert _log_mel_correlation(clip, from_mel, config) > 0.9
    assert _log_mel_correlation(clip, noise, config) < 0.5


def test_load_resamples_and_downmixes(tmp_path, clip):
    stereo_16k = librosa.resample(clip, orig_sr=22050, target_sr=16000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([stereo_16k, stereo_16k * 0.5], axis=1), 16000)
    loaded = load_audio(path, AudioConfig())
    assert loaded.ndim == 1
    assert abs(len(loaded) - len(clip)) <= 2
    assert _log_mel_correlation(clip, loaded, AudioConfig()) > 0.95


def test_trim_removes_leading_silence(tmp_path, clip):
    padded = np.concatenate([np.zeros(22050, dtype=np.float32), clip])
    path = tmp_path / "padded.wav"
    sf.write(path, padded, 22050)
    assert len(load_audio(path, AudioConfig(trim_db=45))) < len(padded) - 20000
    assert len(load_audio(path, AudioConfig())) == len(padded)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="Nyquist"):
        AudioConfig(sample_rate=16000, fmax=9000)
    with pytest.raises(ValueError, match="win_length"):
        AudioConfig(n_fft=512, win_length=1024)
    assert AudioConfig().digest() != AudioConfig(n_fft=2048).digest()


def test_a_mel_does_not_depend_on_the_blas_threads(clip) -> None:
    """A threaded sgemm rounds the mel projection differently in the last bits; the cache must
    hold the same mel whichever process (a 1-thread pool worker, a job) computed it."""
    config = AudioConfig()
    with threadpool_limits(2, user_api="blas"):
        threaded = mel_spectrogram(clip, config)
    with threadpool_limits(1, user_api="blas"):
        single = mel_spectrogram(clip, config)
    np.testing.assert_array_equal(threaded, single)
