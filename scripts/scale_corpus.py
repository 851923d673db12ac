"""Write an LJSpeech-1.1 folder at LJSpeech's size with cheap audio: the scale test corpus.

All 13,100 real ids and normalised texts of the standard split (train, val, test), each with
about one second of a synthetic voiced signal (a few harmonics of a gliding pitch under a
syllable-rate envelope, plus a little noise), 22,050 Hz 16-bit mono. It measures the data path
(validation, feature preparation, memory, first step) at LJSpeech's utterance count without 24
hours of audio; nothing trained on it means anything.

    python scripts/scale_corpus.py OUT [--seconds 1.0] [--limit N]
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from ttsbench.data import SPLITS, standard_split_sentences

SAMPLE_RATE = 22_050


def cheap_voice(utt_id: str, seconds: float) -> np.ndarray:
    """A deterministic, speech-like signal for one id (seeded by the id's CRC)."""
    rng = np.random.default_rng(zlib.crc32(utt_id.encode()))
    n = int(SAMPLE_RATE * seconds * rng.uniform(0.8, 1.2))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90.0, 180.0) * (1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1.0 - np.cos(2 * np.pi * rng.uniform(3.0, 5.0) * t)) * np.hanning(n)
    signal = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return (signal / np.abs(signal).max() * 0.8).astype(np.float32)


def write_corpus(out: Path, seconds: float, limit: int | None) -> int:
    """metadata.csv and wavs/ID.wav for every id of the standard split (or the first `limit`)."""
    sentences = [pair for split in SPLITS for pair in standard_split_sentences(split)][:limit]
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for utt_id, text in sentences:
        path = out / "wavs" / f"{utt_id}.wav"
        if not path.is_file():
            sf.write(path, cheap_voice(utt_id, seconds), SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{utt_id}|{text}|{text}\n")
    (out / "metadata.csv").write_text("".join(lines), "utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the corpus folder to write (LJSpeech-1.1 layout)")
    parser.add_argument("--seconds", type=float, default=1.0, help="mean clip length (default 1.0)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N ids (default: all 13,100)")
    args = parser.parse_args()
    count = write_corpus(args.out, args.seconds, args.limit)
    print(f"{args.out}: {count} utterances")


if __name__ == "__main__":
    main()
