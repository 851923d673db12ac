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
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from ttsbench import models
from ttsbench.audio import AudioConfig
from ttsbench.data import (Corpus, FeatureCache, corpus_audio_files, facts_unknown, file_digest, file_facts,
                           load_corpus, remember_facts)
from ttsbench.errors import UserError
from ttsbench.fileindex import FileKey, flush_all
from ttsbench.models.base import ModelConfig

Requests = dict[AudioConfig, tuple[str, ...]]  # front end -> the feature kinds computed with it
# One utterance's missing work: its audio, content digest, and the kinds missing per front end.
Work = tuple[str, str, tuple[tuple[AudioConfig, tuple[str, ...]], ...]]
MAX_CHUNK = 32  # files per task: large enough to hide the pool's overhead, small for a live ETA
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


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def feature_requests(configs: Iterable[tuple[str, ModelConfig]]) -> Requests:
    """The features (system, config) pairs train on, merged per front end."""
    merged: dict[AudioConfig, set[str]] = {}
    for system, config in configs:
        for kind, audio in models.get(system).features_for(config).items():
            merged.setdefault(audio, set()).add(kind)
    return {audio: tuple(sorted(kinds)) for audio, kinds in merged.items()}


def missing_work(corpus: Corpus, requests: Mapping[AudioConfig, Sequence[str]], root: Path | None = None,
                 progress: bool = True) -> list[Work]:
    """Each utterance still missing a requested feature (or holding a damaged one)."""
    caches = [(FeatureCache(audio, root), tuple(kinds)) for audio, kinds in requests.items()]
    work: list[Work] = []
    for utterance in tqdm(corpus.utterances, desc="checking the feature cache", unit="utt", disable=not progress,
                          leave=False):
        digest = file_digest(utterance.audio_path)
        todo = tuple((cache.config, tuple(missing)) for cache, kinds in caches
                     if (missing := cache.missing(utterance.audio_path, kinds, digest)))
        if todo:
            work.append((str(utterance.audio_path), digest, todo))
    flush_all()
    return work


class Workers:
    """N processes computing one pass: this one and a pool of N - 1, taking chunks from one queue.

    This process works too, so nothing waits while the pool starts (its processes import torch
    first), and N workers keep N cores busy. The pool is started on first use and shared by the
    passes of one preparation; its processes are forked from a fork server that has imported only
    this module (not from this process: a forked copy of a process that has run torch's thread
    pool can hang; spawn where there is no fork server). Each runs one thread. Work of a chunk or
    less (the 24 embedded clips) never starts a pool.
    """

    def __init__(self, count: int | None = None, progress: bool = True):
        self.count = count or available_cores()
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # whole files only: each is written atomically

    def run(self, function: Callable[[Sequence[T]], list[R]], items: Sequence[T], desc: str) -> list[R]:
        """`function` over chunks of `items`, results concatenated, with a progress bar and ETA."""
        with tqdm(total=len(items), desc=desc, unit="file", disable=not self.progress or not items) as bar:
            if self.count == 1 or len(items) <= MAX_CHUNK:
                return [result for chunk in _chunks(items, MAX_CHUNK) for result in _counted(function, chunk, bar)]
            return self._shared(function, deque(_chunks(items, MAX_CHUNK)), bar)

    def _shared(self, function: Callable[[Sequence[T]], list[R]], queue: deque[Sequence[T]], bar: tqdm) -> list[R]:
        """Keep two chunks queued per pool process; this process takes the next chunk meanwhile."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.count - 1, mp_context=_worker_context(), initializer=_init_worker)
        pending: dict[Future, int] = {}
        results: list[R] = []
        while queue or pending:
            while queue and len(pending) < 2 * (self.count - 1):
                chunk = queue.popleft()
                pending[self._pool.submit(function, chunk)] = len(chunk)
            for future in [f for f in pending if f.done()]:
                results += future.result()
                bar.update(pending.pop(future))
            if queue:
                results += _counted(function, queue.popleft(), bar)
            elif pending:
                wait(pending, return_when=FIRST_COMPLETED)
        return results


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _counted(function: Callable[[Sequence[T]], list[R]], chunk: Sequence[T], bar: tqdm) -> list[R]:
    results = function(chunk)
    bar.update(len(chunk))
    return results


def _worker_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # instead of the default, this program's __main__
    return context


def _init_worker() -> None:
    """One thread, and every system loaded (entry points too), so their feature kinds are known."""
    torch.set_num_threads(1)
    models.names()


def read_corpus_files(path: str | Path, workers: Workers) -> None:
    """Scan and hash, in the pool, every audio file of a corpus the file index does not know yet,
    so that the `check_corpus` after it (serial, reading every sample) finds them all done."""
    unknown = facts_unknown(corpus_audio_files(path))
    for key, facts in workers.run(facts_chunk, unknown, "reading audio"):
        remember_facts(key, facts)
    flush_all()


def facts_chunk(paths: Sequence[Path]) -> list[tuple[FileKey, dict[str, Any]]]:
    return [file_facts(path) for path in paths]


def prepare_features(corpus: Corpus, requests: Mapping[AudioConfig, Sequence[str]], workers: Workers,
                     root: Path | None = None) -> PrepareSummary:
    """Compute every requested feature not cached yet, in `workers`.

    A file that fails does not stop the others: every computed file is kept, then a UserError
    names each failure.
    """
    started = time.perf_counter()
    work = missing_work(corpus, requests, root, workers.progress)
    failures = workers.run(functools.partial(compute_chunk, root=root), work, "features")
    if failures:
        shown = "\n".join(failures[:20]) + (f"\n... and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise UserError(f"features of {len(failures)} of {len(work)} files could not be computed "
                        f"(the other files are cached):\n{shown}")
    return PrepareSummary(len(corpus), len(work), time.perf_counter() - started, workers.count)


def prepare_corpus(path: str | Path, requests: Mapping[AudioConfig, Sequence[str]], workers: int | None = None,
                   progress: bool = True) -> tuple[Corpus, PrepareSummary]:
    """Validate a corpus and compute its features, both spread over `workers` processes."""
    with Workers(workers, progress) as pool:
        read_corpus_files(path, pool)
        corpus = load_corpus(path)
        return corpus, prepare_features(corpus, requests, pool)


def compute_chunk(chunk: Sequence[Work], root: Path | None = None) -> list[str]:
    """Compute one chunk's features (in a worker); returns `path: reason` for each file that failed."""
    failures = []
    for audio_path, digest, todo in chunk:
        for config, kinds in todo:
            try:
                FeatureCache(config, root).compute(Path(audio_path), kinds, digest)
            except Exception as err:  # noqa: BLE001 - one bad file must not cost the others' work
                failures.append(f"{audio_path}: {type(err).__name__}: {str(err).strip()}")
                break
    return failures
