"""Features ahead of training: everything a set of systems trains on, for every utterance of a
corpus, computed once in a process pool.

`ttsbench data prepare` runs it on its own; `ttsbench run` runs it once before a suite's jobs and
`ttsbench train` before its run, so jobs find their features cached instead of each extracting
them serially (FastSpeech2's pitch alone is ~0.2 s a clip: 45 minutes for LJSpeech on one core).
Resumable: the cache is content-addressed and written atomically, so a killed pass leaves only
whole files, and the next one computes just the rest.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from ttsbench import models
from ttsbench.audio import AudioConfig
from ttsbench.data import (DIGEST_FACT, Corpus, CorpusError, FeatureCache, check_listed_audio, check_texts,
                           facts_unknown, file_digest, file_facts, read_metadata, remember_facts)
from ttsbench.errors import UserError
from ttsbench.fileindex import FileKey, flush_all
from ttsbench.forkserver import available_cores, worker_context
from ttsbench.models.base import ModelConfig

Requests = dict[AudioConfig, tuple[str, ...]]  # front end -> the feature kinds computed with it
MAX_CHUNK = 32  # files per task: large enough to hide the pool's overhead, small for a live ETA
QUEUED = 4  # chunks submitted ahead per pool process (see Workers._shared)
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


def feature_requests(configs: Iterable[tuple[str, ModelConfig]]) -> Requests:
    """The features (system, config) pairs train on, merged per front end."""
    merged: dict[AudioConfig, set[str]] = {}
    for system, config in configs:
        for kind, audio in models.get(system).features_for(config).items():
            merged.setdefault(audio, set()).add(kind)
    return {audio: tuple(sorted(kinds)) for audio, kinds in merged.items()}


class Workers:
    """N processes computing one pass: this one and a pool of N - 1, taking chunks from one queue.

    This process works too, so nothing waits while the pool starts (its processes import torch
    first), and N workers keep N cores busy. The pool is started by `start` or on first use and
    shared by the passes of one preparation; its processes are forked from a fork server that has
    imported this module and the librosa it calls (`ttsbench.forkserver.PRELOAD`). Each runs one
    thread.
    Work of a chunk or less (the 24 embedded clips) never starts a pool.
    """

    def __init__(self, count: int | None = None, progress: bool = True):
        self.count = count or available_cores()
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()  # set once the pool has answered: submitting no longer blocks

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # whole files only: each is written atomically

    def start(self) -> ProcessPoolExecutor:
        """Start the pool's processes without waiting for them. The first submit blocks until the
        fork server has imported torch and forked (~1.5 s), so a thread makes it while this
        process goes on with its own work; `run` gives the pool chunks once it has answered."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.count - 1, mp_context=worker_context(), initializer=_init_worker)
            threading.Thread(target=self._first_answer, args=(self._pool,), daemon=True).start()
        return self._pool

    def _first_answer(self, pool: ProcessPoolExecutor) -> None:
        pool.submit(int).add_done_callback(lambda _: self._ready.set())

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
        """Keep QUEUED chunks per pool process submitted once it is up; this process takes the
        next chunk meanwhile. It sees a finished chunk only between two of its own, and the
        pool's next chunk reaches it only when this busy process's feeder threads get the GIL,
        so a shallow queue leaves the pool waiting (with 2, ~10 % of its time)."""
        pending: dict[Future, int] = {}
        results: list[R] = []
        while queue or pending:
            while queue and self._ready.is_set() and len(pending) < QUEUED * (self.count - 1):
                chunk = queue.popleft()
                pending[pool.submit(function, chunk)] = len(chunk)
            for future in [f for f in pending if f.done()]:
                results += _counted(future.result(), pending.pop(future), bar, on_chunk)
            if queue:
                chunk = queue.popleft()
                results += _counted(function(chunk), len(chunk), bar, on_chunk)
            elif pending:
                wait(pending, return_when=FIRST_COMPLETED)
        return results


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _counted(results: list[R], size: int, bar: tqdm, on_chunk: Callable[[list[R]], object]) -> list[R]:
    on_chunk(results)
    bar.update(size)
    return results


def _init_worker() -> None:
    """One thread, and every system loaded (entry points too), so their feature kinds are known."""
    torch.set_num_threads(1)
    models.names()


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
    caches = [(FeatureCache(audio, root), kinds) for audio, kinds in todo]
    tasks: list[FileTask] = []
    for path in tqdm(paths, desc="checking the feature cache", unit="file", disable=not progress, leave=False):
        if path in unknown:
            tasks.append(FileTask(str(path), None, todo))
            continue
        digest = file_digest(path)
        missing = tuple((cache.config, tuple(kinds)) for cache, all_kinds in caches
                        if (kinds := cache.missing(path, all_kinds, digest)))
        if missing:
            tasks.append(FileTask(str(path), digest, missing))
    return tasks


def _remember(outcomes: Sequence[FileOutcome]) -> None:
    """Store the facts a chunk read (as it arrives: a killed pass keeps them, and this runs while
    the pool is still working instead of after it)."""
    for outcome in outcomes:
        if outcome.key is not None:
            remember_facts(outcome.key, outcome.facts)


def prepare_chunk(chunk: Sequence[FileTask], root: Path | None = None) -> list[FileOutcome]:
    """Do one chunk's tasks (in a worker)."""
    return [prepare_file(task, root) for task in chunk]


def prepare_file(task: FileTask, root: Path | None = None) -> FileOutcome:
    """Read the file if it is new (scan + digest, one pass), then compute its missing features,
    one decode per front end. A file that cannot be opened gets no features: the corpus check
    after the pass names it. A failure does not stop the others (see `prepare_corpus`)."""
    path = Path(task.path)
    key, facts = (None, {}) if task.digest else file_facts(path)
    digest = task.digest or facts.get(DIGEST_FACT)
    computed = False
    for config, kinds in task.todo if digest else ():
        cache = FeatureCache(config, root)
        try:
            if missing := (kinds if task.digest else cache.missing(path, kinds, digest)):
                cache.compute(path, missing, digest)
                computed = True
        except Exception as err:  # noqa: BLE001 - one bad file must not cost the others' work
            return FileOutcome(key, facts, computed, f"{path}: {type(err).__name__}: {str(err).strip()}")
    return FileOutcome(key, facts, computed, None)


def prepare_corpus(path: str | Path, requests: Mapping[AudioConfig, Sequence[str]], workers: Workers,
                   root: Path | None = None) -> tuple[Corpus, PrepareSummary]:
    """Validate a corpus and compute every requested feature not cached yet, in one pass of
    `workers` over its audio files: each new file is read, hashed and turned into features by
    one worker, so the pool's start-up falls inside the long pass and no core waits for a
    separate reading pass to end. The corpus check runs in two halves: its text checks while the
    pool starts, its audio checks after the pass, on the scans the pool stored. A file that fails
    to compute does not stop the others: every computed file is kept, then a UserError names each
    failure (after a CorpusError, which says more).
    """
    started = time.perf_counter()
    listing = read_metadata(path)
    files = list(dict.fromkeys(entry.audio_path for entry in listing.entries if entry.audio_path))
    unknown = set(facts_unknown(files))
    if len(unknown) > MAX_CHUNK and workers.count > 1:
        workers.start()  # its processes start up while this one checks the texts and the cache
    listing = check_texts(listing)
    tasks = file_tasks(files, unknown, requests, root, workers.progress)
    outcomes = workers.run(functools.partial(prepare_chunk, root=root), tasks, "features", on_chunk=_remember)
    flush_all()
    corpus, problems = check_listed_audio(listing)
    if problems:
        raise CorpusError(problems)
    if failures := [outcome.failure for outcome in outcomes if outcome.failure]:
        shown = "\n".join(failures[:20]) + (f"\n... and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise UserError(f"features of {len(failures)} of {len(tasks)} files could not be computed "
                        f"(the other files are cached):\n{shown}")
    computed = sum(outcome.computed for outcome in outcomes)
    return corpus, PrepareSummary(len(corpus), computed, time.perf_counter() - started, workers.count)
