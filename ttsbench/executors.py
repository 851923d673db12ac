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
- `SlurmExecutor`: each job an sbatch job (through submitit) on the same terms as Ray's.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ttsbench.errors import UserError
from ttsbench.forkserver import die_with_parent
from ttsbench.jobs import execute
from ttsbench.options import EXECUTOR_TYPES
from ttsbench.suite import ExecutorSpec, Job

Report = Callable[[Job, dict[str, Any]], None]
RAY_INSTALL_HINT = "the Ray executor needs Ray: pip install 'ttsbench[ray]' (or: pip install 'ray[default]')"
SLURM_INSTALL_HINT = "the Slurm executor needs submitit: pip install 'ttsbench[slurm]'"

try:
    from submitit.helpers import Checkpointable
except ImportError:  # the slurm extra is not installed: make_executor says so when a suite asks for it
    Checkpointable = object


def _error_text(err: BaseException) -> str:
    """What is stored as a failed job's error: a user error's own message, else the traceback's tail."""
    if isinstance(err, UserError):
        return str(err)
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-6:]).strip()


def failed(error: str) -> dict[str, Any]:
    return {"state": "failed", "error": error, "rows": []}


def _say_retry(job: Job, attempt: int, error: str) -> None:
    """The one line a retried job gets in the driver's output (the suite display prints it above its block)."""
    print(f"[{job.id}] attempt {attempt} failed, retrying: {error.splitlines()[-1]}", flush=True)


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
                        _say_retry(job, attempt, error)
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


class _SlurmJob(Checkpointable):
    """What one sbatch job runs: `execute`, requeued on preemption or timeout (submitit's
    checkpoint protocol); a requeued job resumes from its last checkpoint, as a re-run does."""

    def __call__(self, job_data: dict[str, Any], suite: dict[str, Any], root: str) -> dict[str, Any]:
        return execute(job_data, suite, root, False)


SLURM_GONE = {"BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"}
SLURM_POLL_S = 2.0


class SlurmExecutor(Executor):
    """Each job one sbatch job (submitit), on a shared run folder, as the Ray executor's contract:
    the driver alone appends results, a failed job is resubmitted `retries` times then recorded.

    Job state comes from the job's result file and `squeue` (no accounting daemon needed): a
    job that left the queue, or was cancelled or killed, without a result has failed. Jobs still
    queued or running when the driver stops (Ctrl-C, an error) are cancelled, so a re-run never
    races one; their checkpoints stay, and the re-run resumes them.
    """

    name = "slurm"

    def run(self, jobs: Sequence[Job], suite: Mapping[str, Any], root: str, report: Report, progress: bool) -> None:
        slurm = self._slurm_executor(Path(root) / "slurm")
        pending = {self._submit(slurm, job, suite, root): (job, 0) for job in jobs}
        try:
            while pending:
                time.sleep(SLURM_POLL_S)
                for handle in [h for h in pending if _slurm_ended(h)]:
                    job, attempt = pending.pop(handle)
                    outcome = _slurm_outcome(handle)
                    if outcome["state"] == "failed" and attempt < self.spec.retries:
                        _say_retry(job, attempt + 1, outcome["error"])
                        pending[self._submit(slurm, job, suite, root)] = (job, attempt + 1)
                        continue
                    report(job, outcome)
        finally:
            for handle in pending:
                handle.cancel(check=False)

    def _slurm_executor(self, folder: Path) -> Any:
        import submitit

        slurm = submitit.SlurmExecutor(folder=str(folder), python=sys.executable, max_num_timeout=3)
        options: dict[str, Any] = {"cpus_per_task": max(1, math.ceil(self.spec.cpus_per_job)), "signal_delay_s": 120}
        if self.spec.gpus_per_job:
            options["gpus_per_node"] = math.ceil(self.spec.gpus_per_job)
        if self.spec.partition:
            options["partition"] = self.spec.partition
        if self.spec.time_limit:
            options["time"] = math.ceil(self.spec.time_limit)
        slurm.update_parameters(**options)
        return slurm

    def _submit(self, slurm: Any, job: Job, suite: Mapping[str, Any], root: str) -> Any:
        slurm.update_parameters(job_name=f"ttsbench-{job.id}")
        return slurm.submit(_SlurmJob(), job.to_dict(), dict(suite), root)


def _slurm_ended(handle: Any) -> bool:
    """The job wrote its result, or Slurm no longer runs it (left the queue, cancelled, killed)."""
    if handle.paths.result_pickle.exists():
        return True
    try:
        state = subprocess.run(["squeue", "-h", "-j", str(handle.job_id), "-o", "%T", "--states=all"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False  # squeue unavailable for a moment: ask again next poll
    return state == "" or state.split()[0] in SLURM_GONE | {"COMPLETED"}


def _slurm_outcome(handle: Any, settle_s: float = 30.0) -> dict[str, Any]:
    """The job's result; a job that ended without one failed. On shared storage the result file
    can show up a little after the queue says COMPLETED, so it is waited for a while."""
    deadline = time.monotonic() + settle_s
    while not handle.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(1.0)
    if not handle.paths.result_pickle.exists():
        return failed(f"slurm job {handle.job_id} ended without a result (cancelled, killed or out of time; "
                      f"its log: {handle.paths.stderr})")
    try:
        return handle.result()
    except Exception as err:  # noqa: BLE001 - the job raised: recorded as the job's error
        return failed(_error_text(err))


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}
assert tuple(EXECUTORS) == EXECUTOR_TYPES, "suite.EXECUTOR_TYPES names the executors a suite may choose"


def make_executor(spec: ExecutorSpec) -> Executor:
    if spec.type not in EXECUTORS:
        raise UserError(f"unknown executor {spec.type!r}; use {', '.join(EXECUTORS)}")
    if spec.type == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError(RAY_INSTALL_HINT) from None
    if spec.type == "slurm":
        if Checkpointable is object:
            raise UserError(SLURM_INSTALL_HINT)
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise UserError("the Slurm executor needs Slurm's sbatch and squeue on PATH (this is not a Slurm "
                            "login node?); scripts/local_slurm.sh starts a one-node Slurm here")
    return EXECUTORS[spec.type](spec)

