"""LJSpeech-format corpora: validation, splits, a feature cache on disk, and padded batches.

A corpus folder holds `metadata.csv` (`id|text|normalized_text`, UTF-8) and `wavs/ID.wav`
(`wavs/ID.flac` is accepted too: the embedded corpus ships FLAC to stay small). Everything is
validated up front and every problem is reported at once, as `FILE:LINE: message`, so a user
fixes a broken corpus in one pass instead of one crash at a time.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from ttsbench.audio import AudioConfig, linear_spectrogram, load_audio, mel_spectrogram
from ttsbench.fileio import atomic_path
from ttsbench.text import TextProcessor, UnknownCharactersError

EMBEDDED = "embedded"
AUDIO_SUFFIXES = (".wav", ".flac")
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Corpus reading and validation


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    audio_path: Path
    line: int
    num_samples: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True)
class CorpusProblem:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class CorpusError(ValueError):
    """Every problem found in a corpus; str() is one `FILE:LINE: message` line per problem."""

    def __init__(self, problems: Sequence[CorpusProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Corpus:
    root: Path
    utterances: list[Utterance]

    @property
    def name(self) -> str:
        return EMBEDDED if self.root == embedded_corpus_path() else self.root.name

    def __len__(self) -> int:
        return len(self.utterances)

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}

    @property
    def is_full_ljspeech(self) -> bool:
        """True when every id of the standard LJSpeech split is present."""
        ids = {u.id for u in self.utterances}
        return all(set(standard_split_ids(s)) <= ids for s in SPLITS)

    def split(self, seed: int = 0, val_count: int | None = None, test_count: int | None = None) -> dict[str, list[Utterance]]:
        """The standard split for full LJSpeech; otherwise a seeded split by count."""
        if self.is_full_ljspeech and val_count is None and test_count is None:
            index = self.by_id()
            return {s: [index[i] for i in standard_split_ids(s)] for s in SPLITS}
        return split_by_count(self.utterances, seed=seed, val_count=val_count, test_count=test_count)


def embedded_corpus_path() -> Path:
    """The 24 real LJSpeech clips shipped inside the package (public domain)."""
    return Path(str(resources.files("ttsbench") / "corpus" / "ljspeech-mini"))


def resolve_corpus_path(spec: str | Path) -> Path:
    return embedded_corpus_path() if str(spec) == EMBEDDED else Path(spec).expanduser()


def standard_split_ids(split: str) -> list[str]:
    """Ids of the standard LJSpeech train/val/test split (Tacotron 2, Glow-TTS, VITS)."""
    text = (resources.files("ttsbench") / "corpus" / "ljspeech-split" / f"{split}.txt").read_text("utf-8")
    return [line.split("|", 1)[0] for line in text.splitlines() if line]


def standard_split_sentences(split: str) -> list[tuple[str, str]]:
    """(id, normalised text) of a standard split: realistic sentences for inference benchmarks."""
    text = (resources.files("ttsbench") / "corpus" / "ljspeech-split" / f"{split}.txt").read_text("utf-8")
    return [tuple(line.split("|", 1)) for line in text.splitlines() if line]  # type: ignore[misc]


def _find_audio(wav_dir: Path, utt_id: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        candidate = wav_dir / f"{utt_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def check_corpus(path: str | Path, processor: TextProcessor | None = None) -> tuple[Corpus, list[CorpusProblem]]:
    """Read and validate a corpus folder; returns the good utterances and every problem found."""
    root = resolve_corpus_path(path)
    processor = processor or TextProcessor()
    metadata = root / "metadata.csv"
    if not root.is_dir():
        return Corpus(root, []), [CorpusProblem(root, 0, "corpus folder does not exist")]
    if not metadata.is_file():
        return Corpus(root, []), [CorpusProblem(metadata, 0, "metadata.csv is missing")]

    problems: list[CorpusProblem] = []
    utterances: list[Utterance] = []
    first_seen: dict[str, int] = {}
    wav_dir = root / "wavs"

    def problem(line: int, message: str) -> None:
        problems.append(CorpusProblem(metadata, line, message))

    for line_no, raw in enumerate(metadata.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem(line_no, f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})")
            continue
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (2, 3):
            problem(line_no, f"malformed line: expected 'id|text|normalized_text', found {len(fields)} field(s)")
            continue
        utt_id = fields[0].strip()
        text = (fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]).strip()
        if not utt_id:
            problem(line_no, "empty id")
            continue
        if "/" in utt_id or "\\" in utt_id or ".." in utt_id:
            problem(line_no, f"id {utt_id!r} contains a path separator or '..'")
            continue
        if utt_id in first_seen:
            problem(line_no, f"duplicate id {utt_id!r} (first on line {first_seen[utt_id]})")
            continue
        first_seen[utt_id] = line_no
        if not text:
            problem(line_no, f"empty text for {utt_id!r}")
            continue
        try:
            processor.encode(text)
        except UnknownCharactersError as err:
            problem(line_no, str(err))
            continue
        audio_path = _find_audio(wav_dir, utt_id)
        if audio_path is None:
            problem(line_no, f"missing audio: {wav_dir / (utt_id + '.wav')} does not exist")
            continue
        try:
            info = sf.info(str(audio_path))
        except Exception as err:  # soundfile raises several types for broken files
            problem(line_no, f"unreadable audio {audio_path}: {str(err).strip()}")
            continue
        if info.frames == 0:
            problem(line_no, f"zero-length audio: {audio_path}")
            continue
        utterances.append(Utterance(utt_id, text, audio_path, line_no, info.frames, info.samplerate))

    if not utterances and not problems:
        problem(1, "metadata.csv lists no utterances")
    return Corpus(root, utterances), problems


def load_corpus(path: str | Path, processor: TextProcessor | None = None) -> Corpus:
    """Like `check_corpus`, but raises `CorpusError` listing every problem."""
    corpus, problems = check_corpus(path, processor)
    if problems:
        raise CorpusError(problems)
    return corpus


def split_by_count(
    utterances: Sequence[Utterance], seed: int = 0, val_count: int | None = None, test_count: int | None = None
) -> dict[str, list[Utterance]]:
    """Deterministic seeded split; defaults keep ~1/12 each for val and test (2 of 24)."""
    n = len(utterances)
    val_count = max(1, min(100, n // 12)) if val_count is None else val_count
    test_count = max(1, min(500, n // 12)) if test_count is None else test_count
    if val_count + test_count >= n:
        raise ValueError(f"corpus of {n} utterances is too small for {val_count} val + {test_count} test")
    order = sorted(utterances, key=lambda u: u.id)
    random.Random(seed).shuffle(order)
    return {
        "val": sorted(order[:val_count], key=lambda u: u.id),
        "test": sorted(order[val_count : val_count + test_count], key=lambda u: u.id),
        "train": sorted(order[val_count + test_count :], key=lambda u: u.id),
    }


# --------------------------------------------------------------------------------------------
# Feature cache

FeatureFunction = Callable[[np.ndarray, AudioConfig], np.ndarray]
FEATURES: dict[str, FeatureFunction] = {"mel": mel_spectrogram, "linear": linear_spectrogram}


def register_feature(name: str, function: FeatureFunction) -> None:
    """Add a cached feature kind (e.g. pitch for FastSpeech2): audio, config -> [frames, ...]."""
    FEATURES[name] = function


def default_cache_dir() -> Path:
    return Path(os.environ.get("TTSBENCH_CACHE", Path.home() / ".cache" / "ttsbench")) / "features"


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """A killed run never leaves a truncated cache entry."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


class FeatureCache:
    """Features computed once per (audio config, file content, kind) and kept as .npy files."""

    def __init__(self, config: AudioConfig, root: Path | None = None):
        self.config = config
        self.root = (root or default_cache_dir()) / config.digest()

    def path(self, audio_path: Path, kind: str) -> Path:
        return self.root / f"{_file_digest(audio_path)}.{kind}.npy"

    def get(self, audio_path: Path, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        unknown = [k for k in kinds if k not in FEATURES]
        if unknown:
            raise KeyError(f"unknown feature kind(s) {unknown}; known: {sorted(FEATURES)}")
        digest = _file_digest(audio_path)
        paths = {k: self.root / f"{digest}.{k}.npy" for k in kinds}
        out: dict[str, np.ndarray] = {}
        audio: np.ndarray | None = None
        for kind, path in paths.items():
            if path.is_file():
                out[kind] = np.load(path)
                continue
            if audio is None:
                audio = load_audio(audio_path, self.config)
            out[kind] = FEATURES[kind](audio, self.config).astype(np.float32)
            atomic_save_npy(path, out[kind])
        return out


# --------------------------------------------------------------------------------------------
# Examples and batches


@dataclass
class Example:
    id: str
    text: str
    text_ids: np.ndarray
    features: dict[str, np.ndarray]

    @property
    def num_frames(self) -> int:
        return int(next(iter(self.features.values())).shape[0])


def load_examples(
    utterances: Sequence[Utterance],
    config: AudioConfig,
    kinds: Sequence[str] = ("mel",),
    processor: TextProcessor | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> list[Example]:
    """Text ids and cached features for each utterance, with a progress bar."""
    processor = processor or TextProcessor()
    cache = cache or FeatureCache(config)
    examples = []
    for utt in tqdm(utterances, desc="features", unit="utt", disable=not progress, leave=False):
        ids = np.asarray(processor.encode(utt.text), dtype=np.int64)
        examples.append(Example(utt.id, utt.text, ids, cache.get(utt.audio_path, kinds)))
    return examples


@dataclass
class Batch:
    """Padded tensors, time-major: text_ids [B, L], features[k] [B, T, ...], lengths [B].

    `num_frames` is padded up to a multiple of `frame_multiple` (Tacotron's reduction factor r)
    while `frame_lengths` keep the true lengths, so losses mask by the truth.
    """

    ids: list[str]
    texts: list[str]
    text_ids: torch.Tensor
    text_lengths: torch.Tensor
    features: dict[str, torch.Tensor]
    frame_lengths: torch.Tensor
    frame_multiple: int = 1
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def mel(self) -> torch.Tensor:
        return self.features["mel"]

    @property
    def text_mask(self) -> torch.Tensor:
        return sequence_mask(self.text_lengths, self.text_ids.shape[1])

    @property
    def frame_mask(self) -> torch.Tensor:
        return sequence_mask(self.frame_lengths, self.mel.shape[1])

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Batch(
            self.ids,
            self.texts,
            self.text_ids.to(device),
            self.text_lengths.to(device),
            move(self.features),
            self.frame_lengths.to(device),
            self.frame_multiple,
            move(self.extras),
        )


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Bool [B, max_length], True on valid positions."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def collate(
    examples: Sequence[Example],
    frame_multiple: int = 1,
    pad_values: dict[str, float] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Pad a list of examples into a `Batch`; features padded with their silence value."""
    pad_values = pad_values or {}
    text_lengths = torch.tensor([len(e.text_ids) for e in examples], dtype=torch.long)
    text_ids = torch.full((len(examples), int(text_lengths.max())), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        text_ids[i, : len(e.text_ids)] = torch.from_numpy(e.text_ids)
    frame_lengths = torch.tensor([e.num_frames for e in examples], dtype=torch.long)
    max_frames = int(frame_lengths.max())
    max_frames = -(-max_frames // frame_multiple) * frame_multiple
    features = {}
    for kind in examples[0].features:
        first = examples[0].features[kind]
        padded = np.full((len(examples), max_frames, *first.shape[1:]), pad_values.get(kind, 0.0), dtype=np.float32)
        for i, e in enumerate(examples):
            padded[i, : e.num_frames] = e.features[kind]
        features[kind] = torch.from_numpy(padded)
    return Batch(
        [e.id for e in examples],
        [e.text for e in examples],
        text_ids,
        text_lengths,
        features,
        frame_lengths,
        frame_multiple,
    )


def bucket_batches(lengths: Sequence[int], batch_size: int, seed: int, bucket_factor: int = 4) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within pools of batch_size*bucket_factor, chunk.

    Similar lengths share a batch (little padding) while the order of batches stays random.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def iterate_batches(
    examples: Sequence[Example], batch_size: int, seed: int, frame_multiple: int = 1, pad_values: dict[str, float] | None = None
) -> Iterable[Batch]:
    """One epoch of bucketed, padded batches."""
    for indices in bucket_batches([e.num_frames for e in examples], batch_size, seed):
        yield collate([examples[i] for i in indices], frame_multiple, pad_values)
