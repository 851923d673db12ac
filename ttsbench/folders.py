"""The file names of a training folder, in one place.

A training folder is what `ttsbench train --out` writes and what each job of a suite writes
under RUNDIR/jobs/JOB. The trainer, the job runner, the run store and the report all reach its
files through `TrainFolder`, so a name is spelled once:

  config.json      system, model config and seed: a resume must match them
  corpus.json      the corpus's path and content digest: a resume must match it
  log.jsonl        one row per logged step (see ttsbench.train)
  val.jsonl        one row per validation
  checkpoint.pt    the latest checkpoint
  result.json      the final state (finished or diverged)
  alignments/step_00000600.npz   teacher-forced validation alignments per validation step
  samples/ID.wav, ID.txt         kept synthesis (the reference job: ID.recording.wav, ID.VOCODER.wav)
  attempts.jsonl   one line per start of a suite job (host, pid, time)
  progress.json    a suite job's phase, step and last validation, for the driver's display
  tensorboard/     event files, when tracking is on (`tensorboard --logdir`)
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

ALIGNMENT_PREFIX = "step_"


@dataclass(frozen=True)
class TrainFolder:
    """Paths of one training folder; creating the folder is left to the writer."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def val(self) -> Path:
        return self.root / "val.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.jsonl"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def alignments(self) -> Path:
        return self.root / "alignments"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def alignment_path(self, step: int) -> Path:
        return self.alignments / f"{ALIGNMENT_PREFIX}{step:08d}.npz"

    def alignment_steps(self) -> list[tuple[int, Path]]:
        """(step, file) of every stored alignment, in step order."""
        if not self.alignments.is_dir():
            return []
        found = [(int(p.stem[len(ALIGNMENT_PREFIX):]), p) for p in self.alignments.glob(f"{ALIGNMENT_PREFIX}*.npz")]
        return sorted(found)

    def sample(self, utt_id: str, kind: str = "") -> Path:
        """A kept wav: samples/ID.wav, or samples/ID.KIND.wav (the reference job's recording, or
        its copy through the vocoder KIND)."""
        return self.samples / (f"{utt_id}.{kind}.wav" if kind else f"{utt_id}.wav")

    def sample_text(self, utt_id: str) -> Path:
        return self.samples / f"{utt_id}.txt"

    def record_attempt(self) -> None:
        """One more start of this job, on this host (a resumed or retried job adds a line)."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"started": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        with self.attempts.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def attempt_count(self) -> int:
        return len(self.attempts.read_text("utf-8").splitlines()) if self.attempts.is_file() else 0
