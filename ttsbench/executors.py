"""Executors: where a suite's jobs run. The driver (`run_suite`) owns the results store.

An executor gets the pending jobs and a `report(job, outcome)` callback, which it calls once
per job, from the driver's process, when the job has ended: outcome is `execute`'s dict, or
{"state": "failed", "error": ..., "rows": []} after the last retry failed.

- `LocalExecutor`: each job in its own fresh child process (spawned, so a crash or a leak in
  one job cannot touch the next, and every job starts with the same interpreter state),
  `parallel` at a time. Default: one at a time, the fair setting for timing on a small machine.
- `RayExecutor`: each job a Ray task with the suite's CPUs/GPUs per job, on a running cluster
  (`address`) or a local instance. Workers write checkpoints and audio under the run folder,
  which must be on storage every node reaches; results come back to the driver as data.
"""

from __future__ import annotations

import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

from ttsbench.errors import UserError
from ttsbench.forkserver import die_with_parent
from ttsbench.jobs import execute
from ttsbench.options import EXECUTOR_TYPES
from ttsbench.suite import ExecutorSpec, Job

Report = Callable[[Job, dict[str, Any]], None]
RAY_INSTALL_HINT = "the Ray executor needs Ray: pip install 'ttsbench[ray]' (or: pip install 'ray[default]')"


def _error_text(err: BaseException) -> str:
    """What is stored as a failed job's error: a user error's own message, else the traceback's tail."""
    if isinstance(err, UserError):
        return str(err)
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-6:]).strip()


def failed(error: str) -> dict[str, Any]:
    return {"state": "failed", "error": error, "rows": []}


class Executor(ABC):
    """Runs jobs and reports each outcome to the driver."""

    name = "abstract"

    def __init__(self, spec: ExecutorSpec):
        self.spec = spec

    @abstractmethod
    def run(self, jobs: Sequence[Job], suite: Mapping[str, Any], root: str, report: Report, progress: bool) -> None:
        """Run every job, calling `report` once per job as it ends."""


def _run_in_child(job: Job, suite: Mapping[str, Any], root: str, progress: bool) -> dict[str, Any]:
    die_with_parent()
    return execute(job.to_dict(), suite, root, progress)


class LocalExecutor(Executor):
    name = "local"

    def run(self, jobs: Sequence[Job], suite: Mapping[str, Any], root: str, report: Report, progress: bool) -> None:
        lock = threading.Lock()
        context = get_context("spawn")

        def one(job: Job) -> None:
            error = ""
            for attempt in range(1, self.spec.retries + 2):
                try:
                    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                        outcome = pool.submit(_run_in_child, job, suite, root, progress).result()
                    break
                except Exception as err:  # noqa: BLE001 - any failure of the job, recorded below
                    error = _error_text(err)
                    if attempt <= self.spec.retries:
                        print(f"[{job.id}] attempt {attempt} failed, retrying: {error.splitlines()[-1]}", flush=True)
            else:
                outcome = failed(error)
            with lock:
                report(job, outcome)

        if self.spec.parallel == 1:
            for job in jobs:
                one(job)
            return
        with ThreadPoolExecutor(max_workers=self.spec.parallel) as threads:
            for future in [threads.submit(one, job) for job in jobs]:
                future.result()


class RayExecutor(Executor):
    name = "ray"

    def run(self, jobs: Sequence[Job], suite: Mapping[str, Any], root: str, report: Report, progress: bool) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError(RAY_INSTALL_HINT) from None
        started_here = False
        if not ray.is_initialized():
            if self.spec.address:
                ray.init(address=self.spec.address, log_to_driver=progress)
            else:
                ray.init(num_cpus=max(1, int(self.spec.cpus_per_job * self.spec.parallel)), log_to_driver=progress,
                         include_dashboard=False)
            started_here = True
        try:
            task = ray.remote(execute).options(
                num_cpus=self.spec.cpus_per_job,
                num_gpus=self.spec.gpus_per_job,
                max_retries=self.spec.retries,
                retry_exceptions=True,
            )
            pending = {task.remote(job.to_dict(), suite, root, progress): job for job in jobs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - the task failed after its retries
                    outcome = failed(_error_text(err))
                report(job, outcome)
        finally:
            if started_here:
                ray.shutdown()


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}
assert tuple(EXECUTORS) == EXECUTOR_TYPES, "suite.EXECUTOR_TYPES names the executors a suite may choose"


def make_executor(spec: ExecutorSpec) -> Executor:
    if spec.type not in EXECUTORS:
        raise UserError(f"unknown executor {spec.type!r}; use {', '.join(EXECUTORS)}")
    if spec.type == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError(RAY_INSTALL_HINT) from None
    return EXECUTORS[spec.type](spec)

