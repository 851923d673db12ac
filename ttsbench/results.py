"""The run store: every number a suite produces, as rows in one folder.

RUNDIR/
  run.json        run id, suite name and file, the corpus's path and content digest (a run
                  is never continued on a changed corpus), when it was made
  suite.json      the suite as it was parsed (a resumed run must match it)
  environment.json  versions, device, threads, commit: what the numbers are valid for
  results.jsonl   rows: run_id, job, system, variant, seed, config_hash, metric, value, step,
                  seconds, item (an utterance or sentence id, or "" for a per-run number), text
                  (the ASR hypothesis on eval/wer rows, else null), vocoder (what the job's audio
                  went through; null for the recordings and in runs made before vocoders)
  jobs.json       job id -> state (finished | diverged | failed), config hash, attempts, error,
                  and the count and digest of its rows; re-running skips finished and diverged
                  jobs whose rows are all there unchanged, and runs the others again (a failed
                  retry keeps the rows an earlier attempt stored)
  jobs/JOB/       the trainer's folder (log, val curve, checkpoint, alignments) and samples/

Nothing is written into an existing folder before `check_compatible` has passed: a folder
holding another suite's run, or a job whose recipe changed, is refused as it is. A damaged line
of results.jsonl is named by file and line; a torn last line (cut by a crash) is left out.

Only the driver writes these files, one job at a time: a job's rows land together with its
state, each file replaced atomically (write to a temporary file, then rename), so a kill at any
moment leaves either the old or the new version. If a kill falls between the two files, the
job is not marked done, runs again (resuming from its finished checkpoint) and its rows are
replaced, never appended twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ttsbench.errors import RunStoreError
from ttsbench.fileio import atomic_write_json, atomic_write_jsonl, read_json
from ttsbench.folders import TrainFolder

COLUMNS = ("run_id", "job", "system", "variant", "seed", "config_hash", "metric", "value", "step", "seconds", "item",
           "text", "vocoder")
STATES = ("finished", "diverged", "failed")
DONE_STATES = ("finished", "diverged")  # a failed job is tried again when the run is resumed


class RunStore:
    """Reads and writes one run folder (see the module docstring).

    skip_damaged: leave out damaged lines of results.jsonl (each kept in `damaged`) instead of
    refusing the folder; a job whose rows were among them counts as not done, so it runs again.
    """

    def __init__(self, root: str | Path, skip_damaged: bool = False):
        self.root = Path(root)
        self.skip_damaged = skip_damaged
        self.damaged: list[str] = []
        self._row_counts: Counter[str] = Counter()  # readable rows per job, as of the last read
        self._digests: dict[str, str] | None = None  # per job, the digest of its readable rows (on demand)
        self.incomplete: list[str] = []  # done jobs whose stored rows are missing or changed: run again
        self._rows_read = False

    # ---- paths -------------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def jobs_path(self) -> Path:
        return self.root / "jobs.json"

    @property
    def suite_path(self) -> Path:
        return self.root / "suite.json"

    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    @property
    def environment_path(self) -> Path:
        return self.root / "environment.json"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def job_folder(self, job_id: str) -> TrainFolder:
        return TrainFolder(self.job_dir(job_id))

    def attempts(self, job_id: str) -> int:
        """How many times a job was started (each attempt, on any node, adds a line)."""
        return self.job_folder(job_id).attempt_count()

    # ---- creation ------------------------------------------------------------------------------
    def check_compatible(self, suite: Mapping[str, Any], jobs: Iterable[Mapping[str, Any]]) -> None:
        """Refuse, writing nothing, a folder that holds another suite's run, a job whose config
        changed since it ran, or damaged results (unless skip_damaged)."""
        if self.run_path.is_file():
            run = read_json(self.run_path, dict)
            stored = run.get("suite")
            if stored != suite.get("name"):
                raise RunStoreError(f"{self.root} holds a run of suite {stored!r}, not {suite.get('name')!r}; "
                                    "use a new --out folder (nothing was written)")
            file = _suite_file(suite)
            if run.get("suite_file") not in (None, file):  # runs made before the file was recorded: None
                raise RunStoreError(f"{self.root} holds a run of the suite file {run['suite_file']}, not {file} "
                                    f"(both are named {stored!r}); use a new --out folder (nothing was written)")
        stored_jobs = self.jobs()
        for job in jobs:
            entry = stored_jobs.get(job["id"])
            if entry is not None and entry["config_hash"] != job["config_hash"]:
                raise RunStoreError(
                    f"job {job['id']} in {self.root} was run with config {entry['config_hash']}, the suite now "
                    f"gives {job['config_hash']}; use a new --out folder (nothing was written)")
        self._read_rows()

    def check_corpus(self, corpus: Mapping[str, str]) -> None:
        """Refuse, writing nothing, to add to a run made on a corpus whose content has changed
        since: the report would pool numbers from two different data sets."""
        stored = read_json(self.run_path, dict).get("corpus") if self.run_path.is_file() else None
        if stored is not None and stored["digest"] != corpus["digest"]:
            raise RunStoreError(
                f"{self.root} was run on corpus {stored['path']} with content digest {stored['digest']}; "
                f"{corpus['path']} now has digest {corpus['digest']} (its files or texts changed); "
                "use a new --out folder (nothing was written)")

    def open(self, suite: Mapping[str, Any], environment: Mapping[str, Any],
             corpus: Mapping[str, str] | None = None) -> str:
        """Create the run folder, or reopen it to resume; returns the run id.

        Call `check_compatible` first. Whether a stored job still matches the suite is decided
        per job by its config hash, so a suite may gain seeds or systems between two runs.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.suite_path, dict(suite))
        if self.run_path.is_file():
            return self.run_id
        run_id = f"{suite.get('name', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        atomic_write_json(self.environment_path, dict(environment))
        atomic_write_json(self.run_path, {"run_id": run_id, "suite": suite.get("name"), "suite_file": _suite_file(suite),
                                           "corpus": dict(corpus) if corpus else None, "created": time.time()})
        return run_id

    @property
    def run_id(self) -> str:
        return read_json(self.run_path, dict)["run_id"]

    # ---- jobs ----------------------------------------------------------------------------------
    def jobs(self) -> dict[str, dict[str, Any]]:
        return read_json(self.jobs_path, dict) if self.jobs_path.is_file() else {}

    def is_done(self, job_id: str, config_hash: str) -> bool:
        """Finished or diverged with this config, and all its rows readable."""
        entry = self.jobs().get(job_id)
        if entry is None:
            return False
        if entry["config_hash"] != config_hash:
            raise RunStoreError(
                f"job {job_id} in {self.root} was run with config {entry['config_hash']}, the suite now gives "
                f"{config_hash}; use a new --out folder"
            )
        if entry["state"] not in DONE_STATES:
            return False
        if (problem := self._rows_problem(job_id, entry)) is not None:
            self.incomplete.append(f"{job_id}: {problem} in {self.results_path}; it runs again")
            return False
        return True

    def _rows_problem(self, job_id: str, entry: Mapping[str, Any]) -> str | None:
        """What is wrong with a done job's stored rows (None: all there, unchanged since recorded)."""
        if not self._rows_read:
            self._read_rows()
        have = self._row_counts.get(job_id, 0)
        if entry.get("rows") is not None and have != entry["rows"]:
            return f"{have} of its {entry['rows']} rows are readable"
        if entry.get("digest") is not None and self._job_digests().get(job_id) != entry["digest"]:
            return "its rows changed since they were recorded"
        return None

    def _job_digests(self) -> dict[str, str]:
        """Per job, the digest of its readable rows: read once per run, not at every record."""
        if self._digests is None:
            by_job: dict[str, list[dict[str, Any]]] = {}
            for row in self._read_rows():
                by_job.setdefault(row["job"], []).append(_clean(row))
            self._digests = {job: _rows_digest(rows) for job, rows in by_job.items()}
        return self._digests

    def record(self, job: Mapping[str, Any], state: str, rows: Iterable[Mapping[str, Any]], **info: Any) -> None:
        """Store a job's rows and its final state: rows of an earlier attempt of this job are replaced."""
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        run_id = self.run_id
        base = {"run_id": run_id, "job": job["id"], "system": job["system"], "variant": job["variant"],
                "seed": job["seed"], "config_hash": job["config_hash"]}
        new = [{**base, "step": None, "seconds": None, "item": "", "text": None, **row} for row in rows]
        for row in new:
            missing = [c for c in ("metric", "value") if c not in row]
            if missing:
                raise ValueError(f"result row of job {job['id']} lacks {', '.join(missing)}: {row}")
        rows = self._read_rows()
        if state == "failed":  # a failed retry keeps the rows an earlier attempt stored
            new = [r for r in rows if r["job"] == job["id"]]
        cleaned = [_clean(r) for r in new]
        atomic_write_jsonl(self.results_path, [_clean(r) for r in rows if r["job"] != job["id"]] + cleaned)
        jobs = self.jobs()
        jobs[job["id"]] = {"state": state, "config_hash": job["config_hash"], "system": job["system"],
                           "variant": job["variant"], "seed": job["seed"], "rows": len(new),
                           "digest": _rows_digest(cleaned), **info}
        atomic_write_json(self.jobs_path, jobs)

    # ---- reading -------------------------------------------------------------------------------
    def _read_rows(self) -> list[dict[str, Any]]:
        """Every readable row; a torn last line is left out, any other damaged line is named."""
        if not self.results_path.is_file():
            self._rows_read, self._row_counts, self._digests = True, Counter(), None
            return []
        text = self.results_path.read_text("utf-8", errors="replace")
        lines = text.split("\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        rows, damaged = [], []
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            row, problem = _parse_row(line)
            if problem is None:
                rows.append(row)
            elif not (index == last and not text.endswith("\n")):  # a torn last line: a crash mid-write
                damaged.append(f"{self.results_path}:{index + 1}: damaged row: {problem}")
        self.damaged = damaged
        self._rows_read = True
        self._row_counts = Counter(row["job"] for row in rows)
        self._digests = None  # computed when a resumed run asks whether a job's rows are intact
        if damaged and not self.skip_damaged:
            raise RunStoreError("\n".join(damaged + [
                "fix or delete the line(s) named, or pass --skip-damaged (`ttsbench report` then leaves them "
                "out; `ttsbench run` runs their jobs again)"]))
        return rows

    def results(self) -> pd.DataFrame:
        """All rows as a DataFrame with the columns `COLUMNS` (empty when nothing is stored)."""
        frame = pd.DataFrame(self._read_rows(), columns=list(COLUMNS))
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
        return frame


def _rows_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """A digest of a job's rows as stored, so an edited or mixed-up results file is noticed."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:16]


def _suite_file(suite: Mapping[str, Any]) -> str | None:
    """The suite's file, resolved: two files that share a `name` are still two suites."""
    return os.path.realpath(suite["path"]) if suite.get("path") else None


def _parse_row(line: str) -> tuple[dict[str, Any], str | None]:
    """(row, None), or ({}, what is wrong with the line)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return {}, f"not JSON ({err.msg}; column {err.colno})"
    if not isinstance(row, dict):
        return {}, f"expected a JSON object, got {type(row).__name__}"
    missing = [c for c in ("job", "metric", "value") if c not in row]
    return (row, None) if not missing else ({}, f"lacks {', '.join(missing)}")


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe: NaN/inf become null (JSON has neither), numpy scalars become Python numbers."""
    out = {}
    for key in COLUMNS:
        value = row.get(key)
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            value = None if key != "value" else ("inf" if value == float("inf") else "-inf" if value < 0 else None)
        out[key] = value
    return out

