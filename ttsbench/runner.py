"""Running a suite: the driver that owns the run folder while executors run its jobs.

The stack runs one way: cli -> runner -> executors -> jobs -> train / metrics / prepare -> suite,
models, data. Before anything is written the runner takes the folder's lock, makes (or finds) the
corpus and checks it, and checks that the folder holds no other suite's run; before the jobs it
computes every feature they need in one process pool; then each job's outcome is recorded as it
ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas
import torch

import ttsbench
from ttsbench.data import Corpus
from ttsbench.errors import RunStoreError, UserError
from ttsbench.executors import make_executor
from ttsbench.metrics.speed import environment
from ttsbench.featurecache import Requests
from ttsbench.fileio import foreign_entries
from ttsbench.models import config_for, feature_requests
from ttsbench.prepare import PrepareSummary, Workers, prepare_corpus
from ttsbench.progress import SuiteDisplay
from ttsbench.tracking import require_tensorboard
from ttsbench.results import RunStore
from ttsbench.suite import ExecutorSpec, Job, Suite
from ttsbench.train import resolve_device


@dataclass
class RunSummary:
    total: int
    skipped: int
    states: dict[str, str]  # job id -> state, for the jobs run now

    @property
    def failed(self) -> list[str]:
        return [job for job, state in self.states.items() if state == "failed"]


def run_suite(suite: Suite, out: str | Path, executor: ExecutorSpec | None = None, progress: bool = True,
              log: Callable[[str], Any] = print, skip_damaged: bool = False) -> RunSummary:
    """Run every job of `suite` not yet done in `out`, recording each as it ends.

    Re-running with the same `out` resumes: finished and diverged jobs are skipped, failed ones
    run again, a job cut short resumes from its checkpoint. One `run_suite` at a time holds the
    run folder's lock. A refused folder is left as it was.
    """
    spec = executor or suite.executor
    runner = make_executor(spec)
    if suite.tracking == "tensorboard":
        require_tensorboard()  # refused here, not in every job
    store = RunStore(out, skip_damaged=skip_damaged)
    created = _claim_folder(store.root)
    had_lock = (store.root / ".lock").exists()
    with _locked(store.root):
        with Workers(progress=progress) as workers:  # the pool ends before the first job starts
            jobs = suite.jobs()
            try:
                store.check_compatible(suite.to_dict(), [job.to_dict() for job in jobs])
                pending = [job for job in jobs if not store.is_done(job.id, job.config_hash)]
                corpus, prepared = prepare_suite_corpus(suite, job_features(pending), workers)
                identity = {"path": str(corpus.root), "digest": corpus.digest()}
                store.check_corpus(identity)
            except UserError:  # a refused run leaves the folder as it found it (or no folder)
                _undo_claim(store.root, created, had_lock)
                raise
            for line in store.damaged:
                log(f"skipped: {line}")
            for line in store.incomplete:
                log(f"rows missing: {line}")
            store.open(suite.to_dict(), run_environment(suite.device, suite.threads), identity)
            if pending:
                log(f"{suite.name}: {prepared}")
        log(f"{suite.name}: {len(jobs)} jobs, {len(jobs) - len(pending)} already done, {len(pending)} to run "
            f"({runner.name} executor) -> {store.root}")
        states: dict[str, str] = {}
        display = SuiteDisplay(suite.name, [job.id for job in pending], lambda job_id: store.job_folder(job_id).progress,
                               spec.parallel) if progress and pending else None
        say = display.log if display else log

        def report(job: Job, outcome: dict[str, Any]) -> None:
            tries = store.attempts(job.id)
            store.record(job.to_dict(), outcome["state"], outcome["rows"], attempts=tries,
                         seconds=outcome.get("seconds"), error=outcome.get("error"))
            states[job.id] = outcome["state"]
            took = f" in {outcome['seconds']:.0f} s" if outcome.get("seconds") else ""
            detail = f": {outcome['error'].splitlines()[-1]}" if outcome.get("error") else ""
            say(f"[{len(states)}/{len(pending)}] {job.id}: {outcome['state']}{took}, {len(outcome['rows'])} rows, "
                f"{tries} attempt(s){detail}")
            if display:
                display.ended(job.id)

        with display or contextlib.nullcontext():  # the display shows progress: the jobs' own bars stay off
            runner.run(pending, suite.to_dict(), str(store.root), report, progress and display is None)
        return RunSummary(len(jobs), len(jobs) - len(pending), states)


def _claim_folder(root: Path) -> bool:
    """Check that `--out` is a run folder, a new one or an empty one; make it; True if made here.

    A folder holding anything else is the user's and is refused before anything is written in it."""
    if root.exists() and not root.is_dir():
        raise RunStoreError(f"--out {root}: exists and is not a folder")
    if root.is_dir():
        if foreign_entries(root, "run.json", ours=(".lock",)):
            raise RunStoreError(f"--out {root}: holds files but no ttsbench run (no run.json); name a new or empty "
                                "folder (nothing was written)")
        return False
    root.mkdir(parents=True)
    return True


def _undo_claim(root: Path, created: bool, had_lock: bool) -> None:
    """After a refusal: drop the lock file if this run made it, and the folder if it made that."""
    if not had_lock:
        (root / ".lock").unlink(missing_ok=True)
    if created:
        try:
            root.rmdir()
        except OSError:  # something else appeared in it: leave it
            pass


class _locked:
    """The run folder's lock, so two drivers never write one folder."""

    def __init__(self, root: Path):
        self.root = root
        self.handle: IO[str] | None = None

    def __enter__(self) -> None:
        self.handle = (self.root / ".lock").open("a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(f"another `ttsbench run` is using {self.root}") from None

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def prepare_suite_corpus(suite: Suite, requests: Requests, workers: Workers) -> tuple[Corpus, PrepareSummary]:
    """Make a synthetic corpus if needed, then check it and compute the pending jobs' features
    before the first job, so a broken corpus fails once, naming every problem, instead of
    failing every job, and no job extracts features itself."""
    if problem := suite.corpus_folder_problem():
        raise UserError(problem)
    return prepare_corpus(suite.prepare_corpus(workers.progress), requests, workers)


def job_features(jobs: Sequence[Job]) -> Requests:
    """Every feature the training jobs among `jobs` need, for one preparation pass before them
    (on this machine's cache: jobs on other Ray nodes compute what their node lacks)."""
    return feature_requests((job.system, config_for(job.system, job.preset, job.overrides))
                            for job in jobs if job.kind == "train")


def run_environment(device: str, threads: int | None) -> dict[str, Any]:
    """Versions, device, threads and commit: the conditions every number of a run holds for."""
    if threads:
        torch.set_num_threads(threads)
    info = environment(resolve_device(device))
    info.update(
        ttsbench=ttsbench.__version__,
        pandas=pandas.__version__,
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        commit=_source_commit(),
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    return info


def _source_commit() -> str:
    """The git commit of the ttsbench source, '+dirty' with uncommitted changes, or 'unknown'."""
    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) or "unknown"
