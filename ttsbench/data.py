"""LJSpeech-format corpora: reading, validation, splits, and the facts kept per audio file.

A corpus folder holds `metadata.csv` (`id|text|normalized_text`, UTF-8) and `wavs/ID.wav`
(`wavs/ID.flac` is accepted too: the embedded corpus ships FLAC to stay small). Everything is
validated up front and every problem is reported at once, as `FILE:LINE: message`, so a user
fixes a broken corpus in one pass instead of one crash at a time. Free of torch: the feature
workers and `data check` import it; examples and batches live in `ttsbench.batches`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ttsbench.cachedir import cache_root
from ttsbench.errors import UserError
from ttsbench.fileindex import FileKey, file_index, file_key, flush_all
from ttsbench.options import EMBEDDED
from ttsbench.text import TextProcessor, UnknownCharactersError

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


class CorpusError(UserError, ValueError):
    """Every problem found in a corpus; str() is one `FILE:LINE: message` line per problem."""

    def __init__(self, problems: Sequence[CorpusProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple:  # pickled by a job process: rebuild from the problems, not the text
        return (type(self), (self.problems,))


@dataclass
class Corpus:
    root: Path
    utterances: list[Utterance]

    @property
    def name(self) -> str:
        return EMBEDDED if self.root == embedded_corpus_path() else self.root.name

    def __len__(self) -> int:
        return len(self.utterances)

    def digest(self) -> str:
        """Content digest of every id, text and audio file: what a resumed training must match."""
        hasher = hashlib.blake2b(digest_size=12)
        for utterance in sorted(self.utterances, key=lambda u: u.id):
            hasher.update(f"{utterance.id}|{utterance.text}|{file_digest(utterance.audio_path)}\n".encode())
        flush_all()
        return hasher.hexdigest()

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}

    @property
    def is_full_ljspeech(self) -> bool:
        """True when every id of the standard LJSpeech split is present."""
        ids = {u.id for u in self.utterances}
        return all(set(standard_split_ids(s)) <= ids for s in SPLITS)

    def split(self, seed: int = 0, val_count: int | None = None, test_count: int | None = None) -> dict[str, list[Utterance]]:
        """The corpus's own `split/*.txt` files if it has them (synthetic corpora keep digit
        strings disjoint that way), else the standard split for full LJSpeech, else a seeded
        split by count. Explicit counts always ask for the seeded split."""
        if val_count is None and test_count is None:
            own = _split_from_files(self)
            if own is not None:
                return own
        if self.is_full_ljspeech and val_count is None and test_count is None:
            index = self.by_id()
            return {s: [index[i] for i in standard_split_ids(s)] for s in SPLITS}
        return split_by_count(self.utterances, seed=seed, val_count=val_count, test_count=test_count)


def _split_from_files(corpus: Corpus) -> dict[str, list[Utterance]] | None:
    """`root/split/{train,val,test}.txt` (one id a line) as utterances; None unless all three exist."""
    paths = {s: corpus.root / "split" / f"{s}.txt" for s in SPLITS}
    if not all(p.is_file() for p in paths.values()):
        return None
    index = corpus.by_id()
    out: dict[str, list[Utterance]] = {}
    for split, path in paths.items():
        out[split] = []
        for line_no, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            utt_id = line.strip()
            if not utt_id:
                continue
            if utt_id not in index:
                raise ValueError(f"{path}:{line_no}: id {utt_id!r} is not in the corpus (or has a problem)")
            out[split].append(index[utt_id])
    return out


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


def _not_a(what: str, path: Path, kind: str) -> str:
    """Why `path` is not the {kind} it should be: absent, the other kind, or a symlink loop."""
    if path.is_symlink() and not path.exists():
        try:
            path.resolve(strict=True)
        except (RuntimeError, OSError) as err:  # a loop: RuntimeError before Python 3.13, ELOOP after
            if isinstance(err, RuntimeError) or err.errno == errno.ELOOP:
                return f"{what} is a symbolic link that loops back on itself"
            return f"{what} is a symbolic link to a path that does not exist"
    if path.exists():
        found = "a folder" if path.is_dir() else "a file" if path.is_file() else "neither a file nor a folder"
        return f"{what} is {found}, not a {kind}"
    return f"{what} does not exist"


def _find_audio(wav_dir: Path, utt_id: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        candidate = wav_dir / f"{utt_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


# Audio that loads but poisons training. -60 dBFS peak is ~33/32768 in 16-bit: hiss, not speech;
# the quietest clips of real LJSpeech peak around -6 dBFS, so real quiet speech clears it widely.
SILENCE_DBFS = -60.0
MAX_CHARS_PER_SECOND = 40  # LJSpeech reads about 15; a text beyond this cannot be what the clip says
SHORT_TEXT_ALLOWANCE = 20  # characters any clip may carry, so a short "Yes, sir." is never refused
MIN_SAMPLE_RATE = 8000  # telephone band: anything lower holds no intelligible speech
_UTF8_BOM = b"\xef\xbb\xbf"
_READ_BLOCK_FRAMES = 1 << 18  # ~12 s at 22.05 kHz: one read for an LJSpeech clip, bounded memory for a long file
SCAN_FACT = "audio-scan-1"  # the file index's name for a `_scan_audio` result: bump when that changes
DIGEST_FACT = "blake2b-12"  # ... and for a file's content digest
_NO_SIZE = 0xFFFFFFFF  # data-chunk size written by streaming WAV writers that never knew the length


@dataclass(frozen=True)
class _AudioScan:
    """What one pass over a file's samples tells about it."""

    sample_rate: int
    declared_frames: int
    frames: int
    peak: float
    non_finite: int
    first_non_finite: int
    error: str | None


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the WAV data chunk declares, from the raw header.

    libsndfile quietly shrinks its frame count to what a cut-off file holds, so only the RIFF
    header still shows that samples are missing. None when not a plain RIFF/WAVE or unknowable.
    """
    block_align = 0
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while len(chunk := handle.read(8)) == 8:
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                return None if size == _NO_SIZE or not block_align else size // block_align
            if chunk_id == b"fmt ":
                fmt = handle.read(size + (size & 1))
                block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)
    return None


def _scan_audio(path: Path) -> _AudioScan:
    """Read every sample once, in blocks, keeping only the frame count, peak and NaN/inf count.

    Raises when the file cannot be opened at all; a failure part-way is kept in `error`.
    """
    with sf.SoundFile(str(path)) as audio:
        sample_rate, declared = audio.samplerate, audio.frames
        frames, peak, non_finite, first_bad, error = 0, 0.0, 0, -1, None
        try:
            while len(block := audio.read(_READ_BLOCK_FRAMES, dtype="float32")):
                block_peak = float(max(block.max(), -block.min()))  # NaN/inf propagate: a free finite check
                if not np.isfinite(block_peak):
                    bad = ~np.isfinite(block)
                    if first_bad < 0:
                        first_bad = frames + int(np.argmax(bad.any(axis=1) if bad.ndim == 2 else bad))
                    non_finite += int(bad.sum())
                    finite = block[~bad]
                    block_peak = float(np.abs(finite).max()) if finite.size else 0.0
                peak = max(peak, block_peak)
                frames += len(block)
        except Exception as err:  # noqa: BLE001 - libsndfile raises several types for a broken stream
            error = str(err).strip()
    if path.suffix.lower() == ".wav":
        declared = max(declared, _wav_declared_frames(path) or 0)
    return _AudioScan(sample_rate, declared, frames, peak, non_finite, first_bad, error)


def _scan_fact(path: Path) -> dict[str, Any]:
    """`_scan_audio` as the file index stores it."""
    return asdict(_scan_audio(path))


def _cached_scan(path: Path) -> _AudioScan:
    """`_scan_audio` of a file, read from the file index when this version of it was scanned before."""
    return _AudioScan(**file_index(cache_root()).lookup(path, SCAN_FACT, _scan_fact))


def _audio_defects(path: Path, scan: _AudioScan, min_seconds: float, max_seconds: float) -> list[str]:
    """Every reason a readable file would break or poison training, one message each."""
    if scan.error is not None:  # the level and length of a half-read stream would only add noise
        frames = f"{scan.frames} of {scan.declared_frames} frames"
        return [f"unreadable audio {path}: decoding failed after {frames} (truncated or corrupt): {scan.error}"]
    defects = []
    if scan.frames < scan.declared_frames:
        defects.append(f"truncated audio: {path} holds {scan.frames} of the {scan.declared_frames} frames its header declares")
    if scan.non_finite:
        at = scan.first_non_finite / scan.sample_rate
        defects.append(f"non-finite audio: {path} has {scan.non_finite} NaN/inf sample(s), the first at {at:.3f} s")
    if scan.peak == 0.0:
        defects.append(f"silent audio: {path} is all zeros (peak -inf dBFS)")
    elif (level := 20.0 * float(np.log10(scan.peak))) < SILENCE_DBFS:
        defects.append(f"near-silent audio: {path} peaks at {level:.1f} dBFS (below {SILENCE_DBFS:g} dBFS)")
    if scan.peak > 1.0 + 1e-6:
        defects.append(f"over-range audio: {path} peaks at {scan.peak:.2f}, beyond full scale (1.0): float samples "
                       "that clip when written, and a level no recording has")
    if scan.sample_rate < MIN_SAMPLE_RATE:
        defects.append(f"sample rate too low: {path} is {scan.sample_rate} Hz (at least {MIN_SAMPLE_RATE} Hz: "
                       "below it there is no speech band to learn)")
    seconds = scan.frames / scan.sample_rate
    if seconds < min_seconds:
        defects.append(f"audio too short: {path} is {seconds:.3f} s (min_seconds={min_seconds:g})")
    if seconds > max_seconds:
        defects.append(f"audio too long: {path} is {seconds:.2f} s (max_seconds={max_seconds:g})")
    return defects


def _silently_dropped(text: str, processor: TextProcessor, memo: dict[str, bool]) -> list[str]:
    """Characters the cleaners delete without a trace (unidecode has no ASCII for emoji), so
    `encode` never sees them and the model trains on text that no longer matches the audio.

    Combining and format marks (accents of decomposed text, zero-width joiners) are meant to go.
    """
    dropped = set()
    for char in set(text):
        if char.isascii() or char.isspace() or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        if char not in memo:
            memo[char] = not processor.clean(char)
        if memo[char]:
            dropped.add(char)
    return sorted(dropped)


@dataclass(frozen=True)
class Listed:
    """A metadata line whose id passed, with its audio file (not read yet; None when missing)."""

    line: int
    id: str
    text: str
    audio_path: Path | None


@dataclass
class CorpusListing:
    """metadata.csv checked line by line, before any audio is read (see `list_corpus`)."""

    root: Path
    metadata: Path
    entries: list[Listed]
    problems: list[CorpusProblem]


def check_corpus(
    path: str | Path,
    processor: TextProcessor | None = None,
    *,
    min_seconds: float = 0.3,
    max_seconds: float = 20.0,
) -> tuple[Corpus, list[CorpusProblem]]:
    """Read and validate a corpus folder; returns the good utterances and every problem found.

    Every sample is read once, so audio that loads but would break or poison training (NaN/inf,
    silence, a cut-off file, a clip outside [min_seconds, max_seconds]) is caught here too.
    """
    return check_listed_audio(list_corpus(path, processor), min_seconds=min_seconds, max_seconds=max_seconds)


def list_corpus(path: str | Path, processor: TextProcessor | None = None) -> CorpusListing:
    """The first half of `check_corpus`: every line's id (and duplicates) and its text under the
    text front end. Reads no audio."""
    return check_texts(read_metadata(path), processor)


def read_metadata(path: str | Path) -> CorpusListing:
    """metadata.csv's lines with their ids checked (and duplicates) and each audio file looked
    up, texts not checked yet: what `prepare_corpus` needs to start reading audio in its pool
    before `check_texts` runs."""
    root = resolve_corpus_path(path)
    metadata = root / "metadata.csv"
    if not root.is_dir():
        return CorpusListing(root, metadata, [], [CorpusProblem(root, 0, _not_a("corpus folder", root, "folder"))])
    if not metadata.is_file():
        return CorpusListing(root, metadata, [], [CorpusProblem(metadata, 0, _not_a("metadata.csv", metadata, "file"))])
    listing = CorpusListing(root, metadata, [], [])
    first_seen: dict[str, int] = {}
    content = metadata.read_bytes().removeprefix(_UTF8_BOM)  # Excel and Notepad write one
    for line_no, raw in enumerate(content.splitlines(), start=1):
        entry = _metadata_entry(raw)
        if entry is None:
            continue
        if isinstance(entry, str):
            listing.problems.append(CorpusProblem(metadata, line_no, entry))
            continue
        utt_id, text = entry
        if utt_id in first_seen:
            message = f"duplicate id {utt_id!r} (first on line {first_seen[utt_id]})"
            listing.problems.append(CorpusProblem(metadata, line_no, message))
            continue
        first_seen[utt_id] = line_no
        listing.entries.append(Listed(line_no, utt_id, text, _find_audio(root / "wavs", utt_id)))
    return listing


def check_texts(listing: CorpusListing, processor: TextProcessor | None = None) -> CorpusListing:
    """`listing` less the lines whose text the front end cannot take, those lines named among its
    problems (so a line with a bad text and no audio is named for its text)."""
    processor = processor or TextProcessor()
    dropped_memo: dict[str, bool] = {}
    checked = CorpusListing(listing.root, listing.metadata, [], list(listing.problems))
    for entry in listing.entries:
        if problem := _text_problem(entry.text, processor, dropped_memo):
            checked.problems.append(CorpusProblem(listing.metadata, entry.line, problem))
        else:
            checked.entries.append(entry)
    return checked


def check_listed_audio(listing: CorpusListing, *, min_seconds: float = 0.3,
                       max_seconds: float = 20.0) -> tuple[Corpus, list[CorpusProblem]]:
    """The second half of `check_corpus`: each listed file's presence and scan (from the file
    index when this version of it was read before), its defects, and every problem in line order."""
    problems = list(listing.problems)
    utterances: list[Utterance] = []
    for entry in listing.entries:
        found = _audio_entry(listing.root / "wavs", entry, min_seconds, max_seconds)
        if isinstance(found, _AudioScan) and (mismatch := _text_rate_problem(entry, found)):
            found = [mismatch]
        if isinstance(found, _AudioScan):
            utterances.append(Utterance(entry.id, entry.text, entry.audio_path, entry.line, found.frames,
                                        found.sample_rate))
        else:
            problems += [CorpusProblem(listing.metadata, entry.line, message) for message in found]
    if not utterances and not problems:
        problems.append(CorpusProblem(listing.metadata, 1, "metadata.csv lists no utterances"))
    flush_all()
    return Corpus(listing.root, utterances), sorted(problems, key=lambda problem: problem.line)


def _text_rate_problem(entry: Listed, scan: _AudioScan) -> str | None:
    """A text far longer than its audio could be read: the wrong text (or a pasted book), and an
    attention matrix of characters x frames that would not fit in memory."""
    seconds = scan.frames / scan.sample_rate
    limit = MAX_CHARS_PER_SECOND * seconds + SHORT_TEXT_ALLOWANCE
    if len(entry.text) <= limit:
        return None
    return (f"text of {len(entry.text):,} characters for {seconds:.2f} s of audio (at most {limit:,.0f}: "
            f"{MAX_CHARS_PER_SECOND} per second plus {SHORT_TEXT_ALLOWANCE}; speech is about 15 per second): "
            f"the text does not match {entry.audio_path}")


def _metadata_entry(raw: bytes) -> tuple[str, str] | str | None:
    """(id, text) of one metadata line, what is wrong with it, or None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
    if not line.strip():
        return None
    fields = line.split("|")
    if len(fields) not in (2, 3):
        return f"malformed line: expected 'id|text|normalized_text', found {len(fields)} field(s)"
    utt_id = fields[0].strip()
    text = (fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]).strip()
    if not utt_id:
        return "empty id"
    if "/" in utt_id or "\\" in utt_id or ".." in utt_id:
        return f"id {utt_id!r} contains a path separator or '..'"
    if any(not c.isprintable() for c in utt_id):
        return f"id {utt_id!r} contains a control character (it names a file)"
    if not text:
        return f"empty text for {utt_id!r}"
    return utt_id, text


def _text_problem(text: str, processor: TextProcessor, dropped_memo: dict[str, bool]) -> str | None:
    """Why the text front end cannot take `text` (unknown or silently dropped characters), if so."""
    try:
        processor.encode(text)
    except UnknownCharactersError as err:
        return str(err)
    if processor.on_unknown == "error" and (dropped := _silently_dropped(text, processor, dropped_memo)):
        listed = ", ".join(repr(c) for c in dropped)
        return f"unknown characters {listed} in {text!r}: the text cleaners would silently drop them"
    return None


def _audio_entry(wav_dir: Path, entry: Listed, min_seconds: float, max_seconds: float) -> _AudioScan | list[str]:
    """The scan of an utterance's audio, or every defect found in it."""
    audio_path = entry.audio_path
    if audio_path is None:
        folders = [wav_dir / f"{entry.id}{suffix}" for suffix in AUDIO_SUFFIXES
                   if (wav_dir / f"{entry.id}{suffix}").is_dir()]
        if folders:
            return [f"missing audio: {folders[0]} is a folder, not an audio file"]
        return [f"missing audio: {wav_dir / (entry.id + '.wav')} does not exist"]
    try:
        scan = _cached_scan(audio_path)
    except UserError:  # the file index (the cache), not this file: one error, not one per clip
        raise
    except Exception as err:  # noqa: BLE001 - soundfile raises several types for broken files
        return [f"unreadable audio {audio_path}: {str(err).strip()}"]
    if scan.declared_frames == 0:
        return [f"zero-length audio: {audio_path}"]
    return _audio_defects(audio_path, scan, min_seconds, max_seconds) or scan


def load_corpus(
    path: str | Path,
    processor: TextProcessor | None = None,
    *,
    min_seconds: float = 0.3,
    max_seconds: float = 20.0,
) -> Corpus:
    """Like `check_corpus`, but raises `CorpusError` listing every problem."""
    corpus, problems = check_corpus(path, processor, min_seconds=min_seconds, max_seconds=max_seconds)
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
# File facts: what the file index keeps per version of an audio file


def file_digest(path: Path) -> str:
    """Content hash of a file, computed once per version of it (the file index keeps it)."""
    return file_index(cache_root()).lookup(path, DIGEST_FACT, _hash_file)


def facts_unknown(paths: Sequence[Path]) -> list[Path]:
    """The files whose scan and digest the file index does not hold for their current version."""
    index = file_index(cache_root())
    return [path for path in paths if not index.has(path, (SCAN_FACT, DIGEST_FACT))]


def file_facts(path: Path) -> tuple[FileKey, dict[str, Any]]:
    """One read of a file: its audio scan and content digest, for the version it was read at
    (computed in a worker, then stored by `remember_facts`). No facts for a file that cannot be
    opened: `check_corpus` reports that itself."""
    key = file_key(path)
    try:
        return key, {SCAN_FACT: _scan_fact(path), DIGEST_FACT: _hash_file(path)}
    except Exception:  # noqa: BLE001 - soundfile raises several types for broken files
        return key, {}


def remember_facts(key: FileKey, facts: Mapping[str, Any]) -> None:
    index = file_index(cache_root())
    for kind, value in facts.items():
        index.store(key, kind, value)


def _hash_file(path: Path) -> str:
    hasher = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            hasher.update(block)
    return hasher.hexdigest()
