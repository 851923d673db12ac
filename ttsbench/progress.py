"""A suite's progress on the terminal: one line per running job and one for the suite.

Jobs run in other processes (or on other Ray nodes), so each writes its state to its folder's
`progress.json` (`StatusFile`, at most once a second) and the driver's `SuiteDisplay` reads
those files. Two jobs' progress bars on one terminal garble each other; this display does not:
- on a terminal, a live block (rich) redrawn twice a second, the driver's messages above it;
- elsewhere (CI, `| tee`), plain lines: a job's start, each validation, its evaluation, its end.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ttsbench.fileio import atomic_write_json
from ttsbench.tracking import TrainObserver

WRITE_INTERVAL_S = 1.0  # a job rewrites its status file at most this often between validations
POLL_INTERVAL_S = 0.5


class StatusFile(TrainObserver):
    """A job's side: its phase, step, rate, budget and last validation in one small JSON file."""

    def __init__(self, path: Path, steps: int | None = None, max_seconds: float | None = None,
                 target: Sequence[str] = ()):
        self.path = path
        self.status: dict[str, Any] = {"phase": "starting", "step": 0, "steps": steps, "max_seconds": max_seconds,
                                       "seconds": 0.0, "steps_per_second": None, "val": {}, "target": list(target)}
        self.written = 0.0
        self.rate_from: tuple[int, float] | None = None
        self.write()

    def phase(self, name: str) -> None:
        self.status["phase"] = name
        self.write()

    def on_step(self, step: int, seconds: float, losses: Mapping[str, float], values: Mapping[str, float]) -> None:
        if self.rate_from is None:
            self.rate_from = (step, seconds)
        first_step, first_seconds = self.rate_from
        if seconds > first_seconds:
            self.status["steps_per_second"] = (step - first_step) / (seconds - first_seconds)
        self.status.update(phase="training", step=step + 1, seconds=seconds,
                           values={k: v for k, v in values.items() if k != "lr"})
        if time.monotonic() - self.written >= WRITE_INTERVAL_S:
            self.write()

    def on_validation(self, row: Mapping[str, Any], alignments: Mapping[str, np.ndarray],
                      audio: Sequence[tuple[str, np.ndarray, int]]) -> None:
        self.status["val"] = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not k.startswith("seconds/")}
        self.status.update(step=row["step"], seconds=row["seconds"])  # validation comes before its step's log row
        self.write()

    def write(self) -> None:
        self.status["updated"] = time.time()
        atomic_write_json(self.path, self.status)
        self.written = time.monotonic()


def read_status(path: Path) -> dict[str, Any] | None:
    """A job's last status, or None when it has written none (or is mid-replace)."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The driver's side


def job_line(job_id: str, status: Mapping[str, Any]) -> str:
    """`glow-tts_seed0  training  step 400  6.8 step/s  1.2/9.0 min  val wer 0.75 @400`."""
    parts = [job_id, status.get("phase", "?")]
    if status.get("step"):
        parts.append(f"step {status['step']}" + (f"/{status['steps']}" if status.get("steps") else ""))
    if status.get("steps_per_second"):
        parts.append(f"{status['steps_per_second']:.1f} step/s")
    if status.get("max_seconds"):
        parts.append(f"{status.get('seconds', 0) / 60:.1f}/{status['max_seconds'] / 60:.1f} min")
    parts += [f"{k}={_short(v)}" for k, v in status.get("values", {}).items() if k in ("r", "batch_size")]
    val = status.get("val") or {}
    shown = [m for m in (status.get("target") or []) if m in val] or [m for m in ("wer", "mel_l1_dtw", "mcd") if m in val][:1]
    if shown:
        parts.append("val " + " ".join(f"{m} {_short(val[m])}" for m in shown) + f" @{val.get('step', '?')}")
    return "  ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


@dataclass
class _Tracked:
    status: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    said: tuple[Any, ...] = ()  # what the plain display last printed of it


class SuiteDisplay:
    """Reads the status files of a suite's jobs and shows them; `log` prints a driver message.

    `status_path(job_id)` gives a job's status file. A job counts as running once its file is newer
    than the display, until `ended(job_id)`.
    """

    def __init__(self, name: str, job_ids: Sequence[str], status_path: Callable[[str], Path], parallel: int,
                 live: bool | None = None, stream: IO[str] | None = None):
        self.name, self.status_path, self.parallel = name, status_path, max(1, parallel)
        self.jobs = {job_id: _Tracked() for job_id in job_ids}
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.began = time.time()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.rich_live: Any = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "SuiteDisplay":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            self.rich_live = Live(self.render(), console=console, refresh_per_second=2, transient=True,
                                  redirect_stdout=True, redirect_stderr=True)  # the driver's prints go above
            self.rich_live.start()
        self.thread = threading.Thread(target=self._watch, name="suite-display", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.rich_live is not None:
            self.rich_live.stop()

    def log(self, line: str) -> None:
        with self.lock:
            if self.rich_live is not None:
                self.rich_live.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                print(line, file=self.stream, flush=True)

    def ended(self, job_id: str) -> None:
        with self.lock:
            tracked = self.jobs[job_id]
            tracked.ended = time.time()
            tracked.started = tracked.started or tracked.ended
        self.log(self.suite_line())

    # ---- reading the jobs --------------------------------------------------------------------
    def _watch(self) -> None:
        while not self.stop.wait(POLL_INTERVAL_S):
            self.poll()

    def poll(self) -> None:
        """Read every unfinished job's status file; refresh the block or print what changed."""
        for job_id, tracked in self.jobs.items():
            if tracked.ended is not None:
                continue
            status = read_status(self.status_path(job_id))
            if status is None or status.get("updated", 0) < self.began:
                continue
            with self.lock:
                tracked.status = status
                tracked.started = tracked.started or time.time()
            if not self.live:
                self._plain(job_id, tracked)
        if self.rich_live is not None:
            self.rich_live.update(self.render())

    def _plain(self, job_id: str, tracked: _Tracked) -> None:
        """A line when a job starts, validates or changes phase; not for every step."""
        status = tracked.status
        said = (status.get("phase"), (status.get("val") or {}).get("step"))
        if said != tracked.said:
            tracked.said = said
            self.log(job_line(job_id, status))

    def running(self) -> list[str]:
        return [j for j, t in self.jobs.items() if t.started is not None and t.ended is None]

    def suite_line(self) -> str:
        """`cpu: 3/11 done, 2 running, 12:31 elapsed, ~14 min left`."""
        done = [t for t in self.jobs.values() if t.ended is not None]
        elapsed = time.time() - self.began
        line = f"{self.name}: {len(done)}/{len(self.jobs)} done, {len(self.running())} running, {_minutes(elapsed)} elapsed"
        if (left := self.seconds_left()) is not None:
            line += f", ~{left / 60:.0f} min left"
        return line

    def seconds_left(self) -> float | None:
        """The mean finished job's wall time for each job not started, and what that mean leaves
        of each running one, over the lanes; None before a training job has finished (the
        reference job, which trains nothing, says nothing of the rest)."""
        now = time.time()
        trained = [t.ended - t.started for t in self.jobs.values()
                   if t.ended is not None and t.started is not None and t.status.get("step")]
        open_jobs = [t for t in self.jobs.values() if t.ended is None]
        if not trained or not open_jobs:
            return None
        mean = sum(trained) / len(trained)
        work = sum(mean if t.started is None else max(mean - (now - t.started), 0.0) for t in open_jobs)
        lanes = min(max(self.parallel, len(self.running())), len(open_jobs))  # Ray, Slurm: as many as run
        return work / lanes

    def render(self) -> Any:
        from rich.text import Text

        with self.lock:
            lines = [job_line(j, self.jobs[j].status) for j in self.running()]
            lines.append(self.suite_line())
        return Text("\n".join(lines), no_wrap=True, overflow="ellipsis")
