"""Features ahead of training: everything a set of systems trains on, for every utterance of a
corpus, computed once in a process pool.

`ttsbench data prepare` runs it on its own; `ttsbench run` runs it once before a suite's jobs and
`ttsbench train` before its run, so jobs find their features cached instead of each extracting
them serially (FastSpeech2's pitch alone is ~0.2 s a clip: 45 minutes for LJSpeech on one core).
Resumable: the cache is content-addressed and each chunk's pack is written atomically, so a killed
pass leaves only whole packs, and the next one computes just the rest.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence, Set
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from ttsbench.audio import AudioConfig
from ttsbench.data import (DIGEST_FACT, Corpus, CorpusError, check_listed_audio, check_texts, facts_unknown,
                           file_digest, file_facts, read_metadata, remember_facts)
from ttsbench.errors import UserError
from ttsbench.featurecache import FeatureCache, compute_features, default_cache_dir, feature_modules
from ttsbench.fileindex import FileKey, flush_all
from ttsbench.forkserver import available_cores, exit_with, worker_context

MAX_CHUNK = 32  # files per task: large enough to hide the pool's overhead, small for a live ETA
QUEUED = 2  # chunks submitted ahead per pool process: one to work on, one waiting behind it
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PrepareSummary:
    utterances: int
    computed: int  # utterances that had at least one feature computed now
    seconds: float
    workers: int

    def __str__(self) -> str:
        cached = self.utterances - self.computed
        return (f"features of {self.utterances} utterances: {self.computed} computed, {cached} already cached, "
                f"in {self.seconds:.1f} s ({self.workers} worker{'s' if self.workers != 1 else ''})")


class Workers:
    """N processes computing one pass, or this process alone when N is 1.

    With N > 1 this process only feeds a pool of N and takes in what comes back (the facts of
    new files, stored as each chunk arrives). Every worker is forked from the fork server, which
    has imported this module and the librosa its features call (`ttsbench.forkserver.PRELOAD`)
    and no torch, so the pool is ready ~1.4 s after launch, while this process still reads the
    corpus. Each worker runs one thread. The pool is started by `start` or on first use, and
    shared by the passes of one preparation. Work of a chunk or less (the 24 embedded clips)
    never starts a pool.
    """

    def __init__(self, count: int | None = None, progress: bool = True):
        self.count = count or available_cores()
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # whole packs only: each is written atomically

    def start(self) -> ProcessPoolExecutor:
        """Start the pool's processes without waiting for them. A submit starts a process and
        blocks until the fork server has done its imports, so a thread makes one empty submit
        per process while this one goes on."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.count, mp_context=worker_context(), initializer=_init_worker,
                                             initargs=(os.getpid(),))
            threading.Thread(target=_start_processes, args=(self._pool, self.count), daemon=True).start()
        return self._pool

    def run(self, function: Callable[[Sequence[T]], list[R]], items: Sequence[T], desc: str,
            on_chunk: Callable[[list[R]], object] = lambda results: None) -> list[R]:
        """`function` over chunks of `items`, results concatenated (in no set order), with a
        progress bar and ETA; `on_chunk` sees each chunk's results as soon as they are in."""
        with tqdm(total=len(items), desc=desc, unit="file", disable=not self.progress or not items) as bar:
            if self.count == 1 or len(items) <= MAX_CHUNK:
                return [result for chunk in _chunks(items, MAX_CHUNK)
                        for result in _counted(function(chunk), len(chunk), bar, on_chunk)]
            return self._shared(self.start(), function, deque(_chunks(items, MAX_CHUNK)), bar, on_chunk)

    def _shared(self, pool: ProcessPoolExecutor, function: Callable[[Sequence[T]], list[R]],
                queue: deque[Sequence[T]], bar: tqdm, on_chunk: Callable[[list[R]], object]) -> list[R]:
        """Keep QUEUED chunks per process submitted, and take each chunk's results as it ends."""
        pending: dict[Future, int] = {}
        results: list[R] = []
        while queue or pending:
            while queue and len(pending) < QUEUED * self.count:
                chunk = queue.popleft()
                pending[pool.submit(function, chunk)] = len(chunk)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results += _counted(_chunk_result(future), pending.pop(future), bar, on_chunk)
        return results


def _chunk_result(future: Future) -> list[R]:
    """A chunk's results; a worker that died (a crash in a native library, the OOM killer) is a
    UserError: what the other chunks computed is kept, and the next run does the rest."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError("a feature worker process died (killed, out of memory, or crashed in a native library); "
                        "the features computed so far are kept: run the same command again to compute the rest, "
                        "with --workers 1 to see which file it dies on") from None


def _start_processes(pool: ProcessPoolExecutor, count: int) -> None:
    """One empty task per process: each submit that finds no idle process starts one. A pass
    that ended meanwhile (an error, Ctrl-C) shut the pool down: nothing is left to start."""
    try:
        for _ in range(count):
            pool.submit(int)
    except (RuntimeError, BrokenProcessPool):
        pass


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _counted(results: list[R], size: int, bar: tqdm, on_chunk: Callable[[list[R]], object]) -> list[R]:
    on_chunk(results)
    bar.update(size)
    return results


def _init_worker(command: int) -> None:
    """One thread per worker, so N workers keep N cores busy: the mel projection runs BLAS on one
    thread (`audio`), and a library a feature's module loads later (torch) reads this. The
    garbage collector back on (the fork server imports with it off: `ttsbench.gcoff`), with the
    objects inherited from the server frozen out of its collections."""
    exit_with(command)  # a SIGKILLed command takes its workers (and so its fork server) with it
    os.environ["OMP_NUM_THREADS"] = "1"
    gc.enable()
    gc.freeze()


@dataclass(frozen=True)
class FileTask:
    """One audio file's share of a preparation (what a worker is sent)."""

    path: str
    digest: str | None  # None: the file index does not know this version; the worker reads it first
    todo: tuple[tuple[AudioConfig, tuple[str, ...]], ...]  # kinds per front end; unchecked when digest is None


@dataclass(frozen=True)
class FileOutcome:
    """What a worker learnt about one file: its facts (for the index) and whether it computed."""

    key: FileKey | None  # None when the facts were known already
    facts: dict[str, Any]
    computed: bool
    failure: str | None  # `path: reason` when a feature could not be computed


def file_tasks(paths: Sequence[Path], unknown: Set[Path], requests: Mapping[AudioConfig, Sequence[str]],
               root: Path | None = None, progress: bool = True) -> list[FileTask]:
    """The work left per file. A file the index knows (not in `unknown`) is checked against the
    cache here and left out when complete (so a cached corpus starts no pool); an unknown one goes
    to the pool whole, which reads, hashes and checks it there instead of in this process."""
    todo = tuple((audio, tuple(kinds)) for audio, kinds in requests.items())
    caches = [(feature_cache(audio, root), kinds) for audio, kinds in todo]
    for cache, _ in caches:
        cache.refresh()  # this process may have looked before another wrote
        if cache.old_folders:
            warnings.warn(f"{cache.root}: {len(cache.old_folders)} folder(s) of .npy features from an older ttsbench "
                          "are no longer read (features are stored in packs now): delete them to free the space",
                          stacklevel=2)
    tasks: list[FileTask] = []
    for path in tqdm(paths, desc="checking the feature cache", unit="file", disable=not progress, leave=False):
        if path in unknown:
            tasks.append(FileTask(str(path), None, todo))
            continue
        digest = file_digest(path)
        missing = tuple((cache.config, tuple(kinds)) for cache, all_kinds in caches
                        if (kinds := cache.missing(digest, all_kinds)))
        if missing:
            tasks.append(FileTask(str(path), digest, missing))
    return tasks


def _remember(outcomes: Sequence[FileOutcome]) -> None:
    """Store the facts a chunk read, as it arrives: this runs while the pool is still working
    instead of after it, and an interrupted pass (Ctrl-C, an error) writes them all; a SIGKILL
    loses those not flushed yet (up to `fileindex._FLUSH_EVERY`), which are read again."""
    for outcome in outcomes:
        if outcome.key is not None:
            remember_facts(outcome.key, outcome.facts)


def feature_cache(config: AudioConfig, root: Path | None = None) -> FeatureCache:
    """One cache per front end and folder in each process, so that a worker reads each pack's
    table once, not once per chunk."""
    return _feature_cache(config, root or default_cache_dir())


@functools.lru_cache(maxsize=16)
def _feature_cache(config: AudioConfig, root: Path) -> FeatureCache:
    return FeatureCache(config, root)


Computed = dict[AudioConfig, dict[str, dict[str, np.ndarray]]]  # front end -> digest -> kind -> array


def prepare_chunk(chunk: Sequence[FileTask], root: Path | None = None,
                  modules: Sequence[str] = ()) -> list[FileOutcome]:
    """Do one chunk's tasks (in a worker), then store what they computed as one pack per front
    end. A file new to the file index (a copy, a touched file) may have its features stored
    under its content digest already: they are looked up once its digest is known. A disk
    error storing a pack stops the pass (the next chunks would meet it too); the packs of
    earlier chunks are kept. `modules` define the kinds (see `featurecache.feature_modules`):
    a plugin's kinds are registered when its module is imported, in the worker too."""
    for name in modules:
        importlib.import_module(name)
    for config in {config for task in chunk if task.digest is None for config, _ in task.todo}:
        feature_cache(config, root).refresh()  # the packs other workers wrote since
    computed: Computed = {}
    outcomes = [prepare_file(task, computed, root) for task in chunk]
    for config, features in computed.items():
        feature_cache(config, root).store(features)
    return outcomes


def prepare_file(task: FileTask, computed: Computed, root: Path | None = None) -> FileOutcome:
    """Read the file if it is new (scan + digest, one pass), then compute its missing features
    into `computed`, one decode per front end. A file that cannot be opened gets no features:
    the corpus check after the pass names it. A failure does not stop the others (see
    `prepare_corpus`)."""
    path = Path(task.path)
    key, facts = (None, {}) if task.digest else file_facts(path)
    digest = task.digest or facts.get(DIGEST_FACT)
    done = False
    for config, kinds in task.todo if digest else ():
        try:
            if missing := (kinds if task.digest else feature_cache(config, root).missing(digest, kinds)):
                computed.setdefault(config, {})[digest] = compute_features(path, config, missing)
                done = True
        except Exception as err:  # noqa: BLE001 - one bad file must not cost the others' work
            return FileOutcome(key, facts, done, f"{path}: {type(err).__name__}: {str(err).strip()}")
    return FileOutcome(key, facts, done, None)


def prepare_corpus(path: str | Path, requests: Mapping[AudioConfig, Sequence[str]], workers: Workers,
                   root: Path | None = None) -> tuple[Corpus, PrepareSummary]:
    """Validate a corpus and compute every requested feature not cached yet, in one pass of
    `workers` over its audio files: each new file is read, hashed and turned into features by
    one worker, so the pool's start-up falls inside the long pass and no core waits for a
    separate reading pass to end. The corpus check runs in two halves: its text checks in a
    thread beside the pool (~0.5 s for LJSpeech that would otherwise delay the pool's first
    chunk), its audio checks after the pass, on the scans the pool stored. A file that fails to
    compute does not stop the others: every computed file is kept, then a UserError names each
    failure (after a CorpusError, which says more).
    """
    started = time.perf_counter()
    root = root or default_cache_dir()  # here, not in the workers: they see the fork server's environment
    listing = read_metadata(path)
    files = list(dict.fromkeys(entry.audio_path for entry in listing.entries if entry.audio_path))
    unknown = set(facts_unknown(files))
    pooled = len(unknown) > MAX_CHUNK and workers.count > 1
    if pooled:
        workers.start()  # its processes start up while this one checks the cache
    with ThreadPoolExecutor(1) as side:
        texts = side.submit(check_texts, listing)
        if not pooled:
            texts.result()  # no pool to go beside: this thread computes, and the GIL is one
        tasks = file_tasks(files, unknown, requests, root, workers.progress)
        modules = feature_modules(kind for kinds in requests.values() for kind in kinds)
        try:
            outcomes = workers.run(functools.partial(prepare_chunk, root=root, modules=modules), tasks, "features",
                                   on_chunk=_remember)
        finally:
            flush_all()  # an interrupted pass keeps the facts of the chunks that came back
        listing = texts.result()
    corpus, problems = check_listed_audio(listing)
    if problems:
        raise CorpusError(problems)
    if failures := [outcome.failure for outcome in outcomes if outcome.failure]:
        shown = "\n".join(failures[:20]) + (f"\n... and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise UserError(f"features of {len(failures)} of {len(tasks)} files could not be computed "
                        f"(the other files are cached):\n{shown}")
    computed = sum(outcome.computed for outcome in outcomes)
    return corpus, PrepareSummary(len(corpus), computed, time.perf_counter() - started, workers.count)
