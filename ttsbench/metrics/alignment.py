"""Alignment stability: scores on soft attention, and outcomes on a set of hard sentences.

Scores take soft attention A[T_text, T_steps] (rows: tokens, columns: decoder steps). Two
common scores are transposes of each other; both are computed because toolkits report one or
the other: the diagonal score (Coqui) catches skipped tokens, the focus rate (FastSpeech,
ESPnet) measures sharpness per step.

Hard alignments (MAS, duration predictors) make those scores trivially high, so every system
is also judged by outcome on the hard-sentence set (`ttsbench/corpus/hard_sentences.txt`):

- from the ASR transcript against the text (jiwer word alignment): deleted words are skipped;
  inserted words that repeat their neighbour (or an inserted phrase that repeats the phrase
  beside it) are repeated;
- from the alignment path (the most attended token per step, or the durations): words none of
  whose letters is ever attended are skipped; where attention steps back by `MIN_BACKTRACK`
  tokens or more a new pass starts, and words attended in more than one pass are repeated;
- utterances cut by the max-steps guard (`Synthesis.stopped` False), and utterances that stop
  early: audio shorter than half the time the reader would need at 15 characters a second.
  The embedded LJSpeech clips are read at 13.0-19.5 cleaned characters a second (median
  15.7), so half of 15 chars/s means speaking at twice the reader's average and 1.5 times her
  fastest clip: no system that says all the words gets there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jiwer
import numpy as np
import pandas as pd

from ttsbench.metrics.asr import normalise_text, transcribe
from ttsbench.options import DEFAULT_VOCODER
from ttsbench.text import EOS, TextProcessor

if TYPE_CHECKING:
    from ttsbench.models.base import Synthesis, TTSModel

READING_RATE_CHARS_PER_SECOND = 15.0
EARLY_STOP_FRACTION = 0.5
MIN_BACKTRACK = 2  # tokens: a one-token flicker across a word boundary is not a re-reading
HARD_SENTENCES = Path(__file__).resolve().parents[1] / "corpus" / "hard_sentences.txt"


def diagonal_score(attention: np.ndarray) -> float:
    """Mean over tokens of the largest weight any frame gives that token (Coqui's score)."""
    return float(np.asarray(attention).max(axis=1).mean())


def focus_rate(attention: np.ndarray) -> float:
    """Mean over frames of the largest weight given to any token (FastSpeech's focus rate)."""
    return float(np.asarray(attention).max(axis=0).mean())


def monotonicity(attention: np.ndarray) -> tuple[float, int]:
    """Share of frame steps whose argmax token does not move backwards, and the largest forward jump."""
    path = np.asarray(attention).argmax(axis=0)
    if path.size < 2:
        return 1.0, 0
    steps = np.diff(path)
    return float((steps >= 0).mean()), int(max(steps.max(), 0))


# --------------------------------------------------------------------------------------------
# The hard-sentence set


def load_hard_sentences(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(id, text) pairs of an `id|text` file ('#' lines are comments); errors name FILE:LINE."""
    path = Path(path) if path is not None else HARD_SENTENCES
    if not path.is_file():
        raise FileNotFoundError(f"hard-sentence file {path} does not exist")
    processor = TextProcessor()
    sentences: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line_no, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        utt_id, sep, text = line.partition("|")
        utt_id, text = utt_id.strip(), text.strip()
        if not sep or not utt_id or not text:
            problems.append(f"{path}:{line_no}: expected 'id|text'")
        elif utt_id in seen:
            problems.append(f"{path}:{line_no}: duplicate id {utt_id!r}")
        else:
            try:
                processor.encode(text)
            except ValueError as err:
                problems.append(f"{path}:{line_no}: {err}")
                continue
            seen.add(utt_id)
            sentences.append((utt_id, text))
    if problems:
        raise ValueError("\n".join(problems))
    return sentences


# --------------------------------------------------------------------------------------------
# Outcomes judged from the ASR transcript


@dataclass(frozen=True)
class TranscriptErrors:
    """Word-level outcome of one transcript against its text (both normalised)."""

    words: int
    skipped: int
    repeated: int
    substituted: int
    inserted: int


def transcript_word_errors(text: str, transcript: str) -> TranscriptErrors:
    """Skipped words = deletions; repeated = insertions equal to the word(s) right beside them."""
    reference, hypothesis = normalise_text(text), normalise_text(transcript)
    if not reference:
        raise ValueError(f"text {text!r} has no words to score")
    if not hypothesis:
        words = len(reference.split())
        return TranscriptErrors(words, words, 0, 0, 0)
    output = jiwer.process_words(reference, hypothesis)
    hyp = output.hypotheses[0]
    repeated = inserted = 0
    for chunk in output.alignments[0]:
        if chunk.type != "insert":
            continue
        start, end = chunk.hyp_start_idx, chunk.hyp_end_idx
        run = hyp[start:end]
        if hyp[max(0, start - len(run)) : start] == run or hyp[end : end + len(run)] == run:
            repeated += len(run)
            continue
        for i in range(start, end):
            if (i > 0 and hyp[i - 1] == hyp[i]) or (i + 1 < len(hyp) and hyp[i + 1] == hyp[i]):
                repeated += 1
            else:
                inserted += 1
    return TranscriptErrors(
        words=len(output.references[0]),
        skipped=output.deletions,
        repeated=repeated,
        substituted=output.substitutions,
        inserted=inserted,
    )


# --------------------------------------------------------------------------------------------
# Outcomes judged from the alignment path


def token_words(text: str) -> np.ndarray:
    """For each token of `TextProcessor().encode(text)`, its word's index (-1: space, punctuation, EOS)."""
    processor = TextProcessor()
    characters = list(processor.clean(text)) + ([EOS] if processor.add_eos else [])
    words = np.full(len(characters), -1, dtype=np.int64)
    word = -1
    inside = False
    for i, char in enumerate(characters):
        is_letter = char.isalpha() or (char == "'" and inside)
        if is_letter and not inside:
            word += 1
        inside = is_letter
        if is_letter:
            words[i] = word
    return words


def attention_path(attention: np.ndarray) -> np.ndarray:
    """The most attended token at each step of soft attention [T_text, T_steps]."""
    return np.asarray(attention).argmax(axis=0)


def durations_path(durations: np.ndarray) -> np.ndarray:
    """The token each frame belongs to under hard durations (zero-length tokens never appear)."""
    durations = np.asarray(durations).round().astype(np.int64).clip(min=0)
    return np.repeat(np.arange(len(durations)), durations)


@dataclass(frozen=True)
class PathErrors:
    words: int
    skipped: int
    repeated: int


def path_word_errors(path: np.ndarray, words_of_tokens: np.ndarray, min_backtrack: int = MIN_BACKTRACK) -> PathErrors:
    """Words never attended (skipped), and words attended in more than one pass (repeated).

    A new pass starts wherever the path steps back by `min_backtrack` tokens or more; a smaller
    wobble at a word boundary is attention noise, not a re-reading.
    """
    words_of_tokens = np.asarray(words_of_tokens)
    path = np.asarray(path, dtype=np.int64)
    if path.size and path.max() >= len(words_of_tokens):
        raise ValueError(f"path reaches token {path.max()} but the text has {len(words_of_tokens)} tokens")
    n_words = int(words_of_tokens.max()) + 1 if words_of_tokens.size else 0
    passes: list[set[int]] = [set()]
    previous = None
    for token in path:
        if previous is not None and previous - token >= min_backtrack:
            passes.append(set())
        if words_of_tokens[token] >= 0:
            passes[-1].add(int(words_of_tokens[token]))
        previous = token
    visited = set().union(*passes)
    repeated = {w for w in visited if sum(w in attended for attended in passes) > 1}
    return PathErrors(words=n_words, skipped=n_words - len(visited), repeated=len(repeated))


def synthesis_path(synthesis: "Synthesis") -> np.ndarray | None:
    """The alignment path of a synthesis: soft attention when it has one, else its durations."""
    if synthesis.alignment is not None:
        return attention_path(synthesis.alignment)
    if synthesis.durations is not None:
        return durations_path(synthesis.durations)
    return None


# --------------------------------------------------------------------------------------------
# Stopping


def expected_seconds(text: str) -> float:
    """How long the LJSpeech reader takes for `text` at 15 cleaned characters a second."""
    return len(TextProcessor().clean(text)) / READING_RATE_CHARS_PER_SECOND


def stopped_early(audio_seconds: float, text: str) -> bool:
    """Audio shorter than half the expected reading time: words must be missing."""
    return audio_seconds < EARLY_STOP_FRACTION * expected_seconds(text)


# --------------------------------------------------------------------------------------------
# The whole set for one model


def hard_sentence_outcomes(
    model: "TTSModel",
    sentences: Sequence[tuple[str, str]] | None = None,
    use_asr: bool = True,
    progress: bool = True,
    vocoder: str = DEFAULT_VOCODER,
) -> pd.DataFrame:
    """Synthesise every hard sentence, vocode it (`vocoder`, or the system's own path where that
    one cannot serve it) and judge it; one row per sentence.

    Columns: id, text, chars, audio_seconds, expected_seconds, stopped, hit_guard,
    stopped_early, path_words/skipped/repeated (NaN without an alignment), and with ASR:
    transcript, asr_skipped, asr_repeated, asr_substituted, asr_inserted, wer.
    """
    import torch
    from tqdm.auto import tqdm

    from ttsbench import vocoders

    sentences = list(sentences) if sentences is not None else load_hard_sentences()
    voice = vocoders.for_model(vocoder, model)
    processor = TextProcessor()
    rows = []
    for utt_id, text in tqdm(sentences, desc="hard sentences", unit="utt", disable=not progress, leave=False):
        ids = torch.tensor(processor.encode(text), dtype=torch.long, device=model.device)
        with torch.no_grad():
            synthesis = model.infer(ids)
        waveform = voice.vocode(synthesis)
        audio, rate, seconds = waveform.audio, waveform.sample_rate, waveform.seconds
        row: dict[str, object] = {
            "id": utt_id,
            "text": text,
            "chars": len(processor.clean(text)),
            "audio_seconds": seconds,
            "expected_seconds": expected_seconds(text),
            "stopped": bool(synthesis.stopped),
            "hit_guard": not synthesis.stopped,
            "stopped_early": stopped_early(seconds, text),
        }
        path = synthesis_path(synthesis)
        if path is not None:
            found = path_word_errors(path, token_words(text))
            row.update(path_words=found.words, path_skipped=found.skipped, path_repeated=found.repeated)
        else:
            row.update(path_words=np.nan, path_skipped=np.nan, path_repeated=np.nan)
        if use_asr:
            transcript = transcribe(audio, rate) if len(audio) else ""
            heard = transcript_word_errors(text, transcript)
            row.update(
                transcript=transcript,
                asr_skipped=heard.skipped,
                asr_repeated=heard.repeated,
                asr_substituted=heard.substituted,
                asr_inserted=heard.inserted,
                wer=(heard.skipped + heard.substituted + heard.repeated + heard.inserted) / heard.words,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_outcomes(outcomes: pd.DataFrame) -> dict[str, float]:
    """Counts over the set: utterances cut by the guard or stopped early, words skipped/repeated."""
    summary: dict[str, float] = {
        "utterances": float(len(outcomes)),
        "hit_guard": float(outcomes["hit_guard"].sum()),
        "stopped_early": float(outcomes["stopped_early"].sum()),
    }
    for column in ("path_skipped", "path_repeated", "asr_skipped", "asr_repeated"):
        if column in outcomes:
            summary[column] = float(outcomes[column].sum(min_count=1))
    if "wer" in outcomes:
        summary["wer"] = float(outcomes["wer"].mean())
    return summary
