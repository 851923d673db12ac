"""Speaker similarity: cosine between speaker embeddings, as TTS papers report voice likeness.

The encoder is Resemblyzer's GE2E speaker encoder (3-layer LSTM, 256-d embeddings), whose
weights ship inside the `resemblyzer` wheel; its own preprocessing (16 kHz, loudness
normalisation, webrtcvad silence trimming) is applied. A synthesis is compared with the mean
embedding of the corpus speaker's recordings (`SpeakerReference`), leaving out the recording of
the same utterance, so a recording scored against the corpus is not compared with itself.
Measured: 0.89 between LJSpeech clips, 0.47 between LJSpeech and another voice.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import librosa
import numpy as np

from ttsbench.audio import read_mono

with warnings.catch_warnings():  # resemblyzer's imports warn: pkg_resources (webrtcvad), scipy's old paths
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from resemblyzer import VoiceEncoder, preprocess_wav
    from resemblyzer.hparams import sampling_rate as RESEMBLYZER_RATE


@functools.lru_cache(maxsize=1)
def _encoder():
    return VoiceEncoder(device="cpu", verbose=False)


def embed(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-length speaker embedding of one utterance (Resemblyzer's preprocessing first)."""
    audio = np.asarray(audio, dtype=np.float32)
    if not np.any(audio):
        raise ValueError("silent audio has no speaker to embed")
    wav = preprocess_wav(audio, source_sr=sample_rate)
    if len(wav) == 0:  # all silence once long pauses are cut: embed the resampled audio as it is
        wav = librosa.resample(audio, orig_sr=sample_rate, target_sr=RESEMBLYZER_RATE)
    return np.asarray(_encoder().embed_utterance(wav), dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


class SpeakerReference:
    """The target voice: embeddings of the speaker's recordings, by utterance id."""

    def __init__(self, embeddings: Mapping[str, np.ndarray]):
        if not embeddings:
            raise ValueError("a speaker reference needs at least one recording")
        self.embeddings = dict(embeddings)

    @classmethod
    def from_audio(cls, recordings: Mapping[str, tuple[np.ndarray, int]]) -> "SpeakerReference":
        """id -> (audio, sample rate) of the reference speaker's recordings."""
        return cls({key: embed(audio, rate) for key, (audio, rate) in recordings.items()})

    @classmethod
    def of_files(cls, paths: Iterable[str | Path]) -> "SpeakerReference":
        """The recordings in these files, keyed by file stem (the utterance id). Cached: every
        validation of a run asks for the same recordings, and embedding them again is waste."""
        return _reference_of_files(tuple(Path(p) for p in paths))

    def centroid(self, leave_out: str | None = None) -> np.ndarray:
        """Mean embedding, without `leave_out` when that leaves at least one recording."""
        kept = [e for key, e in self.embeddings.items() if key != leave_out] or list(self.embeddings.values())
        return np.mean(kept, axis=0)

    def similarity(self, audio: np.ndarray, sample_rate: int, utterance: str | None = None) -> float:
        """Cosine of the audio's embedding to the centroid without the same utterance's recording
        (NaN for silent audio: no voice to compare)."""
        if not np.any(audio):
            return float("nan")
        return cosine(embed(audio, sample_rate), self.centroid(leave_out=utterance))


@functools.lru_cache(maxsize=8)
def _reference_of_files(paths: tuple[Path, ...]) -> SpeakerReference:
    return SpeakerReference.from_audio({path.stem: read_mono(path) for path in paths})
