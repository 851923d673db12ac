"""The feature cache: each feature computed once per (front end, audio content, kind), stored in
packs that a job maps instead of copying.

A pack is one file holding the features of several audio files (a worker's chunk of
`ttsbench data prepare`, or the one file a job computed itself): a JSON table of contents, then
each array at a 64-byte-aligned offset. One pack per chunk instead of one .npy file per feature:
creating 26,200 small files for LJSpeech's 13,100 clips cost ~6.5 s of kernel time on ext4,
against ~1 s to write the same bytes into a few hundred files, and that time was taken from the
workers' cores. Packs are written whole (a temporary name, then a rename) and never changed, so a
killed pass leaves only complete ones and a cache is just the union of its packs' tables.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttsbench.audio import AudioConfig, Clip, linear_feature, load_audio, mel_feature
from ttsbench.cachedir import cache_root
from ttsbench.fileio import atomic_path

FeatureFunction = Callable[[Clip], np.ndarray]  # one kind, [frames, ...], from a clip under its front end
FEATURES: dict[str, FeatureFunction] = {"mel": mel_feature, "linear": linear_feature}
_REGISTERED_BY: dict[str, str] = {}  # kind -> the module whose import registers it (none for the built-in two)
Requests = dict[AudioConfig, tuple[str, ...]]  # front end -> the feature kinds computed with it

PACK_SUFFIX = ".pack"
_MAGIC = b"TTSBPACK"
_PREFIX = struct.Struct("<8sQ")  # the magic, then the table's length in bytes
_ALIGN = 64
_VERSION = 1  # of the table's layout; a reader skips packs of another version
_SETTLED_NS = 3_000_000_000  # a folder mtime this old cannot hide a later change
_ABANDONED_NS = 3600 * 1_000_000_000  # a pack still being written after this long lost its writer to a kill


def register_feature(name: str, function: FeatureFunction, module: str | None = None) -> None:
    """Add a cached feature kind (e.g. pitch for FastSpeech2): clip -> [frames, ...]. `module`
    is the one whose import makes this call (pass `__name__`): a feature worker, a fresh
    process, imports it to have the kind. Left out, it is the function's own module, which is
    wrong for a partial or a function defined elsewhere."""
    FEATURES[name] = function
    _REGISTERED_BY[name] = module or function.__module__


def feature_modules(kinds: Iterable[str]) -> tuple[str, ...]:
    """The modules registering these kinds: what a fresh worker process imports so that FEATURES
    holds them (`ttsbench.prosody` for FastSpeech2's pitch and energy, a plugin's own module)."""
    return tuple(sorted({_REGISTERED_BY[kind] for kind in kinds if kind in _REGISTERED_BY}))


def default_cache_dir() -> Path:
    return cache_root() / "features"


def compute_features(audio_path: Path, config: AudioConfig, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """One decode of the file, then each kind from it (they share its |STFT|), as float32."""
    if unknown := [k for k in kinds if k not in FEATURES]:
        raise KeyError(f"unknown feature kind(s) {unknown}; known: {sorted(FEATURES)}")
    clip = Clip(load_audio(audio_path, config), config)
    return {kind: FEATURES[kind](clip).astype(np.float32) for kind in kinds}


# --------------------------------------------------------------------------------------------
# Packs


class PackError(ValueError):
    """A pack whose table cannot be read or whose file is shorter than its table says."""


class NewerPackError(Exception):
    """A pack in a format this version cannot read (a newer ttsbench shares the cache): left
    alone, not removed, and its features are computed again here."""


@dataclass(frozen=True)
class Stored:
    """Where one cached array lives: its pack, byte offset, shape and dtype."""

    pack: Path
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def frames(self) -> int:
        return self.shape[0]

    @property
    def end(self) -> int:
        return self.offset + math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def map(self) -> np.memmap:
        """The array, mapped read-only: pages are read when touched, and freed with the array."""
        return np.memmap(self.pack, np.dtype(self.dtype), "r", self.offset, self.shape)


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def write_pack(path: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, Stored]:
    """Write `arrays` (by key) as one pack, atomically; where each landed."""
    contiguous = {key: np.ascontiguousarray(array) for key, array in arrays.items()}
    table, offset = {}, 0
    for key, array in contiguous.items():
        table[key] = {"offset": offset, "shape": list(array.shape), "dtype": array.dtype.str}
        offset = _aligned(offset + array.nbytes)
    header = json.dumps({"version": _VERSION, "arrays": table}, separators=(",", ":")).encode()
    start = _aligned(_PREFIX.size + len(header))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(_PREFIX.pack(_MAGIC, len(header)) + header)
        for key, array in contiguous.items():
            handle.seek(start + table[key]["offset"])
            handle.write(memoryview(array).cast("B"))
    return _located(path, start, table)


def read_table(path: Path) -> dict[str, Stored]:
    """A pack's table of contents (nothing of its arrays is read): PackError when damaged,
    NewerPackError when written by a later format."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            magic, length = _PREFIX.unpack(handle.read(_PREFIX.size))
            if magic != _MAGIC:
                raise PackError("not a ttsbench feature pack")
            if length > size - _PREFIX.size:
                raise PackError(f"truncated: {size} bytes, its table alone takes {length}")
            header = json.loads(handle.read(length))
        if header["version"] != _VERSION:
            raise NewerPackError(f"format version {header['version']}; this ttsbench reads version {_VERSION}")
        stored = _located(path, _aligned(_PREFIX.size + length), header["arrays"])
        end = max((s.end for s in stored.values()), default=0)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PackError(f"unreadable table ({type(err).__name__}: {err})") from None
    if size < end:
        raise PackError(f"truncated: {size} bytes, its arrays end at {end}")
    return stored


def _located(path: Path, start: int, table: Mapping[str, Mapping]) -> dict[str, Stored]:
    return {key: Stored(path, start + entry["offset"], tuple(entry["shape"]), entry["dtype"])
            for key, entry in table.items()}


# --------------------------------------------------------------------------------------------
# The cache


class FeatureFiles(MutableMapping):
    """An utterance's cached features, mapped from their packs at each access.

    Nothing is copied into memory until a batch is collated, so a job's resident size is that of
    a batch whatever the corpus size (13,100 LJSpeech clips are ~15 GB of linear spectrograms);
    the OS page cache, shared by every job, keeps the hot packs. A kind assigned an array keeps
    that array in memory instead.
    """

    def __init__(self, stored: Mapping[str, Stored] | None = None):
        self._items: dict[str, Stored | np.ndarray] = dict(stored or {})

    def __getitem__(self, kind: str) -> np.ndarray:
        item = self._items[kind]
        return item.map() if isinstance(item, Stored) else item

    def __setitem__(self, kind: str, array: np.ndarray) -> None:
        self._items[kind] = array

    def __delitem__(self, kind: str) -> None:
        del self._items[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def source(self, kind: str) -> str:
        """Where a kind's array comes from: its pack file, or memory."""
        item = self._items[kind]
        return str(item.pack) if isinstance(item, Stored) else "memory"

    def frames(self, kind: str) -> int:
        item = self._items[kind]
        return item.frames if isinstance(item, Stored) else int(item.shape[0])

    def include(self, other: "FeatureFiles") -> None:
        """Add another front end's kinds (by reference: nothing is loaded)."""
        self._items.update(other._items)


class FeatureCache:
    """The features of one front end, by audio content digest and kind, in the packs of one
    folder (named by the front end's digest).

    It lists the folder on first use; other processes add packs meanwhile, and `refresh` reads
    those (a preparation's workers refresh once per chunk). A lookup never lists the folder
    itself: a job computing its features one file at a time would list a growing folder once
    per file."""

    def __init__(self, config: AudioConfig, root: Path | None = None):
        self.config = config
        self.root = (root or default_cache_dir()) / config.digest()
        self._stored: dict[str, Stored] = {}
        self._packs: dict[str, dict[str, Stored]] = {}  # pack file name -> its table
        self._listed: int | None | bool = False  # the folder's mtime when last listed (None: no folder)
        self.old_folders: list[Path] = []  # the .npy shard folders of ttsbench before packs, as last listed

    def refresh(self) -> None:
        """Read the tables of packs added since the last look; forget packs since removed. A
        damaged pack (a disk fault: packs are written atomically) is removed with a warning, so
        its features are computed again. The folder is listed again when its mtime changed, or
        is too recent to tell: mtimes are coarse (a clock tick; seconds on some filesystems),
        so two changes within one can leave the same mtime. A pack's temporary file left by a
        killed writer is removed once it is an hour old."""
        try:
            stamp = self.root.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp == self._listed and (stamp is None or time.time_ns() - stamp > _SETTLED_NS):
            return
        self._listed = stamp
        entries = list(os.scandir(self.root)) if stamp is not None else []
        _remove_abandoned([entry for entry in entries if entry.name.endswith(".tmp")])
        names = {entry.name for entry in entries if entry.name.endswith(PACK_SUFFIX)}
        self.old_folders = [Path(entry.path) for entry in entries if entry.is_dir()]
        self._forget([self._packs.pop(gone) for gone in self._packs.keys() - names])
        for name in names - self._packs.keys():
            try:
                self._add(name, read_table(self.root / name))
            except PackError as err:
                warnings.warn(f"{self.root / name}: damaged feature pack, removed: {err}", stacklevel=2)
                (self.root / name).unlink(missing_ok=True)
            except NewerPackError:
                self._packs[name] = {}  # not read again at each listing
            except FileNotFoundError:  # removed between the listing and the read
                pass

    def _add(self, name: str, stored: Mapping[str, Stored]) -> None:
        self._packs[name] = dict(stored)
        self._stored.update(stored)

    def _forget(self, tables: Sequence[Mapping[str, Stored]]) -> None:
        """Drop removed packs' entries; a key another pack also holds (two writers computed the
        same clip) is found there instead of being computed again."""
        orphaned = {key for table in tables for key, stored in table.items() if self._stored.get(key) == stored}
        for key in orphaned:
            del self._stored[key]
        for table in self._packs.values() if orphaned else ():
            self._stored.update((key, table[key]) for key in orphaned & table.keys())

    def find(self, digest: str, kind: str) -> Stored | None:
        """Where this content's `kind` is stored, as of the last refresh."""
        if self._listed is False:
            self.refresh()
        return self._stored.get(f"{digest}.{kind}")

    def missing(self, digest: str, kinds: Sequence[str]) -> list[str]:
        """The kinds not cached for this content, as of the last refresh."""
        return [kind for kind in kinds if self.find(digest, kind) is None]

    def store(self, features: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Write computed features (digest -> kind -> array) as one pack."""
        name = f"{uuid.uuid4().hex}{PACK_SUFFIX}"
        arrays = {f"{digest}.{kind}": array for digest, kinds in features.items() for kind, array in kinds.items()}
        self._add(name, write_pack(self.root / name, arrays))

    def files(self, audio_path: Path, kinds: Sequence[str], digest: str) -> FeatureFiles:
        """The file's features, computing whatever is missing first."""
        if missing := self.missing(digest, kinds):
            self.store({digest: compute_features(audio_path, self.config, missing)})
        return FeatureFiles({kind: self._stored[f"{digest}.{kind}"] for kind in kinds})

    def get(self, audio_path: Path, kinds: Sequence[str], digest: str) -> dict[str, np.ndarray]:
        """The file's features as arrays in memory."""
        files = self.files(audio_path, kinds, digest)
        return {kind: np.array(files[kind]) for kind in kinds}


def _remove_abandoned(temporaries: Iterable[os.DirEntry]) -> None:
    """Delete the temporary files of packs whose writer was killed (SIGKILL, power cut: any
    other ending removes its own). A live writer finishes a pack in well under the hour."""
    for entry in temporaries:
        try:
            if time.time_ns() - entry.stat().st_mtime_ns > _ABANDONED_NS:
                os.unlink(entry.path)
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
